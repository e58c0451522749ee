//! The real kube-scheduler places pods only where their requests fit. In a test binary of its
//! own: cargo runs test binaries one after the other, so no other test uses the preset nodes'
//! CPU meanwhile.

use std::{collections::BTreeMap, time::Duration};

use e2e::{TestEnv, support::wait_for};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn pods_of_200m_fill_the_blog_cluster1_without_overcommitting_a_node() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let ns = env.namespace("capacity").await?;
    let pods = ns.api::<Pod>("cluster1").await?;
    for i in 0..5 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": format!("cpu-{i}") },
            "spec": { "containers": [{
                "name": "main", "image": "busybox",
                "resources": { "requests": { "cpu": "200m" } },
            }]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    // The preset leaves 390m, 390m and 200m free: one 200m pod per node, two left Pending.
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut pending = Vec::new();
    for i in 0..5 {
        let name = format!("cpu-{i}");
        let decided = |p: Option<&Pod>| {
            p.is_some_and(|p| {
                let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                let unschedulable = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                    });
                bound || unschedulable
            })
        };
        let pod = wait_for(&pods, &name, Duration::from_secs(60), decided)
            .await?
            .unwrap();
        match pod.spec.and_then(|s| s.node_name) {
            Some(node) => *per_node.entry(node).or_default() += 1,
            None => pending.push(name),
        }
    }
    assert_eq!(
        per_node,
        BTreeMap::from([
            ("cluster1-kwok1".to_string(), 1),
            ("cluster1-kwok2".to_string(), 1),
            ("cluster1-kwok3".to_string(), 1),
        ])
    );
    assert_eq!(pending.len(), 2, "{pending:?}");

    let events = ns.api::<Event>("cluster1").await?;
    let reason = format!("involvedObject.name={}", pending[0]);
    let failed: Vec<String> = events
        .list(&ListParams::default().fields(&reason))
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        failed.iter().any(|m| m.contains("Insufficient cpu")),
        "{failed:?}"
    );
    Ok(())
}
