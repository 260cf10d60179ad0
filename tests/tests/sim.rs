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
/// The `--kill` test's cluster, beside the other (the tests run at once).
const FIRST_KILL: &str = "127.3.0.1";

fn get(first: &str, path: &str) -> Value {
    let url = format!("http://{first}:4243{path}");
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

/// `shoal sim` with `--hold`, stopped however the test ends.
struct Sim {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
    printed: Vec<String>,
}

impl Sim {
    fn start(first: &str, data: &std::path::Path, extra: &[&str]) -> Sim {
        let mut cmd = Command::new(shoal_bin());
        cmd.args(["sim", "--nodes", &NODES.to_string(), "--managers", &MANAGERS.to_string()])
            .args(["--services", &SERVICES.to_string(), "--tasks", &TASKS.to_string()])
            .args(["--first-addr", first, "--timeout", "90s", "--hold"])
            .args(extra)
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_daemon(cmd).expect("spawn shoal sim");
        let lines = stdout_lines(&mut child);
        Sim { child: Some(child), lines, printed: Vec::new() }
    }

    /// The first line that starts with `prefix`, within `deadline`.
    fn line(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => self.printed.push(l),
                Err(e) => panic!("no {prefix:?} line from shoal sim ({e}); it printed:\n{}", self.printed.join("\n")),
            }
        }
    }

    fn stop(mut self) {
        let child = self.child.take().unwrap();
        let (status, killed) = stop_child(child, Duration::from_secs(40));
        assert!(!killed && status.success(), "shoal sim stops cleanly on SIGTERM: {status:?}");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Duration::from_secs(40));
        }
    }
}

/// Node id → status, from the store.
fn node_status(first: &str) -> BTreeMap<String, (String, String)> {
    get(first, "/v1/nodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap().to_string();
            let hostname = n["hostname"].as_str().unwrap_or("").to_string();
            (id, (hostname, n["status"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

/// The running tasks, by node: each task once, each slot once, and every
/// other task of a slot ended.
fn running_per_node(first: &str) -> BTreeMap<String, usize> {
    let services = get(first, "/v1/services");
    let services: Vec<String> =
        services.as_array().unwrap().iter().map(|s| s["spec"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(services.len(), SERVICES, "{services:?}");
    let mut per_node = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let mut slots = BTreeSet::new();
    for s in &services {
        for t in get(first, &format!("/v1/services/{s}/tasks")).as_array().unwrap() {
            if t["desired_state"] != "running" {
                continue;
            }
            assert_eq!(t["status"]["state"], "running", "{t}");
            let node = t["node_id"].as_str().unwrap_or_else(|| panic!("a running task without a node: {t}"));
            *per_node.entry(node.to_string()).or_insert(0) += 1;
            assert!(ids.insert(t["id"].as_str().unwrap().to_string()), "a task listed twice: {t}");
            assert!(slots.insert((s.clone(), t["slot"].as_u64().unwrap())), "two tasks in one slot: {t}");
        }
    }
    assert_eq!(ids.len(), TASKS, "every task, once");
    per_node
}

#[test]
fn sim_places_every_task_on_exactly_one_node_evenly() {
    let data = tempfile::tempdir().unwrap();
    let mut sim = Sim::start(FIRST, data.path(), &[]);
    let started = Instant::now();
    let last = sim.line("placed ", started + Duration::from_secs(120));
    let took = started.elapsed();
    assert!(
        last.starts_with(&format!("placed {TASKS} tasks on {NODES} nodes: all running in ")) && last.ends_with(" s"),
        "{last}"
    );
    assert!(sim.printed.iter().any(|l| l.starts_with("placements/s")), "the table: {:?}", sim.printed);

    // The store's view.
    let nodes = node_status(FIRST);
    assert_eq!(nodes.len(), NODES + MANAGERS, "{nodes:?}");
    assert!(nodes.values().all(|(_, s)| s == "ready"), "{nodes:?}");
    let mut per_node: BTreeMap<String, usize> = nodes.keys().map(|n| (n.clone(), 0)).collect();
    for (node, n) in running_per_node(FIRST) {
        *per_node.get_mut(&node).unwrap_or_else(|| panic!("tasks on a node not in the store: {node}")) += n;
    }
    let (min, max) = (per_node.values().min().unwrap(), per_node.values().max().unwrap());
    assert!(max - min <= 1, "spread within one task per node of even: {min}..{max} {per_node:?}");
    assert_eq!(per_node.values().sum::<usize>(), TASKS);
    sim.stop();
    eprintln!("shoal sim: {last} (test took {:.1} s)", took.as_secs_f64());
}

/// `--kill 5` once all run: the five nodes are down in the store, their
/// tasks were replaced, and every slot runs once, on the nodes left.
#[test]
fn sim_kill_replaces_the_tasks_of_stopped_nodes() {
    const KILL: usize = 5;
    let data = tempfile::tempdir().unwrap();
    let mut sim = Sim::start(FIRST_KILL, data.path(), &["--kill", &KILL.to_string()]);
    let started = Instant::now();
    let killed = sim.line("killed ", started + Duration::from_secs(150));
    assert!(
        killed.starts_with(&format!("killed {KILL} nodes holding "))
            && killed.contains(" tasks: all seen down in ")
            && killed.contains(" s, their tasks replaced and running elsewhere in ")
            && killed.ends_with(" s"),
        "{killed}"
    );
    let last = sim.line("placed ", started + Duration::from_secs(150));
    assert!(last.starts_with(&format!("placed {TASKS} tasks on {NODES} nodes: all running in ")), "{last}");

    // The sim stops the last nodes it started: sim-w46 … sim-w50.
    let victims: BTreeSet<String> = (NODES - KILL + 1..=NODES).map(|i| format!("sim-w{i}")).collect();
    let nodes = node_status(FIRST_KILL);
    assert_eq!(nodes.len(), NODES + MANAGERS, "{nodes:?}");
    for (hostname, status) in nodes.values() {
        let want = if victims.contains(hostname) { "down" } else { "ready" };
        assert_eq!(status, want, "{hostname}: {nodes:?}");
    }
    let per_node = running_per_node(FIRST_KILL);
    for node in per_node.keys() {
        let (hostname, _) = &nodes[node];
        assert!(!victims.contains(hostname), "a task still runs on {hostname}, which was stopped: {per_node:?}");
    }
    assert_eq!(per_node.values().sum::<usize>(), TASKS);
    sim.stop();
    eprintln!("shoal sim --kill {KILL}: {killed}");
}
