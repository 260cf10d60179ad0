//! `service update --rebalance` (moby #24103): after a drain, tasks stay on
//! the nodes they moved to; a rebalance moves the fewest of them back onto
//! the emptied node, as a rolling update that never has more than its
//! parallelism down. Real `shoal`, real Docker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tests::{containers_with_label, require_docker, running_tasks, wait_for, Cluster};

const CONVERGE: Duration = Duration::from_secs(60);

/// Running containers of `svc` per node id, as Docker has them.
fn per_node(svc: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in containers_with_label("shoal.service.name", svc).iter().filter(|c| c.state == "running") {
        *out.entry(c.label("shoal.node.id").unwrap_or("").to_string()).or_default() += 1;
    }
    out
}

#[test]
fn rebalance_after_a_drain_moves_the_fewest_tasks_and_keeps_the_service_up() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(3);
    c.create_service(
        "spread",
        &["-d", "--replicas", "6", "--update-monitor", "1s", "--stop-grace-period", "1s"],
        &["sleep", "100000"],
    );
    c.wait_running("spread", 6, CONVERGE);
    c.shoal_ok(&["node", "update", "--availability", "drain", "node3"]);
    let n3 = c.node_id(3);
    wait_for(CONVERGE, "six tasks on node1 and node2", || {
        let p = per_node("spread");
        (p.values().sum::<usize>() == 6 && !p.contains_key(&n3) && p.len() == 2).then_some(()).ok_or(format!("{p:?}"))
    });
    c.shoal_ok(&["node", "update", "--availability", "active", "node3"]);
    // Swarm's behaviour, which --rebalance answers: nothing moves by itself.
    assert!(!per_node("spread").contains_key(&n3));
    let before: Vec<String> =
        running_tasks(&c.service_tasks("spread")).iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();

    // Watch the running count while the rebalance rolls.
    let stop = Arc::new(AtomicBool::new(false));
    let lowest = Arc::new(AtomicUsize::new(usize::MAX));
    let watcher = {
        let (stop, lowest) = (stop.clone(), lowest.clone());
        let api = c.api_addr(1);
        let bin = tests::shoal_bin();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(&bin)
                    .args(["-H", &api, "service", "ps", "spread", "--format", "json"])
                    .output()
                    .expect("shoal service ps");
                if let Ok(tasks) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    lowest.fetch_min(running_tasks(&tasks).len(), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = c.shoal_ok(&["service", "update", "--rebalance", "--detach=false", "spread"]);
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    assert!(out.contains("verify: Service converged"), "{out}");

    // The replaced tasks' containers stop within their grace period.
    wait_for(CONVERGE, "two containers on each node", || {
        let p = per_node("spread");
        (p.values().copied().collect::<Vec<_>>() == [2, 2, 2]).then_some(()).ok_or(format!("{p:?}"))
    });
    let after: Vec<String> =
        running_tasks(&c.service_tasks("spread")).iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    let moved = after.iter().filter(|id| !before.contains(id)).count();
    assert_eq!(moved, 2, "only the two tasks node3 needs were replaced: before {before:?}, after {after:?}");
    let lowest = lowest.load(Ordering::Relaxed);
    assert!(lowest >= 5 && lowest != usize::MAX, "never more than the update's parallelism (1) down; saw {lowest}");

    // Balanced: a second rebalance moves nothing.
    c.shoal_ok(&["service", "update", "--rebalance", "-d", "spread"]);
    let again: Vec<String> =
        running_tasks(&c.service_tasks("spread")).iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(again.len(), 6);
    assert!(again.iter().all(|id| after.contains(id)), "{again:?} vs {after:?}");

    c.create_service("everywhere", &["-d", "--mode", "global"], &["sleep", "100000"]);
    c.shoal_fails(
        &["service", "update", "--rebalance", "everywhere"],
        "--rebalance applies to replicated services; everywhere is global",
    );
}
