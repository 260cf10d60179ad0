//! `shoal sim` (issue 15): a whole cluster in one process — 3 real managers
//! and simulated nodes over the in-memory runtime (no Docker) — places its
//! tasks; the end state is read from the store through the first manager's
//! API, not from what the sim prints.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{shoal_bin, spawn_daemon, stdout_lines, stop_child};

const NODES: usize = 50;
const MANAGERS: usize = 3;
const SERVICES: usize = 10;
const TASKS: usize = 2000;
/// Away from the tests' clusters (127.0.x) and `shoal sim`'s default (127.1.x).
const FIRST: &str = "127.2.0.1";

fn get(path: &str) -> Value {
    let url = format!("http://{FIRST}:4243{path}");
    let body = ureq_get(&url);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// A bare HTTP GET (the tests crate has no HTTP client dependency).
fn ureq_get(url: &str) -> String {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let path = &url["http://".len() + addr.len()..];
    let reply = tests::http(&addr, "GET", path, None).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.text());
    reply.text()
}

#[test]
fn sim_places_every_task_on_exactly_one_node_evenly() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(shoal_bin());
    cmd.args(["sim", "--nodes", &NODES.to_string(), "--managers", &MANAGERS.to_string()])
        .args(["--services", &SERVICES.to_string(), "--tasks", &TASKS.to_string()])
        .args(["--first-addr", FIRST, "--timeout", "90s", "--hold"])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn_daemon(cmd).expect("spawn shoal sim");
    let lines = stdout_lines(&mut child);
    // Stopped however the test ends.
    struct Stop(Option<std::process::Child>);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Some(c) = self.0.take() {
                stop_child(c, Duration::from_secs(40));
            }
        }
    }
    let mut guard = Stop(Some(child));

    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut printed = Vec::new();
    let last = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with("placed ") => break l,
            Ok(l) => printed.push(l),
            Err(e) => panic!("no last line from shoal sim ({e}); it printed:\n{}", printed.join("\n")),
        }
    };
    let took = started.elapsed();
    assert!(
        last.starts_with(&format!("placed {TASKS} tasks on {NODES} nodes: all running in ")) && last.ends_with(" s"),
        "{last}"
    );
    assert!(printed.iter().any(|l| l.starts_with("placements/s")), "the table: {printed:?}");

    // The store's view.
    let nodes = get("/v1/nodes");
    let nodes: BTreeMap<String, String> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["status"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(nodes.len(), NODES + MANAGERS, "{nodes:?}");
    assert!(nodes.values().all(|s| s == "ready"), "{nodes:?}");
    let services = get("/v1/services");
    let services: Vec<String> =
        services.as_array().unwrap().iter().map(|s| s["spec"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(services.len(), SERVICES, "{services:?}");

    let mut per_node: BTreeMap<String, usize> = nodes.keys().map(|n| (n.clone(), 0)).collect();
    let mut ids = BTreeSet::new();
    let mut slots = BTreeSet::new();
    for s in &services {
        for t in get(&format!("/v1/services/{s}/tasks")).as_array().unwrap() {
            assert_eq!(t["desired_state"], "running", "{t}");
            assert_eq!(t["status"]["state"], "running", "{t}");
            let node = t["node_id"].as_str().unwrap_or_else(|| panic!("a running task without a node: {t}"));
            *per_node.get_mut(node).unwrap_or_else(|| panic!("task on a node not in the store: {t}")) += 1;
            assert!(ids.insert(t["id"].as_str().unwrap().to_string()), "a task listed twice: {t}");
            assert!(slots.insert((s.clone(), t["slot"].as_u64().unwrap())), "two tasks in one slot: {t}");
        }
    }
    assert_eq!(ids.len(), TASKS, "every task, once");
    let (min, max) = (per_node.values().min().unwrap(), per_node.values().max().unwrap());
    assert!(max - min <= 1, "spread within one task per node of even: {min}..{max} {per_node:?}");
    assert_eq!(per_node.values().sum::<usize>(), TASKS);

    let child = guard.0.take().unwrap();
    let (status, killed) = stop_child(child, Duration::from_secs(40));
    assert!(!killed && status.success(), "shoal sim stops cleanly on SIGTERM: {status:?}");
    eprintln!("shoal sim: {last} (test took {:.1} s)", took.as_secs_f64());
}
