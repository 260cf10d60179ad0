//! Failover on real hosts (`deploy/hosts.sh`: a network namespace and a
//! Docker engine per node) beside the same figures on the 127.0.0.x
//! harness, in one run:
//!
//! - a dead host (its shoal killed with SIGKILL) → all its replacements
//!   RUNNING on other hosts (6 replicas on 3 hosts, one manager);
//! - the leader cut off → first write (`node update --label-add`) accepted
//!   by the majority (3 managers). On real hosts the leader's host is
//!   isolated (nft drops on the bridge); loopback cannot be cut that way
//!   (a node's outgoing connections leave from 127.0.0.1, not its own
//!   address), so the 127.0.0.x figure is for kill -9 of the leader.
//!
//! Each runs ROUNDS times (default 5, env `ROUNDS`) on one cluster per
//! line; median and max are printed. Run: `cargo bench -p tests --bench
//! hosts` as root (needs the release binary: `cargo build --release -p cli`).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    require_docker, require_hosts, run_with_timeout, running_tasks, shoal_bin, wait_for, Cluster, ClusterSpec, Hosts,
    Mesh,
};

const DEADLINE: Duration = Duration::from_secs(120);
const SLEEP: &[&str] = &["sleep", "100000"];

fn hosts_dead_host(rounds: usize) -> Vec<Duration> {
    let h = Hosts::up(3, 1, Mesh::Kernel);
    h.shoal_ok(
        1,
        &["service", "create", "-d", "--name", "web", "--replicas", "6", tests::busybox_image(), SLEEP[0], SLEEP[1]],
    );
    h.wait_running(1, "web", 6, DEADLINE);
    (0..rounds)
        .map(|r| {
            // Hosts 2 and 3 in turn: the one killed last round has no task.
            let k = 2 + r % 2;
            let t0 = Instant::now();
            h.script_ok(&["kill", &k.to_string()]);
            h.wait_running_where(1, "web", 6, DEADLINE, |i| i != k);
            let d = t0.elapsed();
            h.script_ok(&["start", &k.to_string()]);
            h.wait_status(1, &[k], "ready", DEADLINE);
            wait_for(DEADLINE, "one container per slot", || {
                let per = h.running_per_slot("web");
                if per.len() == 6 && per.values().all(|&c| c == 1) {
                    Ok(())
                } else {
                    Err(format!("{per:?}"))
                }
            });
            d
        })
        .collect()
}

/// Until a write through one of `via` succeeds.
fn first_write(write: impl Fn(usize) -> bool, via: &[usize]) {
    wait_for(DEADLINE, "a write accepted by the majority", || via.iter().any(|&i| write(i)).then_some(()));
}

fn hosts_isolated_leader(rounds: usize) -> Vec<Duration> {
    let h = Hosts::up(3, 3, Mesh::Kernel);
    (0..rounds)
        .map(|r| {
            let leader = wait_for(DEADLINE, "a leader", || h.leader_seen_from(1));
            let others: Vec<usize> = (1..=3).filter(|&i| i != leader).collect();
            let label = format!("round={r}");
            let t0 = Instant::now();
            h.script_ok(&["isolate", &leader.to_string()]);
            first_write(
                |i| {
                    h.shoal_timeout(i, Duration::from_secs(3), &["node", "update", "--label-add", &label, "host1"])
                        .success()
                },
                &others,
            );
            let d = t0.elapsed();
            h.script_ok(&["rejoin", &leader.to_string()]);
            wait_for(DEADLINE, "the old leader to follow", || {
                let l = h.leader_seen_from(leader)?;
                if l != leader && h.leader_seen_from(others[0])? == l {
                    Ok(())
                } else {
                    Err(format!("host{leader} sees host{l}"))
                }
            });
            h.wait_status(others[0], &[1, 2, 3], "ready", DEADLINE);
            d
        })
        .collect()
}

fn loopback_dead_node(rounds: usize) -> Vec<Duration> {
    let mut c = Cluster::new(3);
    c.create_service("web", &["-d", "--replicas", "6"], SLEEP);
    c.wait_running("web", 6, DEADLINE);
    (0..rounds)
        .map(|r| {
            let k = 2 + r % 2;
            let id = c.node_id(k);
            let t0 = Instant::now();
            c.kill_node(k);
            wait_for(DEADLINE, "replacements running", || {
                let t = c.service_tasks("web");
                let run = running_tasks(&t);
                (run.len() == 6 && run.iter().all(|t| t["node_id"] != Value::String(id.clone()))).then_some(())
            });
            let d = t0.elapsed();
            c.restart_node(k);
            c.wait_nodes_ready(&[1, 2, 3], DEADLINE);
            d
        })
        .collect()
}

fn loopback_killed_leader(rounds: usize) -> Vec<Duration> {
    let mut c = Cluster::start(ClusterSpec::new(3, 0));
    (0..rounds)
        .map(|r| {
            let leader = wait_for(DEADLINE, "a leader", || c.leader_seen_from(1).or_else(|_| c.leader_seen_from(2)));
            let others: Vec<usize> = (1..=3).filter(|&i| i != leader).collect();
            let label = format!("round={r}");
            let t0 = Instant::now();
            c.kill_node(leader);
            first_write(
                |i| {
                    // Cluster::shoal_timeout panics on a timeout: a write to a
                    // manager waiting for a dead leader may take one.
                    let mut cmd = Command::new(shoal_bin());
                    cmd.args(["-H", &c.api_addr(i), "node", "update", "--label-add", &label, "node1"]);
                    run_with_timeout(&mut cmd, Duration::from_secs(3)).is_ok_and(|o| o.success())
                },
                &others,
            );
            let d = t0.elapsed();
            c.restart_node(leader);
            c.set_api_node(others[0]);
            c.wait_nodes_ready(&[1, 2, 3], DEADLINE);
            d
        })
        .collect()
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (v[v.len() / 2].as_secs_f64(), v.last().map_or(0.0, Duration::as_secs_f64))
}

fn main() {
    if !require_docker() || !require_hosts() {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    type Line = (&'static str, fn(usize) -> Vec<Duration>, &'static str);
    let lines: [Line; 4] = [
        ("real hosts: dead host → replacements running", hosts_dead_host, "≤ 3 s"),
        ("127.0.0.x: dead node → replacements running", loopback_dead_node, "≤ 3 s"),
        ("real hosts: isolated leader → first write accepted", hosts_isolated_leader, "≤ 2 s"),
        ("127.0.0.x: kill -9 leader → first write accepted", loopback_killed_leader, "≤ 2 s"),
    ];
    let mut results = Vec::new();
    for (name, f, target) in lines {
        let runs = f(rounds);
        for (i, d) in runs.iter().enumerate() {
            eprintln!("{name}: round {} {:.2} s", i + 1, d.as_secs_f64());
        }
        results.push((name, stats(runs), target));
    }
    println!("\n{:<52} {:>8} {:>8}   target", "", "median", "max");
    for (name, (median, max), target) in results {
        println!("{name:<52} {median:>7.2}s {max:>7.2}s   {target}");
    }
}
