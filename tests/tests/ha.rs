//! Highly available managers: leader loss, quorum loss, restarts under
//! writes, promote/demote, catch-up by snapshot and --force-new-cluster,
//! with real `shoal daemon` processes on Docker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{busybox_image, containers_with_label, require_docker, running_tasks, wait_for, Cluster, ClusterSpec};

const CONVERGE: Duration = Duration::from_secs(60);

fn managers_status(c: &Cluster, via: usize) -> Result<Vec<(String, String)>, String> {
    let out = c.shoal_timeout(via, Duration::from_secs(10), &["node", "ls", "--format", "json"]);
    let v: Value = serde_json::from_str(&out.stdout).map_err(|_| out.stderr.clone())?;
    let mut s: Vec<(String, String)> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["role"] == "manager")
        .map(|n| {
            (n["hostname"].as_str().unwrap_or("").to_string(), n["manager_status"].as_str().unwrap_or("").to_string())
        })
        .collect();
    s.sort();
    Ok(s)
}

/// Waits until node `via` sees a leader among `among`; returns it.
fn wait_leader(c: &Cluster, via: usize, among: &[usize]) -> usize {
    wait_for(CONVERGE, "a leader", || match c.leader_seen_from(via) {
        Ok(l) if among.contains(&l) => Ok(l),
        Ok(l) => Err(format!("node{l} is leader")),
        Err(e) => Err(e),
    })
}

/// Running tasks of `svc` as node `via` sees them: their slots must be
/// distinct (no duplicates) and there must be `n` of them.
fn wait_exactly(c: &Cluster, via: usize, svc: &str, n: usize) -> Vec<Value> {
    wait_for(CONVERGE, &format!("exactly {n} running {svc} tasks, distinct slots"), || {
        let out = c.shoal_timeout(via, Duration::from_secs(10), &["service", "ps", svc, "--format", "json"]);
        let v: Value = serde_json::from_str(&out.stdout).map_err(|_| out.stderr.clone())?;
        let running = running_tasks(&v);
        let slots: BTreeSet<u64> = running.iter().filter_map(|t| t["slot"].as_u64()).collect();
        if running.len() == n && slots.len() == n {
            Ok(running)
        } else {
            Err(format!("{} running, slots {slots:?}", running.len()))
        }
    })
}

fn running_containers(svc: &str) -> usize {
    containers_with_label("shoal.service.name", svc).iter().filter(|c| c.state == "running").count()
}

#[test]
fn a_killed_leader_is_replaced_and_an_inflight_scale_completes_exactly() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(3, 1));
    let leader = wait_leader(&c, 1, &[1, 2, 3]);
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    c.set_api_node(follower);
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "ha-scale",
        "--replicas",
        "3",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    wait_exactly(&c, follower, "ha-scale", 3);
    let survivors: Vec<usize> = (1..=4).filter(|i| *i != leader).collect();
    let running_on = |c: &Cluster, nodes: &[usize]| -> BTreeSet<String> {
        nodes.iter().flat_map(|i| c.node_containers(*i)).filter(|k| k.state == "running").map(|k| k.id).collect()
    };
    let before = running_on(&c, &survivors);

    // The scale goes through a follower while the leader dies under it.
    let scale = {
        let mut cmd = std::process::Command::new(tests::shoal_bin());
        cmd.args(["-H", &c.api_addr(follower), "service", "scale", "ha-scale=12"]);
        std::thread::spawn(move || tests::run_with_timeout(&mut cmd, CONVERGE * 2))
    };
    std::thread::sleep(Duration::from_millis(50));
    let killed_at = Instant::now();
    c.kill_node(leader);
    let out = scale.join().unwrap().unwrap_or_else(|e| panic!("the scale hung: {e}"));
    assert!(out.success(), "the scale did not complete across the failover: {out}");
    let new_leader = wait_leader(&c, follower, &[1, 2, 3]);
    assert_ne!(new_leader, leader);
    eprintln!("new leader node{new_leader} after {:?}", killed_at.elapsed());
    wait_exactly(&c, follower, "ha-scale", 12);
    // No container on the surviving nodes was stopped because the leader changed.
    let after = running_on(&c, &survivors);
    assert!(
        before.is_subset(&after),
        "containers stopped by the failover: {:?}",
        before.difference(&after).collect::<Vec<_>>()
    );

    // The old leader comes back as a follower; its orphaned containers go.
    c.restart_node(leader);
    c.wait_nodes_ready(&[1, 2, 3, 4], CONVERGE);
    wait_exactly(&c, leader, "ha-scale", 12);
    wait_for(CONVERGE, "12 running containers in all", || {
        let n = running_containers("ha-scale");
        if n == 12 {
            Ok(())
        } else {
            Err(format!("{n} running"))
        }
    });
}

