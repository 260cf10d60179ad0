//! What the scheduler weighs beyond constraints, on real `shoal` processes
//! and real Docker: reservations within the capacity each node reports,
//! spread preferences, max replicas per node, platform constraints.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tests::{http, require_docker, running_tasks, task_state, wait_for, Cluster, ClusterSpec};

const CONVERGE: Duration = Duration::from_secs(60);

/// Three nodes, each declaring 2 CPUs and 4 GiB.
fn small_nodes() -> Cluster {
    let mut spec = ClusterSpec::new(1, 2);
    spec.daemon_args = vec!["--resources".into(), "cpus=2,memory=4GiB".into()];
    Cluster::start(spec)
}

/// (state, error) of each task of `svc` meant to run.
fn wanted(c: &Cluster, svc: &str) -> Vec<(String, String)> {
    let tasks = c.service_tasks(svc);
    let mut seen: Vec<(String, String)> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["desired_state"] == "running")
        .map(|t: &Value| (task_state(t).to_string(), t["status"]["err"].as_str().unwrap_or("").to_string()))
        .collect();
    seen.sort();
    seen
}

/// Running tasks of `svc` per node hostname.
fn per_node(c: &Cluster, svc: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in running_tasks(&c.service_tasks(svc)) {
        *out.entry(t["node_hostname"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    out
}

#[test]
fn reservations_stay_within_each_nodes_capacity_and_the_task_that_fits_nowhere_waits_with_the_reason() {
    if !require_docker() {
        return;
    }
    let c = small_nodes();
    c.create_service("big", &["-d", "--reserve-cpu", "1.5", "--replicas", "4"], &["sleep", "100000"]);
    let why = "no suitable node (insufficient resources on 3 nodes)";
    wait_for(CONVERGE, "3 big tasks running, one per node, and one pending with the reason", || {
        let seen = wanted(&c, "big");
        let running = seen.iter().filter(|(s, _)| s == "running").count();
        let pending: Vec<_> = seen.iter().filter(|(s, e)| s == "pending" && e == why).collect();
        if running == 3 && pending.len() == 1 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert_eq!(per_node(&c, "big").values().copied().collect::<Vec<_>>(), [1, 1, 1]);
    let ps = c.shoal_ok(&["service", "ps", "--no-trunc", "big"]);
    assert!(ps.lines().any(|l| l.contains("Running         Pending") && l.contains(&format!("\"{why}\""))), "{ps}");
    // The reserving containers really run in Docker: one per node.
    for i in 1..=3 {
        let states: Vec<String> = c
            .node_containers(i)
            .into_iter()
            .filter(|r| r.label("shoal.service.name") == Some("big"))
            .map(|r| r.state)
            .collect();
        assert_eq!(states, ["running"], "node{i}");
    }

    // Every manager's answer shows each node's capacity and reservations,
    // not only the answering node's.
    let pretty = c.shoal_ok(&["node", "inspect", "--pretty", &c.hostname(3)]);
    assert!(pretty.contains("Resources:\n CPUs:\t\t\t2 (1.5 reserved)\n Memory:\t\t4GiB (0B reserved)\n"), "{pretty}");
    let node3 = http(&c.api_addr(1), "GET", &format!("/v1.44/nodes/{}", c.node_id(3)), None).unwrap().json();
    assert_eq!(node3["Description"]["Resources"]["NanoCPUs"], 2_000_000_000u64, "{node3}");
    assert_eq!(node3["Description"]["Resources"]["MemoryBytes"], 4u64 << 30);
    assert_eq!(node3["Description"]["Platform"]["OS"], "linux");

    // Scaled to 3, all fit.
    c.shoal_ok(&["service", "scale", "-d", "big=3"]);
    wait_for(CONVERGE, "3 big tasks running, none pending", || {
        let seen = wanted(&c, "big");
        if seen.len() == 3 && seen.iter().all(|(s, _)| s == "running") {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });

    // Bad input is refused before anything is written.
    for (flags, err) in [
        (
            vec!["--reserve-cpu", "lots"],
            "invalid argument \"lots\" for \"--reserve-cpu\" flag: expected a number of CPUs, e.g. 0.5",
        ),
        (vec!["--reserve-memory", "1x"], "invalid argument \"1x\" for \"--reserve-memory\" flag: invalid size: '1x'"),
        (
            vec!["--generic-resource", "gpu"],
            "invalid generic resource specification: could not parse GenericResource: incorrect term gpu, missing '=' or malformed expression",
        ),
    ] {
        let mut args = vec!["service", "create", "--name", "bad"];
        args.extend(flags);
        args.extend([tests::busybox_image(), "true"]);
        c.shoal_fails(&args, err);
    }
    assert!(!c.shoal_ok(&["service", "ls"]).contains("bad"));
}

#[test]
fn spread_max_per_node_and_platform_constraints_place_as_swarm_does() {
    if !require_docker() {
        return;
    }
    let c = small_nodes();
    // Zone a holds node1 and node2, zone b node3.
    for (i, zone) in [(1, "a"), (2, "a"), (3, "b")] {
        c.shoal_ok(&["node", "update", "--label-add", &format!("zone={zone}"), &c.hostname(i)]);
    }
    c.create_service(
        "spread",
        &["-d", "--placement-pref", "spread=node.labels.zone", "--replicas", "4"],
        &["sleep", "100000"],
    );
    wait_for(CONVERGE, "spread: 2 tasks in each zone", || {
        let got = per_node(&c, "spread");
        let zone_b = got.get(&c.hostname(3)).copied().unwrap_or(0);
        if got.values().sum::<usize>() == 4 && zone_b == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    c.create_service("capped", &["-d", "--replicas-max-per-node", "1", "--replicas", "4"], &["sleep", "100000"]);
    let why = "no suitable node (max replicas per node limit exceed)";
    wait_for(CONVERGE, "capped: one per node, one pending with the reason", || {
        let seen = wanted(&c, "capped");
        let running = seen.iter().filter(|(s, _)| s == "running").count();
        let pending = seen.iter().filter(|(s, e)| s == "pending" && e == why).count();
        if running == 3 && pending == 1 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });

    c.create_service("linux", &["-d", "--constraint", "node.platform.os==linux"], &["sleep", "100000"]);
    c.create_service("arm", &["-d", "--constraint", "node.platform.arch==no-such-arch"], &["sleep", "100000"]);
    c.wait_running("linux", 1, CONVERGE);
    wait_for(CONVERGE, "arm pending: no node has the architecture", || {
        let seen = wanted(&c, "arm");
        if seen
            == [(
                "pending".to_string(),
                "no suitable node (scheduling constraints not satisfied on 3 nodes)".to_string(),
            )]
        {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });

    c.shoal_fails(
        &["service", "create", "--name", "bad", "--placement-pref", "zone", tests::busybox_image(), "true"],
        "invalid argument \"zone\" for \"--placement-pref\" flag: placement preference must be of the format \"<strategy>=<arg>\"",
    );
    c.shoal_fails(
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--mode",
            "global",
            "--replicas-max-per-node",
            "2",
            tests::busybox_image(),
        ],
        "replicas-max-per-node can only be used with replicated or replicated-job mode",
    );
}
