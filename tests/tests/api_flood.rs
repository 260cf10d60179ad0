//! Floods against the API (issue 16), against a real `shoal daemon`, on the
//! plain loopback API and then on `--api-tls`, all three held at once while
//! `shoal service create` and `shoal service ls` keep answering in time:
//!
//! - slowloris: 200 connections each sending a request head (over TLS: a
//!   ClientHello) a byte a second, closed by the node within the head
//!   (handshake) deadline and reopened;
//! - 10,000 idle connections (over the default cap of 1024: the node closes
//!   the oldest idle ones for new ones), reopened as the node closes them;
//! - 1 GiB bodies (declared by `Content-Length` alone, then streamed, then
//!   chunked; on shoal's API and the Engine API) refused with 413 or cut
//!   off quickly, without being buffered: the node's RSS stays bounded.
//!
//! One test runs both modes one after the other: the harness's CLI finds
//! the TLS bundle through `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`, which are
//! the process's.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tests::{busybox_image, require_docker, Cluster, ClusterSpec};

const SLOWLORIS: usize = 200;
const IDLE: usize = 10_000;
/// The API's deadline for a request head (the TLS handshake has 3 s).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a legitimate call may take during a flood.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// How long a CLI command (a process of its own) may take during a flood.
const CLI_WITHIN: Duration = Duration::from_secs(5);
/// At most this many connections the node closed are opened again per
/// second (the node's closes leave TIME_WAIT entries: this keeps the
/// machine's ports).
const REOPEN_PER_SECOND: usize = 1_000;
/// The node may grow by this much under a flood.
const RSS_BOUND_KIB: u64 = 200 * 1024;
const GIB: u64 = 1 << 30;

/// Where the API is and how to reach it.
#[derive(Clone)]
struct Api {
    addr: SocketAddr,
    /// The admin's bundle, over `--api-tls`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

impl Api {
    fn label(&self) -> &'static str {
        if self.tls.is_some() {
            "tls"
        } else {
            "plain"
        }
    }

    /// A connection, through its TLS handshake if there is one.
    fn connect(&self) -> Result<Box<dyn Conn>, String> {
        let tcp = TcpStream::connect_timeout(&self.addr, ANSWER_WITHIN).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(config) => {
                let name = rustls::pki_types::ServerName::from(self.addr.ip());
                let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).map_err(|e| format!("TLS handshake: {e}"))?;
                }
                Ok(Box::new(tls))
            }
        }
    }
}