#[test]
fn without_quorum_writes_are_refused_quickly_and_containers_keep_running() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(3, 0));
    wait_leader(&c, 1, &[1, 2, 3]);
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "ha-quorum",
        "--replicas",
        "3",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    wait_exactly(&c, 1, "ha-quorum", 3);
    let before: BTreeSet<String> =
        c.node_containers(1).into_iter().filter(|k| k.state == "running").map(|k| k.id).collect();
    assert!(!before.is_empty());

    c.kill_node(2);
    c.kill_node(3);
    // Writes are refused with a clear message, and never hang: each try
    // gets an answer well inside the CLI's own limit.
    wait_for(CONVERGE, "a write refused for lack of quorum", || {
        let started = Instant::now();
        let out = c.shoal_timeout(1, Duration::from_secs(20), &["service", "scale", "-d", "ha-quorum=4"]);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "a write without quorum took {took:?}: {out}");
        if !out.success() && out.stderr.contains("no quorum") {
            Ok(())
        } else {
            Err(format!("{out}"))
        }
    });
    // Reads still answer from the applied state; containers run on.
    c.shoal_ok(&["service", "ls"]);
    let after: BTreeSet<String> =
        c.node_containers(1).into_iter().filter(|k| k.state == "running").map(|k| k.id).collect();
    assert_eq!(before, after, "containers on the surviving manager changed without quorum");

    c.restart_node(2);
    wait_for(CONVERGE, "writes accepted again", || {
        let out = c.shoal_timeout(1, Duration::from_secs(20), &["service", "scale", "-d", "ha-quorum=4"]);
        if out.success() {
            Ok(())
        } else {
            Err(format!("{out}"))
        }
    });
    wait_exactly(&c, 1, "ha-quorum", 4);
}

#[test]
fn acknowledged_creates_survive_restarting_every_manager() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(3, 0));
    wait_leader(&c, 1, &[1, 2, 3]);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // The client loop runs its own CLI processes against whichever manager
    // is up; a create counts only when the CLI said it succeeded.
    let (bin, addrs): (_, Vec<String>) = (tests::shoal_bin(), (1..=3).map(|i| c.api_addr(i)).collect());
    let client = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("ack-{n}");
                let host = &addrs[n % addrs.len()];
                let mut cmd = std::process::Command::new(&bin);
                cmd.args([
                    "-H",
                    host,
                    "service",
                    "create",
                    "-d",
                    "--name",
                    &name,
                    "--replicas",
                    "0",
                    busybox_image(),
                    "true",
                ]);
                if let Ok(out) = tests::run_with_timeout(&mut cmd, Duration::from_secs(30)) {
                    if out.success() {
                        acked.lock().unwrap().push(name);
                    }
                }
                n += 1;
            }
        })
    };
    for i in 1..=3 {
        let before = acked.lock().unwrap().len();
        c.restart_node(i);
        c.wait_nodes_ready(&[1, 2, 3], CONVERGE);
        wait_leader(&c, i, &[1, 2, 3]);
        // Some writes land between restarts.
        wait_for(CONVERGE, "more acknowledged creates", || (acked.lock().unwrap().len() > before + 2).then_some(()));
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 6, "too few writes went through: {acked:?}");
    for i in 1..=3 {
        wait_for(CONVERGE, &format!("node{i} lists every acknowledged service"), || {
            let out = c.shoal_timeout(i, Duration::from_secs(10), &["service", "ls", "-q", "--format", "json"]);
            let v: Value = serde_json::from_str(&out.stdout).map_err(|_| out.stderr.clone())?;
            let names: BTreeSet<&str> =
                v.as_array().into_iter().flatten().filter_map(|s| s["spec"]["name"].as_str()).collect();
            let missing: Vec<&String> = acked.iter().filter(|a| !names.contains(a.as_str())).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        });
    }
}

#[test]
fn five_managers_survive_two_down() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(5, 0));
    let leader = wait_leader(&c, 1, &[1, 2, 3, 4, 5]);
    // Ready nodes may still be joining raft as learners: every manager must
    // count five voters before two are killed, or three survivors may not
    // be a majority of what each of them knows.
    for i in 1..=5 {
        wait_for(CONVERGE, &format!("node{i} to count five voters"), || {
            let r = tests::http(&c.api_addr(i), "GET", "/metrics", None).map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&r.body).into_owned();
            text.lines().any(|l| l.trim() == "shoal_raft_voters 5").then_some(()).ok_or(text.len().to_string())
        });
    }
    let other = (1..=5).find(|i| *i != leader).unwrap();
    c.kill_node(leader);
    c.kill_node(other);
    let alive: Vec<usize> = (1..=5).filter(|i| *i != leader && *i != other).collect();
    let via = alive[0];
    wait_leader(&c, via, &alive);
    c.set_api_node(via);
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "ha-five",
        "--replicas",
        "3",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    wait_exactly(&c, via, "ha-five", 3);
    let statuses = managers_status(&c, via).unwrap();
    let unreachable = statuses.iter().filter(|(_, s)| s == "Unreachable").count();
    assert_eq!(unreachable, 2, "{statuses:?}");
}

