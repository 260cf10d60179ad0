//! Manager high availability, on real `shoal` processes (3 managers, raft
//! log fsync'd on every write):
//!
//! - leader failover: kill -9 of the leader → the first API write accepted
//!   by a surviving manager (median and max over ROUNDS, default 5);
//! - committed writes: CLIENTS concurrent keep-alive HTTP clients (default
//!   32) sending `node update --label-add` bodies to the leader's API for
//!   SECONDS (default 10): writes/s, p50 and p99 latency; then the same
//!   through a follower (forwarded to the leader by raft).
//!
//! Run: `cargo bench -p tests --bench ha` (needs `cargo build --release -p
//! cli`). Targets (issue 5): failover ≤ 2 s; ≥ 1,000 committed writes/s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::{require_docker, wait_for, Cluster, ClusterSpec};

const DEADLINE: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http {
    fn connect(addr: &str, timeout: Duration) -> std::io::Result<Http> {
        let s = TcpStream::connect_timeout(&addr.parse().expect("api addr"), timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Http { reader: BufReader::new(s), host: addr.to_string() })
    }

    /// POSTs `body`; returns the status code and the body.
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf)?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

fn label_body(k: usize) -> String {
    format!(r#"{{"label_add":{{"bench":"{k}"}}}}"#)
}

fn wait_healthy(c: &Cluster) -> usize {
    wait_for(DEADLINE, "a leader and two reachable managers", || {
        let out = c.shoal_timeout(1, Duration::from_secs(10), &["node", "ls", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|_| out.stderr.clone())?;
        let mut s: Vec<&str> =
            v.as_array().into_iter().flatten().filter_map(|n| n["manager_status"].as_str()).collect();
        s.sort();
        if s == ["Leader", "Reachable", "Reachable"] {
            c.leader_seen_from(1)
        } else {
            Err(format!("{s:?}"))
        }
    })
}

/// kill -9 the leader, then write through a survivor until one is accepted.
fn failover(c: &mut Cluster) -> Duration {
    let leader = wait_healthy(c);
    let via = (1..=3).find(|i| *i != leader).unwrap();
    let path = format!("/v1/nodes/node{via}/update");
    let api = c.api_addr(via);
    let t0 = Instant::now();
    c.kill_node(leader);
    let mut k = 0;
    let took = loop {
        k += 1;
        let ok = Http::connect(&api, Duration::from_secs(5))
            .and_then(|mut h| h.post(&path, &label_body(k)))
            .map(|(s, _)| s == 200)
            .unwrap_or(false);
        if ok {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < DEADLINE, "no write accepted within {DEADLINE:?} of the leader's death");
        std::thread::sleep(Duration::from_millis(5));
    };
    c.restart_node(leader);
    c.wait_nodes_ready(&[1, 2, 3], DEADLINE);
    took
}

struct Load {
    writes: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn load(c: &Cluster, via: usize, clients: usize, seconds: u64) -> Load {
    let api = c.api_addr(via);
    let stop = Arc::new(AtomicBool::new(false));
    let all = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (api, stop, all) = (api.clone(), stop.clone(), all.clone());
            // Spread the writes over the three nodes' labels.
            let path = format!("/v1/nodes/node{}/update", t % 3 + 1);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut http = Http::connect(&api, Duration::from_secs(20)).expect("connect to the API");
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let s = Instant::now();
                    match http.post(&path, &label_body(t * 1_000_000 + k)) {
                        Ok((200, _)) => lat.push(s.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            http = Http::connect(&api, Duration::from_secs(20)).expect("reconnect to the API");
                        }
                    }
                }
                let mut a = all.lock().unwrap();
                a.0.extend(lat);
                a.1 += errors;
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed();
    let (mut latencies, errors) = std::mem::take(&mut *all.lock().unwrap());
    latencies.sort();
    Load { writes: latencies.len(), errors, elapsed, latencies }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, l: &Load) {
    println!(
        "{what}: {:.0} committed writes/s ({} in {:.1?}, {} errors), latency p50 {:.1?} p99 {:.1?}",
        l.writes as f64 / l.elapsed.as_secs_f64(),
        l.writes,
        l.elapsed,
        l.errors,
        pct(&l.latencies, 0.5),
        pct(&l.latencies, 0.99)
    );
}

fn main() {
    if !require_docker() {
        return;
    }
    let rounds = env_or("ROUNDS", 5);
    let clients = env_or("CLIENTS", 32);
    let seconds = env_or("SECONDS", 10) as u64;
    let mut c = Cluster::start(ClusterSpec::new(3, 0));

    let mut times: Vec<Duration> = (0..rounds)
        .map(|r| {
            let t = failover(&mut c);
            println!("failover round {}: {t:.2?}", r + 1);
            t
        })
        .collect();
    times.sort();
    println!(
        "leader failover (kill -9 → first write accepted), {rounds} rounds: median {:.2?}, max {:.2?} (target ≤ 2 s)",
        times[times.len() / 2],
        times[times.len() - 1]
    );

    let leader = wait_healthy(&c);
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    report(&format!("API writes via the leader, {clients} clients"), &load(&c, leader, clients, seconds));
    report(&format!("API writes via a follower, {clients} clients"), &load(&c, follower, clients, seconds));
    report("API writes via the leader, 1 client", &load(&c, leader, 1, seconds.min(5)));
}