/// Reads an HTTP answer to its end: the status and body.
fn read_answer(s: &mut dyn Conn) -> Result<(u16, String), String> {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        // A TLS peer that closed without close_notify, after answering.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(format!("read: {e} (after {} bytes)", out.len())),
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What each flood connection sends: nothing, or these bytes one a second.
#[derive(Clone)]
enum Kind {
    Idle,
    Dribble(Arc<Vec<u8>>),
}

struct Slot {
    conn: Option<TcpStream>,
    opened: Instant,
    sent: usize,
    next_byte: Instant,
}

/// Flood connections held open (those the node closes opened again, within
/// [`REOPEN_PER_SECOND`]) until dropped; the longest a connection lived
/// before the node closed it.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    closed_by_node: Arc<AtomicUsize>,
    longest: Arc<Mutex<Duration>>,
    keeper: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(target: SocketAddr, n: usize, kind: Kind) -> Flood {
        let open = move || -> std::io::Result<TcpStream> {
            let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        // Opened by a few threads at once.
        let openers: Vec<JoinHandle<Vec<TcpStream>>> = (0..4)
            .map(|t| {
                let count = n / 4 + usize::from(t < n % 4);
                std::thread::spawn(move || {
                    (0..count)
                        .map(|i| open().unwrap_or_else(|e| panic!("flood connection {i} to {target}: {e}")))
                        .collect()
                })
            })
            .collect();
        let now = Instant::now();
        let mut slots: Vec<Slot> = openers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .map(|s| Slot { conn: Some(s), opened: now, sent: 0, next_byte: now })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(slots.len()));
        let closed_by_node = Arc::new(AtomicUsize::new(0));
        let longest = Arc::new(Mutex::new(Duration::ZERO));
        let keeper = {
            let (stop, opened, closed_by_node, longest) =
                (stop.clone(), opened.clone(), closed_by_node.clone(), longest.clone());
            std::thread::spawn(move || {
                let tick = Duration::from_millis(100);
                let per_tick = REOPEN_PER_SECOND / 10;
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let mut reopened = 0;
                    for slot in slots.iter_mut() {
                        if let Some(s) = &mut slot.conn {
                            let mut gone = match s.read(&mut buf) {
                                Ok(0) => true,
                                // A 408 or an alert: the close follows.
                                Ok(_) => false,
                                Err(e) => e.kind() != ErrorKind::WouldBlock,
                            };
                            if let (false, Kind::Dribble(bytes)) = (gone, &kind) {
                                if started >= slot.next_byte && slot.sent < bytes.len() {
                                    match s.write(&bytes[slot.sent..slot.sent + 1]) {
                                        Ok(n) => slot.sent += n,
                                        Err(e) => gone = e.kind() != ErrorKind::WouldBlock,
                                    }
                                    slot.next_byte = started + Duration::from_secs(1);
                                }
                            }
                            if gone {
                                slot.conn = None;
                                closed_by_node.fetch_add(1, Ordering::Relaxed);
                                let lived = slot.opened.elapsed();
                                let mut l = longest.lock().unwrap();
                                *l = (*l).max(lived);
                            }
                        }
                        if slot.conn.is_none() && reopened < per_tick {
                            reopened += 1;
                            if let Ok(s) = open() {
                                let now = Instant::now();
                                *slot = Slot { conn: Some(s), opened: now, sent: 0, next_byte: now };
                                opened.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    std::thread::sleep(tick.saturating_sub(started.elapsed()));
                }
                // Dropping `slots` closes them all.
            })
        };
        Flood { stop, opened, closed_by_node, longest, keeper: Some(keeper) }
    }

    fn closed(&self) -> usize {
        self.closed_by_node.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

/// `shoal service create` (no replicas, detached) and `shoal service ls`,
/// each within [`CLI_WITHIN`]; how long the slower took.
fn create_and_list(c: &Cluster, name: &str) -> Duration {
    let started = Instant::now();
    let out = c.shoal_timeout(
        1,
        CLI_WITHIN,
        &["service", "create", "-d", "--replicas", "0", "--name", name, busybox_image()],
    );
    assert!(out.success(), "service create {name}: {out}");
    let wrote = started.elapsed();
    let started = Instant::now();
    let out = c.shoal_timeout(1, CLI_WITHIN, &["service", "ls"]);
    assert!(out.success() && out.stdout.contains(name), "service ls: {out}");
    wrote.max(started.elapsed())
}

/// A ClientHello for the API, as rustls sends it (without a certificate:
/// the flood has none).
fn client_hello(addr: SocketAddr) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// What the slowloris connections send a byte a second: a request head
/// that never ends, or a ClientHello.
fn dribble(api: &Api) -> Vec<u8> {
    match api.tls {
        Some(_) => client_hello(api.addr),
        None => {
            let mut h = b"POST /v1/services HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: ".to_vec();
            h.resize(h.len() + 200, b'a');
            h
        }
    }
}

/// Sends a request head declaring or chunking 1 GiB, then streams up to
/// that much; the answer (or how the connection ended), the bytes written
/// and how long it all took.
fn big_body(api: &Api, path: &str, chunked: bool, stream: bool) -> (Result<(u16, String), String>, u64, Duration) {
    let started = Instant::now();
    let mut s = api.connect().unwrap();
    let framing = if chunked { "Transfer-Encoding: chunked".to_string() } else { format!("Content-Length: {GIB}") };
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut sent = 0u64;
    if stream {
        let piece = vec![b' '; 64 * 1024];
        let chunk = if chunked {
            let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
            c.extend_from_slice(&piece);
            c.extend_from_slice(b"\r\n");
            c
        } else {
            piece
        };
        while sent < GIB && started.elapsed() < Duration::from_secs(20) {
            if s.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
    }
    (read_answer(&mut s), sent, started.elapsed())
}

/// The 1 GiB uploads, one after the other; how each went.
fn bodies(api: &Api) -> Vec<String> {
    let mut report = Vec::new();
    for path in ["/v1/services", "/v1.41/services/create"] {
        // Declared: refused from the head alone.
        let (answer, _, took) = big_body(api, path, false, false);
        let (status, body) = answer.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(status, 413, "{path}: {body}");
        assert!(body.contains("\"message\""), "{path}: not a Docker-style error: {body}");
        assert!(took < ANSWER_WITHIN, "{path}: refused after {took:?}");
        report.push(format!("1 GiB declared to {path}: {status} {body:?} in {took:?}"));
        // Declared and streamed, then chunked: refused or cut off.
        for chunked in [false, true] {
            let (answer, sent, took) = big_body(api, path, chunked, true);
            let how = if chunked { "chunked" } else { "declared, streamed" };
            report.push(format!("1 GiB {how} to {path}: {answer:?} after {sent} bytes sent, {took:?}"));
            assert!(matches!(answer, Ok((413, _)) | Err(_)), "{path}: {answer:?}");
            assert!(sent < GIB, "{path}: the node took all of 1 GiB");
            assert!(took < Duration::from_secs(10), "{path}: took {took:?}");
        }
    }
    report
}

fn bundle_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    Arc::new(worker::node::api_tls::client_config(&read("ca.pem"), &read("cert.pem"), &read("key.pem")).unwrap())
}

fn floods(c: &Cluster, api: &Api) {
    let pid = c.pid(1).unwrap();
    let label = api.label();
    create_and_list(c, &format!("before-{label}"));
    let before = rss_kib(pid);
    let started = Instant::now();
    let slow = Flood::start(api.addr, SLOWLORIS, Kind::Dribble(Arc::new(dribble(api))));
    let idle = Flood::start(api.addr, IDLE, Kind::Idle);
    let opened_in = started.elapsed();
    let at_open = rss_kib(pid);
    let uploads = {
        let api = api.clone();
        std::thread::spawn(move || bodies(&api))
    };
    // Until the uploads are done and the node has closed every flood
    // connection at least once.
    let (mut slowest, mut rss, mut i) = (Duration::ZERO, at_open, 0);
    loop {
        slowest = slowest.max(create_and_list(c, &format!("flood-{label}-{i}")));
        rss = rss.max(rss_kib(pid));
        i += 1;
        if uploads.is_finished() && slow.closed() >= SLOWLORIS && idle.closed() >= IDLE {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "after 40 s: the node closed {} slowloris and {} idle connections; uploads done: {}",
            slow.closed(),
            idle.closed(),
            uploads.is_finished()
        );
    }
    let report = uploads.join().unwrap_or_else(|_| panic!("{label}: the uploads failed"));
    let longest_slow = *slow.longest.lock().unwrap();
    let longest_idle = *idle.longest.lock().unwrap();
    let (slow_opened, idle_opened) = (slow.opened.load(Ordering::Relaxed), idle.opened.load(Ordering::Relaxed));
    drop(slow);
    drop(idle);
    for line in &report {
        eprintln!("{label}: {line}");
    }
    eprintln!(
        "{label}: {SLOWLORIS} slowloris + {IDLE} idle connections opened in {opened_in:?}; {slow_opened} slowloris \
         and {idle_opened} idle opened in all, the longest lived {longest_slow:?} and {longest_idle:?}; {i} create+ls \
         rounds, the slowest command {slowest:?}; RSS {before} KiB before, {at_open} KiB with the floods open, max \
         {rss} KiB; {:?} in all",
        started.elapsed()
    );
    assert!(longest_slow <= HEAD_TIMEOUT + Duration::from_secs(2), "a slowloris connection lived {longest_slow:?}");
    assert!(longest_idle <= HEAD_TIMEOUT + Duration::from_secs(2), "an idle connection lived {longest_idle:?}");
    assert!(rss < before + RSS_BOUND_KIB, "RSS grew from {before} KiB to {rss} KiB");
    // The node is as it was.
    create_and_list(c, &format!("after-{label}"));
}

#[test]
fn floods_of_slow_idle_and_oversized_requests_do_not_stop_writes() {
    if !require_docker() {
        return;
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let need = (IDLE + 1_000) as u64;
    assert!(hard >= need, "the flood needs {need} open files; the hard limit here is {hard}");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    {
        let c = Cluster::new(1);
        let api = Api { addr: c.api_addr(1).parse().unwrap(), tls: None };
        floods(&c, &api);
    }

    let dirs = tempfile::tempdir().unwrap();
    let data = dirs.path().join("node1");
    let admin = data.join("api-client");
    std::env::set_var("DOCKER_TLS_VERIFY", "1");
    std::env::set_var("DOCKER_CERT_PATH", &admin);
    let mut spec = ClusterSpec::new(1, 0);
    spec.daemon_args = vec!["--api-tls".into()];
    spec.data_dirs = BTreeMap::from([(1, data.clone())]);
    let c = Cluster::start(spec);
    let api = Api { addr: c.api_addr(1).parse().unwrap(), tls: Some(bundle_config(&admin)) };
    floods(&c, &api);
}
