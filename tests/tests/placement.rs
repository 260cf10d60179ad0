//! Placement has one owner: even a global task, which names its node, runs
//! only once the scheduler admits it there. Real `shoal` processes, real
//! Docker.

use std::time::Duration;

use serde_json::Value;
use tests::{busybox_image, require_docker, task_state, wait_for, Cluster};

const CONVERGE: Duration = Duration::from_secs(60);

/// Containers of `svc` on node i, in any state, as Docker lists them.
fn containers_of(c: &Cluster, i: usize, svc: &str) -> Vec<String> {
    c.node_containers(i).into_iter().filter(|r| r.label("shoal.service.name") == Some(svc)).map(|r| r.state).collect()
}

fn create_global_on_port(c: &Cluster, name: &str) {
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--mode",
        "global",
        "--publish",
        "published=9400,target=80,mode=host",
        busybox_image(),
        "sleep",
        "100000",
    ]);
}

#[test]
fn a_second_global_service_on_a_taken_host_port_is_pending_with_the_reason_until_the_first_goes() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let nodes = [1, 2];
    create_global_on_port(&c, "edge");
    c.wait_running("edge", 2, CONVERGE);
    wait_for(CONVERGE, "one running edge container per node", || {
        let got: Vec<Vec<String>> = nodes.iter().map(|i| containers_of(&c, *i, "edge")).collect();
        if got.iter().all(|states| states == &["running"]) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    create_global_on_port(&c, "edge2");
    let why = "no suitable node (host-mode port already in use on 1 node)";
    wait_for(CONVERGE, "both edge2 tasks pending with the scheduler's reason", || {
        let tasks = c.service_tasks("edge2");
        let seen: Vec<(String, String)> = tasks
            .as_array()
            .into_iter()
            .flatten()
            .map(|t: &Value| (task_state(t).to_string(), t["status"]["err"].as_str().unwrap_or("").to_string()))
            .collect();
        if seen.len() == 2 && seen.iter().all(|(state, err)| state == "pending" && err == why) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    // As a user reads it: one pending task on each node, with the reason.
    let ps = c.shoal_ok(&["service", "ps", "--no-trunc", "edge2"]);
    for i in nodes {
        let line = ps.lines().find(|l| l.contains(&format!("edge2.{}", c.node_id(i)))).unwrap_or_default();
        assert!(
            line.contains(&c.hostname(i))
                && line.contains("Running         Pending")
                && line.contains(&format!("\"{why}\"")),
            "{ps}"
        );
    }
    for i in nodes {
        assert_eq!(containers_of(&c, i, "edge2"), Vec::<String>::new(), "no edge2 container on node{i}");
    }
    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.lines().any(|l| l.contains("edge2") && l.contains("global") && l.contains("0/2")), "{ls}");

    // The port frees up: the waiting tasks are admitted and run.
    c.shoal_ok(&["service", "rm", "edge"]);
    c.wait_running("edge2", 2, CONVERGE);
    wait_for(CONVERGE, "edge2 running on every node, edge gone", || {
        let got: Vec<(Vec<String>, Vec<String>)> =
            nodes.iter().map(|i| (containers_of(&c, *i, "edge"), containers_of(&c, *i, "edge2"))).collect();
        if got.iter().all(|(edge, edge2)| edge.is_empty() && edge2 == &["running"]) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
}