#[test]
fn promote_and_demote_change_managers_and_refuse_to_lose_quorum() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(1, 3));
    c.shoal_fails(&["node", "demote", "node1"], "last manager");
    c.shoal_fails(&["node", "promote", "nosuchnode"], "not found");
    let out = c.shoal_ok(&["node", "promote", "node2", "node3"]);
    assert!(out.contains("Node node2 promoted to a manager"), "{out}");
    wait_for(CONVERGE, "three reachable managers", || {
        let s = managers_status(&c, 1)?;
        let want = vec![
            ("node1".to_string(), "Leader".to_string()),
            ("node2".to_string(), "Reachable".to_string()),
            ("node3".to_string(), "Reachable".to_string()),
        ];
        if s == want {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    // A promoted node serves the manager API (its process restarted as one).
    wait_for(CONVERGE, "node3's API takes writes", || {
        let out = c.shoal_timeout(3, Duration::from_secs(20), &["node", "update", "--label-add", "via=node3", "node4"]);
        if out.success() {
            Ok(())
        } else {
            Err(format!("{out}"))
        }
    });
    // With node3 down, demoting node2 would leave {node1, node3}, one reachable.
    c.kill_node(3);
    c.wait_node_status(3, "down", CONVERGE);
    c.shoal_fails(&["node", "demote", "node2"], "would lose quorum");
    // Demoting the unreachable one is allowed, and restores a healthy pair.
    let out = c.shoal_ok(&["node", "demote", "node3"]);
    assert!(out.contains("Manager node3 demoted"), "{out}");
    c.restart_node(3);
    c.wait_nodes_ready(&[1, 2, 3, 4], CONVERGE);
    wait_for(CONVERGE, "node3 back as a worker", || {
        let s = managers_status(&c, 1)?;
        if s.len() == 2 && s.iter().all(|(h, _)| h != "node3") {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    // Demoting the leader hands leadership over first.
    let leader = wait_leader(&c, 2, &[1, 2]);
    let other = if leader == 1 { 2 } else { 1 };
    c.set_api_node(other);
    c.shoal_ok(&["node", "demote", &format!("node{leader}")]);
    wait_for(CONVERGE, "one manager left, the other one", || {
        let s = managers_status(&c, other)?;
        if s == vec![(format!("node{other}"), "Leader".to_string())] {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "ha-roles",
        "--replicas",
        "2",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    wait_exactly(&c, other, "ha-roles", 2);
}

#[test]
fn a_manager_behind_the_compacted_log_catches_up_by_snapshot() {
    if !require_docker() {
        return;
    }
    let mut spec = ClusterSpec::new(3, 0);
    spec.daemon_args = vec!["--snapshot-interval".into(), "20".into()];
    let mut c = Cluster::start(spec);
    wait_leader(&c, 1, &[1, 2, 3]);
    c.stop_node(3);
    let via = (1..=2).find(|i| c.leader_seen_from(*i).is_ok()).unwrap_or(1);
    for n in 0..60 {
        let out = c.shoal_timeout(
            via,
            Duration::from_secs(20),
            &["node", "update", "--label-add", &format!("n={n}"), "node1"],
        );
        assert!(out.success(), "{out}");
    }
    c.restart_node(3);
    c.wait_nodes_ready(&[1, 2, 3], CONVERGE);
    wait_for(CONVERGE, "node3 has the last write", || {
        let out = c.shoal_timeout(3, Duration::from_secs(10), &["node", "inspect", "node1"]);
        if out.stdout.contains("\"n\": \"59\"") {
            Ok(())
        } else {
            Err(out.stderr.clone())
        }
    });
    let log = std::fs::read_to_string(c.log_path(3)).unwrap();
    assert!(log.contains("applied raft snapshot from leader"), "node3 did not catch up by snapshot");
}

#[test]
fn force_new_cluster_recovers_a_lost_majority_with_all_services() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(3, 1));
    wait_leader(&c, 1, &[1, 2, 3]);
    c.shoal_ok(&["service", "create", "-d", "--name", "ha-dr", "--replicas", "2", busybox_image(), "sleep", "100000"]);
    wait_exactly(&c, 1, "ha-dr", 2);
    c.kill_node(2);
    c.kill_node(3);
    c.stop_node(1);
    c.restart_node_with(1, &["--force-new-cluster"]);
    c.set_api_node(1);
    wait_for(CONVERGE, "node1 alone is the leader", || {
        let s = managers_status(&c, 1)?;
        if s == vec![("node1".to_string(), "Leader".to_string())] {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("ha-dr"), "{ls}");
    c.shoal_ok(&["service", "scale", "-d", "ha-dr=3"]);
    wait_exactly(&c, 1, "ha-dr", 3);
}
