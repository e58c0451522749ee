//! The whole journey on the test bed, through the real pieces: a Job whose pod template is
//! elected is admitted by the webhook (over TLS, registered with the apiserver), its proxies
//! are delegated by delegate-sync to cluster2, and the real Job controller judges the proxies
//! by their delegates' exit codes, exactly as if the pods had run locally.

mod pieces;

use std::time::Duration;

use e2e::{TestEnv, lifecycle, support::wait_for};
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::api::{ListParams, PostParams};
use serde_json::json;

fn job(name: &str, exit_code: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "parallelism": 2,
            "completions": 2,
            "backoffLimit": 0,
            "template": {
                "metadata": { "annotations": {
                    contract::ELECT: "",
                    contract::CLUSTER_NAME: "cluster2",
                    lifecycle::RUN_FOR: "2s",
                    lifecycle::exit_code_of("main"): exit_code,
                }},
                "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
            },
        },
    }))
    .unwrap()
}

fn job_condition(job: Option<&Job>) -> Option<String> {
    job?.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .map(|c| c.type_.clone())
}

#[tokio::test]
async fn jobs_of_elected_pods_are_judged_by_their_delegates_exit_codes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let (ns, selector) = pieces::opted_in_namespace(env, "journey", "journey").await;
    let _pieces = pieces::start(env, "journey", &selector).await;
    // The apiserver picks a new webhook configuration up within moments.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let jobs = ns.api::<Job>("cluster1").await.unwrap();
    jobs.create(&PostParams::default(), &job("succeeds", "0"))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("fails", "3"))
        .await
        .unwrap();
    let decided = |j: Option<&Job>| job_condition(j).is_some();
    let succeeded = wait_for(&jobs, "succeeds", Duration::from_secs(60), decided)
        .await
        .unwrap();
    let failed = wait_for(&jobs, "fails", Duration::from_secs(60), decided)
        .await
        .unwrap();
    assert_eq!(
        job_condition(succeeded.as_ref()).as_deref(),
        Some("Complete")
    );
    assert_eq!(job_condition(failed.as_ref()).as_deref(), Some("Failed"));

    // The pods that ran in cluster2 were delegates; the Job's pods in cluster1 were proxies.
    let delegates = ns
        .api::<Pod>("cluster2")
        .await
        .unwrap()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        delegates.len() >= 3,
        "{} delegates in cluster2",
        delegates.len()
    );
    let proxies = ns
        .api::<Pod>("cluster1")
        .await
        .unwrap()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        proxies
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref()
                == Some("proxy-waiter:journey"))
    );
}
