//! The cost of issue 16's protection, each pair side by side in one run,
//! rounds taking turns (these machines are noisy: read the ratios):
//!
//! - gossip: N members (default 16) in this process over real UDP on
//!   loopback, with chitchat's plain `UdpTransport` and with shoal's
//!   `SealedTransport`: time from the first start until every member sees
//!   all N, time from one member's stop until every other sees it gone, and
//!   the process's CPU while N members gossip;
//! - the API: two one-manager clusters of real `shoal daemon`s, one on plain
//!   loopback HTTP and one with `--api-tls` (client certificates), CLIENTS
//!   keep-alive clients (default 32, then 1) sending committed writes
//!   (`node update --label-add`);
//! - the raft log: `DiskStorage::append` (fsync) and a commit-index update
//!   per write, as raft's ready loop does, with entries sealed by the data
//!   key and with the plaintext records of before.
//!
//! Run: `cargo bench -p tests --bench protection` (needs `cargo build
//! --release -p cli` and Docker). `ROUNDS` (3), `SECONDS` per API line (5),
//! `GOSSIP_NODES` (16), `ONLY` (`gossip,raft,api`). Target: each protected figure within 10 % of the
//! unprotected one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::{require_docker, Cluster, ClusterSpec};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

/// CPU time (user + system) process `pid` has used so far, from
/// `/proc/PID/stat` (clock ticks, `getconf CLK_TCK` of them per second).
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf CLK_TCK");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
    })
}

// ---- gossip ----

mod gossip {
    use super::*;
    use actix::Addr;
    use common::gossip_key::GossipKeyRing;
    use common::NodeId;
    use tokio::sync::watch;
    use worker::node::membership::{
        dropped_counter, fact, start_with_transport, GossipKeys, LiveSet, Membership, MembershipConfig,
        SealedTransport, Shutdown,
    };

    pub struct Round {
        pub converge: Duration,
        pub detect: Duration,
        /// CPU seconds per second of the whole process while the members gossip.
        pub cpu: f64,
    }

    fn free_udp(net: u8, last: u8) -> SocketAddr {
        let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, net, last], 0))).expect("bind loopback");
        socket.local_addr().expect("local addr")
    }

    async fn wait_all(rxs: &mut [watch::Receiver<LiveSet>], what: &str, pred: impl Fn(&LiveSet) -> bool) {
        let within = Duration::from_secs(30);
        for rx in rxs.iter_mut() {
            match tokio::time::timeout(within, rx.wait_for(&pred)).await {
                Ok(Ok(_)) => {}
                _ => panic!("gossip bench: {what} not within {within:?}"),
            }
        }
    }

    /// One round: `n` members, sealed or plain.
    pub async fn round(n: usize, sealed: bool, net: u8) -> Round {
        let ring = GossipKeyRing::first();
        let addrs: Vec<SocketAddr> = (0..n).map(|i| free_udp(net, i as u8 + 1)).collect();
        let cluster_id = format!("bench-{net}");
        let t0 = Instant::now();
        let mut members: Vec<Addr<Membership>> = Vec::new();
        let mut rxs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = format!("m{i:02}");
            let config = MembershipConfig {
                node_id: NodeId::from(id.as_str()),
                cluster_id: cluster_id.clone(),
                gossip_addr: *addr,
                seeds: if i == 0 { vec![] } else { vec![addrs[0]] },
                generation: 1,
                facts: BTreeMap::from([
                    (fact::ROLE.to_string(), "worker".to_string()),
                    (fact::HOSTNAME.to_string(), format!("host-{id}")),
                ]),
            };
            let transport: Arc<dyn chitchat::transport::Transport> = if sealed {
                Arc::new(SealedTransport {
                    keys: GossipKeys::new(ring.clone()),
                    cluster_id: cluster_id.clone(),
                    node_id: id.clone(),
                    dropped: dropped_counter(),
                })
            } else {
                Arc::new(chitchat::transport::UdpTransport)
            };
            let (addr, rx) = start_with_transport(config, transport).await.expect("gossip starts");
            members.push(addr);
            rxs.push(rx);
        }
        wait_all(&mut rxs, "convergence", |l| l.nodes.len() == n).await;
        let converge = t0.elapsed();

        let (cpu0, w0) = (cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu = (cpu_time() - cpu0).as_secs_f64() / w0.elapsed().as_secs_f64();

        let last = members.pop().expect("members");
        rxs.pop();
        let t1 = Instant::now();
        last.send(Shutdown).await.expect("shutdown");
        wait_all(&mut rxs, "failure detection", |l| l.nodes.len() == n - 1).await;
        let detect = t1.elapsed();
        for m in members {
            let _ = m.send(Shutdown).await;
        }
        Round { converge, detect, cpu }
    }
}

