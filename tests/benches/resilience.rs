//! How fast work moves, on real `shoal` processes and real Docker:
//!
//! - kill -9 of a worker → all its replacements RUNNING elsewhere;
//! - drain of a node → all its rescheduled tasks RUNNING elsewhere;
//! - a rolling update of 12 tasks (parallelism 3, delay 1 s) → all 12 on
//!   the new image, against its theoretical minimum (3 delays = 3 s).
//!
//! Each is run ROUNDS times (default 5, env `ROUNDS`) on a fresh 3-node
//! cluster; median and max are printed. Run: `cargo bench -p tests --bench
//! resilience` (needs the release binary: `cargo build --release -p cli`).

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{busybox_image, docker, require_docker, running_tasks, wait_for, Cluster};

const DEADLINE: Duration = Duration::from_secs(120);
const SLEEP: &[&str] = &["sleep", "100000"];

fn running_off(c: &Cluster, svc: &str, n: usize, node: &str) -> Result<(), String> {
    let t = c.service_tasks(svc);
    let r = running_tasks(&t);
    if r.len() == n && r.iter().all(|t| t["node_id"] != Value::String(node.to_string())) {
        Ok(())
    } else {
        Err(format!("{} running", r.len()))
    }
}

fn kill_worker() -> Duration {
    let mut c = Cluster::new(3);
    c.create_service("web", &["--replicas", "6"], SLEEP);
    let node3 = c.node_id(3);
    let t0 = Instant::now();
    c.kill_node(3);
    wait_for(DEADLINE, "replacements running", || running_off(&c, "web", 6, &node3));
    t0.elapsed()
}

fn drain() -> Duration {
    let c = Cluster::new(3);
    c.create_service("web", &["--replicas", "6"], SLEEP);
    let node3 = c.node_id(3);
    let t0 = Instant::now();
    c.shoal_ok(&["node", "update", "--availability", "drain", "node3"]);
    wait_for(DEADLINE, "rescheduled tasks running", || running_off(&c, "web", 6, &node3));
    t0.elapsed()
}

fn rolling_update() -> Duration {
    let c = Cluster::new(3);
    c.create_service("web", &["--replicas", "12", "--update-parallelism", "3", "--update-delay", "1s"], SLEEP);
    let t0 = Instant::now();
    c.shoal_ok(&["service", "update", "-d", "--image", "shoal/busybox:v2", "web"]);
    wait_for(DEADLINE, "12 tasks on the new image", || {
        let t = c.service_tasks("web");
        let r = running_tasks(&t);
        let new = r.iter().filter(|t| t["spec"]["image"] == "shoal/busybox:v2").count();
        if r.len() == 12 && new == 12 {
            Ok(())
        } else {
            Err(format!("{new} of {} on v2", r.len()))
        }
    });
    t0.elapsed()
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}

fn main() {
    if !require_docker() {
        return;
    }
    docker(&["tag", busybox_image(), "shoal/busybox:v2"]).ok();
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut results = Vec::new();
    for (name, f, target) in [
        ("kill -9 worker → replacements running", kill_worker as fn() -> Duration, Some(Duration::from_secs(3))),
        ("drain → rescheduled tasks running", drain as fn() -> Duration, None),
        (
            "rolling update 12 tasks, parallelism 3, delay 1s",
            rolling_update as fn() -> Duration,
            Some(Duration::from_secs(3)),
        ),
    ] {
        let runs: Vec<Duration> = (0..rounds)
            .map(|i| {
                let d = f();
                eprintln!("{name}: round {} {:.2} s", i + 1, d.as_secs_f64());
                d
            })
            .collect();
        results.push((name, stats(runs), target));
    }
    println!("\n{:<52} {:>8} {:>8}   reference", "", "median", "max");
    for (name, (median, max), target) in results {
        let reference = match (name.starts_with("rolling"), target) {
            (true, Some(t)) => format!(
                "theoretical minimum {:.1} s (ratio {:.2})",
                t.as_secs_f64(),
                median.as_secs_f64() / t.as_secs_f64()
            ),
            (false, Some(t)) => format!("target ≤ {:.1} s", t.as_secs_f64()),
            _ => String::new(),
        };
        println!("{name:<52} {:>7.2}s {:>7.2}s   {reference}", median.as_secs_f64(), max.as_secs_f64());
    }
}
