//! The cost of an encrypted overlay network (`network create --opt
//! encrypted`, sealed in user space: `worker::net::tunnel`) beside a clear
//! one, on real hosts (`deploy/hosts.sh`, two of them), in one run, rounds
//! taking turns (these machines are noisy: read the ratios):
//!
//! - bulk: a task on host1 fetches a SIZE_MB file (default 128) from a task
//!   on host2 by address (busybox wget → httpd): MB/s;
//! - requests: REQUESTS (default 200) small fetches one after another in one
//!   `docker exec`: time per request (a busybox process each, on both);
//! - CPU: what the two hosts' shoal processes spent during the bulk
//!   fetches, per MB moved (the tunnel runs in them).
//!
//! Run: `cargo bench -p tests --bench overlay` as root, after `cargo build
//! --release -p cli`. `ROUNDS` (3), `SIZE_MB` (128), `REQUESTS` (200).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{busybox_image, require_hosts, task_host, Hosts, Mesh};

const DEADLINE: Duration = Duration::from_secs(120);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

/// CPU seconds the shoal processes of hosts 1 and 2 have used.
fn shoal_cpu(h_id: &str) -> f64 {
    let ticks = clock_ticks();
    (1..=2)
        .map(|i| {
            let pid = std::fs::read_to_string(format!("/run/shoal-hosts-{h_id}/host{i}/shoal.pid")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
            (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / ticks
        })
        .sum()
}

/// Host → (container, address) of `svc`'s running tasks.
fn placed(h: &Hosts, svc: &str) -> BTreeMap<usize, (String, String)> {
    let tasks: Vec<Value> = h.wait_running(1, svc, 2, DEADLINE);
    tasks
        .iter()
        .map(|t| {
            let host = task_host(t).expect("a host");
            let addr = t["addresses"][0]["addr"].as_str().expect("an address").to_string();
            let id = t["status"]["container_id"].as_str().expect("a container").to_string();
            (host, (id, addr))
        })
        .collect()
}

/// One figure of a line.
type Field = fn(&Line) -> &Vec<f64>;

struct Line {
    mb_s: Vec<f64>,
    per_request_ms: Vec<f64>,
    cpu_per_mb_ms: Vec<f64>,
}

fn main() {
    if !require_hosts() {
        return;
    }
    let rounds = env_or("ROUNDS", 3);
    let size_mb = env_or("SIZE_MB", 128);
    let requests = env_or("REQUESTS", 200);
    let h = Hosts::up(2, 1, Mesh::Kernel);
    // The harness's id is the third octet of its addresses.
    let h_id = h.addr(1).octets()[2].to_string();
    h.shoal_ok(1, &["network", "create", "clear"]);
    h.shoal_ok(1, &["network", "create", "--opt", "encrypted", "sealed"]);
    let serve = format!(
        "mkdir -p /www && echo ok > /www/small && dd if=/dev/zero of=/www/big bs=1048576 count={} 2>/dev/null && exec httpd -f -p 80 -h /www",
        size_mb
    );
    let mut lines: BTreeMap<&str, Line> = BTreeMap::new();
    let mut tasks = BTreeMap::new();
    for net in ["clear", "sealed"] {
        let svc = format!("bench-{net}");
        let flags = ["service", "create", "-d", "--name", &svc, "--replicas", "2", "--replicas-max-per-node", "1"];
        h.shoal_ok(1, &[&flags[..], &["--network", net, busybox_image(), "sh", "-c", &serve]].concat());
        tasks.insert(net, placed(&h, &svc));
        lines.insert(net, Line { mb_s: vec![], per_request_ms: vec![], cpu_per_mb_ms: vec![] });
    }
    for round in 0..rounds {
        let order: [&str; 2] = if round % 2 == 0 { ["clear", "sealed"] } else { ["sealed", "clear"] };
        for net in order {
            let t = &tasks[net];
            let (from, to) = (&t[&1].0, &t[&2].1);
            // Until the file is served (the first round warms up).
            let big = format!("http://{to}/big");
            let cpu0 = shoal_cpu(&h_id);
            let t0 = Instant::now();
            let out = h.docker(1, &["exec", from, "timeout", "300", "wget", "-O", "/dev/null", &big]);
            let took = t0.elapsed().as_secs_f64();
            let cpu = shoal_cpu(&h_id) - cpu0;
            assert!(out.success(), "{net}: {out}");
            let line = lines.get_mut(net).expect("line");
            line.mb_s.push(size_mb as f64 / took);
            line.cpu_per_mb_ms.push(cpu * 1000.0 / size_mb as f64);

            let small = format!("http://{to}/small");
            let script =
                format!("for i in $(seq {requests}); do wget -O /dev/null {small} 2>/dev/null || exit 1; done");
            let t0 = Instant::now();
            let out = h.docker(1, &["exec", from, "sh", "-c", &script]);
            let took = t0.elapsed().as_secs_f64();
            assert!(out.success(), "{net}: {out}");
            line.per_request_ms.push(took * 1000.0 / requests as f64);
            eprintln!(
                "round {round} {net}: {:.1} MB/s, {:.2} ms/request, shoal CPU {:.2} ms/MB",
                line.mb_s.last().unwrap(),
                line.per_request_ms.last().unwrap(),
                line.cpu_per_mb_ms.last().unwrap()
            );
        }
    }
    let m = |net: &str, f: Field| median(f(&lines[net]).clone());
    println!(
        "\nencrypted overlay vs clear, 2 hosts, median of {rounds} rounds ({size_mb} MB bulk, {requests} requests)"
    );
    println!("{:<28} {:>12} {:>12} {:>10}", "", "clear", "encrypted", "ratio");
    let rows: [(&str, Field); 3] = [
        ("bulk MB/s", |l| &l.mb_s),
        ("ms per small request", |l| &l.per_request_ms),
        ("shoal CPU ms per MB", |l| &l.cpu_per_mb_ms),
    ];
    for (name, f) in rows {
        let (c, s) = (m("clear", f), m("sealed", f));
        println!("{name:<28} {c:>12.2} {s:>12.2} {:>9.1}%", 100.0 * s / c);
    }
    h.shoal_ok(1, &["service", "rm", "bench-clear", "bench-sealed"]);
}