// ---- the API ----

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A minimal HTTP/1.1 client on one kept-alive connection, plain or TLS.
struct Http {
    reader: BufReader<Box<dyn Stream>>,
    host: String,
}

impl Http {
    fn connect(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> std::io::Result<Http> {
        let s = TcpStream::connect_timeout(&addr.parse().expect("api addr"), Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(s),
            Some(config) => {
                let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
                let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?;
                let conn = rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
                Box::new(rustls::StreamOwned::new(conn, s))
            }
        };
        Ok(Http { reader: BufReader::new(stream), host: addr.to_string() })
    }

    fn post(&mut self, path: &str, body: &str) -> std::io::Result<u16> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.reader.get_mut().write_all(req.as_bytes())?;
        self.reader.get_mut().flush()?;
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
        Ok(status)
    }
}

struct Load {
    rate: f64,
    /// The manager's CPU per committed write.
    cpu_per_write: Duration,
    errors: usize,
    p50: Duration,
    p99: Duration,
}

/// `clients` keep-alive clients writing node labels for `seconds`.
fn api_load(api: &str, pid: u32, tls: Option<Arc<rustls::ClientConfig>>, clients: usize, seconds: u64) -> Load {
    let cpu0 = proc_cpu(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let all = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (api, stop, all, tls) = (api.to_string(), stop.clone(), all.clone(), tls.clone());
            std::thread::spawn(move || {
                let (mut lat, mut errors, mut k) = (Vec::new(), 0, 0usize);
                let mut http = Http::connect(&api, tls.as_ref()).expect("connect to the API");
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let body = format!(r#"{{"label_add":{{"bench{}":"{k}"}}}}"#, t % 4);
                    let s = Instant::now();
                    match http.post("/v1/nodes/node1/update", &body) {
                        Ok(200) => lat.push(s.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            http = Http::connect(&api, tls.as_ref()).expect("reconnect to the API");
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
        t.join().expect("client thread");
    }
    let elapsed = t0.elapsed();
    let cpu = proc_cpu(pid) - cpu0;
    let (mut lat, errors) = std::mem::take(&mut *all.lock().unwrap());
    lat.sort();
    Load {
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        cpu_per_write: cpu / lat.len().max(1) as u32,
        errors,
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
    }
}

fn bundle(dir: &Path) -> Arc<rustls::ClientConfig> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    Arc::new(
        worker::node::api_tls::client_config(&read("ca.pem"), &read("cert.pem"), &read("key.pem")).expect("bundle"),
    )
}

// ---- the raft log ----

mod raft_log {
    use super::*;
    use manager::raft::storage::keys::DataKey;
    use manager::raft::storage::DiskStorage;
    use raft::eraftpb::Entry;

    struct Side {
        storage: DiskStorage,
        index: u64,
        busy: Duration,
        cpu: Duration,
        writes: usize,
    }

    impl Side {
        fn open(dir: &Path, sealed: bool) -> Side {
            let _ = std::fs::remove_dir_all(dir);
            let mut storage = DiskStorage::open(dir, DataKey::generate()).expect("open storage");
            if !sealed {
                storage.write_plaintext_for_bench();
            }
            Side { storage, index: 0, busy: Duration::ZERO, cpu: Duration::ZERO, writes: 0 }
        }

        /// One write: `batch` entries of `data` appended (fsync), then the
        /// commit index (fsync), timed.
        fn write(&mut self, batch: usize, data: &[u8]) {
            let (t0, cpu0) = (Instant::now(), cpu_time());
            let entries: Vec<Entry> = (1..=batch as u64)
                .map(|i| Entry { index: self.index + i, term: 1, data: data.to_vec().into(), ..Default::default() })
                .collect();
            self.storage.append(&entries).expect("append");
            self.index += batch as u64;
            self.storage.set_commit(self.index).expect("commit");
            self.busy += t0.elapsed();
            self.cpu += cpu_time() - cpu0;
            self.writes += 1;
        }

        /// Writes per second of the time spent writing, and CPU per write.
        fn figures(&self) -> (f64, Duration) {
            (self.writes as f64 / self.busy.as_secs_f64(), self.cpu / self.writes.max(1) as u32)
        }
    }

    /// Plaintext and sealed writes for `seconds`, taking turns one write
    /// at a time (the order swapped each turn), so that both see the same
    /// disk and the same load from the rest of the machine; each write
    /// appends `batch` entries of `size` bytes (fsync) and then updates the
    /// commit index (fsync). For each: writes per second of its own time,
    /// and the process's CPU per write.
    pub fn pair(dir: &Path, batch: usize, size: usize, seconds: f64) -> [(f64, Duration); 2] {
        let mut sides = [Side::open(&dir.join("plain"), false), Side::open(&dir.join("sealed"), true)];
        let data = vec![b'x'; size];
        let t0 = Instant::now();
        let mut turn = 0usize;
        while t0.elapsed().as_secs_f64() < seconds {
            let (first, second) = if turn.is_multiple_of(2) { (0, 1) } else { (1, 0) };
            sides[first].write(batch, &data);
            sides[second].write(batch, &data);
            turn += 1;
        }
        [sides[0].figures(), sides[1].figures()]
    }
}

fn ratio(protected: f64, plain: f64) -> String {
    format!("{:.1} %", 100.0 * protected / plain)
}

fn main() {
    if !require_docker() {
        return;
    }
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 5) as u64;
    let n = env_or("GOSSIP_NODES", 16);
    let only = std::env::var("ONLY").unwrap_or_else(|_| "gossip,raft,api".into());
    let run = |part: &str| only.split(',').any(|p| p == part);

    if run("gossip") {
        gossip_table(rounds, n);
    }
    if run("raft") {
        raft_table(rounds);
    }
    if run("api") {
        api_table(rounds, seconds);
    }
}

fn gossip_table(rounds: usize, n: usize) {
    let (mut plain, mut sealed) = (Vec::new(), Vec::new());
    actix::System::new().block_on(async {
        for r in 0..rounds {
            plain.push(gossip::round(n, false, 100 + 2 * r as u8).await);
            sealed.push(gossip::round(n, true, 101 + 2 * r as u8).await);
        }
    });
    let med = |v: &[gossip::Round], f: fn(&gossip::Round) -> f64| median(v.iter().map(f).collect());
    println!("\ngossip, {n} members over UDP on loopback, median of {rounds} rounds:");
    println!("| | plain chitchat | sealed | sealed / plain |");
    println!("|---|---|---|---|");
    for (what, f) in [
        ("first start → every member sees all (s)", (|r: &gossip::Round| r.converge.as_secs_f64()) as fn(&_) -> f64),
        ("a member stops → every other sees it gone (s)", |r| r.detect.as_secs_f64()),
        ("CPU of the process while gossiping (cores)", |r| r.cpu),
    ] {
        let (p, s) = (med(&plain, f), med(&sealed, f));
        println!("| {what} | {p:.3} | {s:.3} | {} |", ratio(s, p));
    }
}

fn raft_table(rounds: usize) {
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".into())).expect("tempdir");
    let log_rounds = 3 * rounds;
    println!(
        "\nraft log, append (fsync) + commit index (fsync) per write; plaintext and sealed writes take turns, \
         one each; median of {log_rounds} rounds of 2 s:"
    );
    println!("| per write | plaintext records: writes/s, CPU | sealed (XChaCha20-Poly1305) | sealed / plaintext: rate, CPU |");
    println!("|---|---|---|---|");
    for (batch, size) in [(1usize, 200usize), (32, 200), (1, 16 * 1024)] {
        let (mut p, mut s) = (Vec::new(), Vec::new());
        for _ in 0..log_rounds {
            let [plain, sealed] = raft_log::pair(dir.path(), batch, size, 2.0);
            p.push(plain);
            s.push(sealed);
        }
        let stats = |v: &[(f64, Duration)]| {
            (median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1.as_secs_f64() * 1e6).collect()))
        };
        let ((pr, pc), (sr, sc)) = (stats(&p), stats(&s));
        println!(
            "| {batch} entr{} of {size} B | {pr:.0}/s, {pc:.1} µs | {sr:.0}/s, {sc:.1} µs | {}, {} |",
            if batch == 1 { "y" } else { "ies" },
            ratio(sr, pr),
            ratio(sc, pc)
        );
    }
}

fn api_table(rounds: usize, seconds: u64) {
    let dirs = tempfile::tempdir().expect("tempdir");
    let plain_cluster = Cluster::start(ClusterSpec::new(1, 0));
    let data = dirs.path().join("tls-node1");
    // The harness's own CLI calls to the TLS cluster go with its first admin's bundle.
    std::env::set_var("DOCKER_TLS_VERIFY", "1");
    std::env::set_var("DOCKER_CERT_PATH", data.join("api-client"));
    let mut spec = ClusterSpec::new(1, 0);
    spec.daemon_args = vec!["--api-tls".into()];
    spec.data_dirs = BTreeMap::from([(1, data.clone())]);
    let tls_cluster = Cluster::start(spec);
    let tls = bundle(&data.join("api-client"));
    println!(
        "\nAPI: committed writes (node update --label-add), one manager, median of {rounds} rounds of {seconds} s:"
    );
    println!("| clients | plain HTTP on loopback | TLS with client certificates | TLS / plain: rate, manager CPU per write |");
    println!("|---|---|---|---|");
    let (plain_pid, tls_pid) = (plain_cluster.pid(1).expect("pid"), tls_cluster.pid(1).expect("pid"));
    for clients in [env_or("CLIENTS", 32), 1] {
        let (mut p, mut t) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            p.push(api_load(&plain_cluster.api_addr(1), plain_pid, None, clients, seconds));
            t.push(api_load(&tls_cluster.api_addr(1), tls_pid, Some(tls.clone()), clients, seconds));
        }
        let errors: usize = p.iter().chain(&t).map(|l| l.errors).sum();
        let show = |v: &[Load]| {
            let rate = median(v.iter().map(|l| l.rate).collect());
            let p50 = median(v.iter().map(|l| l.p50.as_secs_f64() * 1e3).collect());
            let p99 = median(v.iter().map(|l| l.p99.as_secs_f64() * 1e3).collect());
            let cpu = median(v.iter().map(|l| l.cpu_per_write.as_secs_f64() * 1e6).collect());
            (rate, cpu, format!("{rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms, {cpu:.0} µs CPU"))
        };
        let ((pr, pc, ps), (tr, tc, ts)) = (show(&p), show(&t));
        let errors = if errors > 0 { format!(" ({errors} errors)") } else { String::new() };
        println!("| {clients} | {ps} | {ts} | {}, {} |{errors}", ratio(tr, pr), ratio(tc, pc));
    }
}
