//! The log relay when a target's apiserver stops answering mid-stream (cluster2's, frozen with
//! SIGSTOP for 5 s while its kubelet keeps the delegate running and writing): the relay resumes
//! where the proxy's log stands, and nothing is lost or repeated. A test binary of its own.

mod common;
mod pieces;
mod relaying;

use std::time::Duration;

use relaying::*;

#[tokio::test]
async fn a_target_that_stops_answering_mid_stream_is_resumed_without_loss() {
    let (env, ns, _pieces) = scene("relay-frozen", false).await;
    let testbed = env.testbed().unwrap();
    let delegate = create(&ns, &elected("frozen", STEADY, &[])).await;
    wait_for_lines(&ns, "frozen", &delegate, 40).await;
    {
        // The delegate's kubelet keeps running it; its apiserver does not answer for 5 s.
        let _frozen = testbed.freeze_apiserver("cluster2").unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let (relayed, original) = logs_at_the_end(&ns, "frozen", &delegate).await;
    assert_eq!(numbered(&original), expected_lines());
    assert_same("frozen", &relayed, &original);
}
