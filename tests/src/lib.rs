//! Harness for the cluster tests in `tests/tests/`: they spawn real
//! `shoal daemon` processes, talk to them with the real CLI and look at the
//! containers they run in the machine's real Docker engine.
//!
//! - [`Cluster`] starts node1 with `--init` and the other nodes joining it,
//!   each node on its own loopback address `127.0.S.(10+i)` (cluster port
//!   4242, API port 4243) where the subnet `S` is claimed per cluster so that
//!   tests run in parallel; hostnames are `node1..nodeN`, data dirs and logs
//!   live in a temp dir. Dropping it stops the nodes it started and removes
//!   their containers; when the test is failing it prints their logs first.
//! - [`wait_for`] polls a condition until a deadline and fails with what it
//!   last saw.
//! - [`containers_with_label`], [`docker_kill`]: Docker through its CLI.
//! - [`shoal_bin`], [`require_docker`], [`busybox_image`]: the environment.
//!
//! Nodes are numbered from 1, as their hostnames are. Tests are plain
//! synchronous `#[test]`s:
//!
//! ```no_run
//! use std::time::Duration;
//! use tests::{busybox_image, Cluster};
//!
//! if !tests::require_docker() {
//!     return;
//! }
//! let c = Cluster::new(3);
//! c.shoal_ok(&["service", "create", "-d", "--name", "web", "--replicas", "3",
//!              busybox_image(), "sleep", "100000"]);
//! let tasks = c.wait_running("web", 3, Duration::from_secs(60));
//! assert_eq!(tasks.len(), 3);
//! ```
//!
//! Environment: `SHOAL_BIN` (the binary; default `<workspace>/target/release/shoal`),
//! `CI=true` (a missing Docker fails instead of skipping), `SHOAL_TEST_LOG_LINES`
//! (lines of each node log printed on failure, default 200, 0 for all),
//! `SHOAL_TEST_KEEP=1` (keep the temp dir of a failed test and print its path).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

/// The offline test image, built by `deploy/build-image.sh`.
pub const BUSYBOX_IMAGE: &str = "shoal/busybox:latest";

/// Cluster port (TCP frames, UDP gossip) on every node's address.
pub const CLUSTER_PORT: u16 = 4242;
/// HTTP API port on every node's address.
pub const API_PORT: u16 = 4243;

/// How long `Cluster::start` waits for node1's API to answer.
pub const API_DEADLINE: Duration = Duration::from_secs(30);
/// How long `Cluster::start` waits for every node to be Ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node gets to exit after SIGTERM before it is SIGKILLed.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Default limit for one CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between two attempts of [`wait_for`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub fn busybox_image() -> &'static str {
    BUSYBOX_IMAGE
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The `shoal` binary: `$SHOAL_BIN`, else `<workspace>/target/release/shoal`.
/// Panics with directions when it is not there.
pub fn shoal_bin() -> PathBuf {
    let path = match std::env::var_os("SHOAL_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            // cargo runs tests in the crate dir: read a relative path from the
            // workspace root, where it was most likely meant.
            if p.is_relative() && !p.exists() {
                workspace_root().join(p)
            } else {
                p
            }
        }
        _ => workspace_root().join("target/release/shoal"),
    };
    if !path.is_file() {
        panic!(
            "shoal binary not found at {}: run `cargo build --release -p cli` \
             or set SHOAL_BIN to its path (./test.sh does both)",
            path.display()
        );
    }
    path
}

/// Whether this is a CI run (`CI=true`), where nothing may be skipped.
pub fn is_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Whether Docker is usable, with the test image present (built with
/// `deploy/build-image.sh` when missing). When Docker cannot be reached, CI
/// fails the test; elsewhere this prints a loud skip notice and returns false:
/// start each cluster test with `if !require_docker() { return; }`.
pub fn require_docker() -> bool {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
        if !info.success() {
            return Err(format!("`docker info` failed: {}", info.stderr.trim()));
        }
        Ok(())
    });
    if let Err(why) = state {
        if is_ci() {
            panic!("Docker is required for the cluster tests when CI=true: {why}");
        }
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! SKIPPED: Docker is not reachable ({why})");
        eprintln!("!!! (set CI=true to make this a failure)");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return false;
    }
    ensure_image();
    true
}

/// Builds the test image once per process if it is missing.
fn ensure_image() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built || docker(&["image", "inspect", BUSYBOX_IMAGE]).success() {
        *built = true;
        return;
    }
    let script = workspace_root().join("deploy/build-image.sh");
    let out = run_with_timeout(&mut Command::new(&script), Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    if !out.success() {
        panic!("{} could not build {BUSYBOX_IMAGE}:\n{out}", script.display());
    }
    *built = true;
}

// ---------------------------------------------------------------------------
// Commands with a time limit

/// What a finished command printed.
#[derive(Clone)]
pub struct Output {
    /// The command line, for messages.
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the whole output unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        if !self.success() {
            panic!("command failed: {self}");
        }
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` → {}", self.cmd, self.status)?;
        if !self.stdout.is_empty() {
            write!(f, "\n--- stdout ---\n{}", self.stdout.trim_end())?;
        }
        if !self.stderr.is_empty() {
            write!(f, "\n--- stderr ---\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdin closed, output captured); kills it and returns an error
/// if it has not exited within `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{line}`: {e}"))?;
    // Read both pipes on threads so that a chatty command cannot block on a
    // full pipe while we wait for it.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{line}` did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for `{line}`: {e}")),
        }
    };
    Ok(Output { cmd: line, status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

// ---------------------------------------------------------------------------
// Polling

/// What a [`wait_for`] condition returns: `Some(v)`/`Ok(v)` when it holds,
/// `None` or `Err(observed)` when not yet — with `Err`, the last observation
/// is in the timeout message.
pub trait Attempt {
    type Value;
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Attempt for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: fmt::Display> Attempt for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Calls `f` every [`POLL_INTERVAL`] until it yields a value and returns it;
/// panics naming `what` (and the last `Err` seen) once `deadline` has passed.
#[track_caller]
pub fn wait_for<A: Attempt>(deadline: Duration, what: &str, mut f: impl FnMut() -> A) -> A::Value {
    let start = Instant::now();
    let end = start + deadline;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match f().into_result() {
            Ok(v) => return v,
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= end {
            let last = last.unwrap_or_else(|| "nothing (the condition returned None)".into());
            panic!(
                "timed out after {:.1?} waiting for {what} ({attempts} attempts); last observed: {last}",
                now - start
            );
        }
        thread::sleep(POLL_INTERVAL.min(end - now));
    }
}

// ---------------------------------------------------------------------------
// Docker

/// Runs the `docker` CLI; a Docker that does not answer in 60 s counts as a
/// failed command.
pub fn docker(args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    match run_with_timeout(&mut cmd, Duration::from_secs(60)) {
        Ok(out) => out,
        Err(e) => Output { cmd: describe(&cmd), status: failed_status(), stdout: String::new(), stderr: e },
    }
}

fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(1 << 8)
}

/// One container as `docker inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRow {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// `created`, `running`, `exited`, …
    pub state: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

impl ContainerRow {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// All containers (running or not) with label `key=value`.
pub fn containers_with_label(key: &str, value: &str) -> Vec<ContainerRow> {
    let filter = format!("label={key}={value}");
    let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]).ok();
    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["inspect"];
    args.extend(&ids);
    // A container removed meanwhile makes inspect fail but still print the
    // others: take what it printed.
    let out = docker(&args);
    parse_inspect(&out.stdout).unwrap_or_else(|e| panic!("cannot read {out}: {e}"))
}

/// Reads `docker inspect` output (a JSON array of containers).
pub fn parse_inspect(json: &str) -> Result<Vec<ContainerRow>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let arr = v.as_array().ok_or("not a JSON array")?;
    let s = |c: &Value, ptr: &str| c.pointer(ptr).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(arr
        .iter()
        .map(|c| ContainerRow {
            id: s(c, "/Id"),
            name: s(c, "/Name").trim_start_matches('/').to_string(),
            state: s(c, "/State/Status"),
            image: s(c, "/Config/Image"),
            labels: c
                .pointer("/Config/Labels")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                .unwrap_or_default(),
        })
        .collect())
}

/// `docker kill ID`; panics if Docker refuses.
#[track_caller]
pub fn docker_kill(id: &str) {
    docker(&["kill", id]).ok();
}

/// `docker rm -f -v` of these containers; missing ones are not an error.
pub fn docker_rm_force(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut args = vec!["rm", "-f", "-v"];
    args.extend(ids.iter().map(String::as_str));
    let _ = docker(&args);
}

// ---------------------------------------------------------------------------
// Reading CLI JSON

/// `hostname → status` ("ready", "down", …) from `node ls --format json`.
pub fn node_statuses(nodes: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for n in nodes.as_array().into_iter().flatten() {
        if let (Some(h), Some(s)) = (n["hostname"].as_str(), n["status"].as_str()) {
            m.insert(h.to_string(), s.to_string());
        }
    }
    m
}

/// The task's observed state (`status.state`), e.g. "running".
pub fn task_state(task: &Value) -> &str {
    task.pointer("/status/state").and_then(Value::as_str).unwrap_or("")
}

/// Tasks from `service ps --format json` that are running and meant to be.
pub fn running_tasks(tasks: &Value) -> Vec<Value> {
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| task_state(t) == "running" && t["desired_state"].as_str() == Some("running"))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Spawning daemons

/// Daemons are spawned from one thread that lives as long as the test
/// process, with a parent-death signal: if the test process dies without
/// running `Drop` (abort, SIGKILL), its nodes die with it. (The signal fires
/// when the *thread* that forked exits, hence the dedicated thread.)
fn spawn_daemon(mut cmd: Command) -> std::io::Result<Child> {
    type Req = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        thread::Builder::new()
            .name("shoal-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before prctl: then nobody will signal us.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("parent gone"));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx.recv().map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// Claims a subnet `127.0.S.0/24` for one cluster: a lock file held for the
/// cluster's life (other test processes skip it) and free ports on every node
/// address (leftovers from a crashed run are skipped too). Subnets 1–199 are
/// handed out; `deploy/cluster.sh` uses 127.0.0, the bench 127.0.250.
fn claim_subnet(fixed: Option<u8>, nodes: usize) -> (u8, File) {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let dir = std::env::temp_dir().join("shoal-test-subnets");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let open = |s: u8| {
        let p = dir.join(format!("127.0.{s}.lock"));
        File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
    };
    if let Some(s) = fixed {
        let f = open(s);
        f.lock().unwrap_or_else(|e| panic!("lock subnet 127.0.{s}: {e}"));
        if let Err(e) = ports_free(s, nodes) {
            panic!("subnet 127.0.{s} was asked for, but {e}");
        }
        return (s, f);
    }
    for _ in 0..199 {
        let s = NEXT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| Some(if s >= 199 { 1 } else { s + 1 }));
        let s = s.unwrap_or(1);
        let f = open(s);
        if f.try_lock().is_ok() && ports_free(s, nodes).is_ok() {
            return (s, f);
        }
    }
    panic!("no free subnet 127.0.1-199.x for a test cluster");
}

fn ports_free(subnet: u8, nodes: usize) -> Result<(), String> {
    for i in 1..=nodes {
        let ip = node_ip(subnet, i);
        for port in [CLUSTER_PORT, API_PORT] {
            let a = SocketAddrV4::new(ip, port);
            TcpListener::bind(a).map_err(|e| format!("tcp {a} is taken: {e}"))?;
        }
        let a = SocketAddrV4::new(ip, CLUSTER_PORT);
        UdpSocket::bind(a).map_err(|e| format!("udp {a} is taken: {e}"))?;
    }
    Ok(())
}

fn node_ip(subnet: u8, i: usize) -> Ipv4Addr {
    let last = u8::try_from(10 + i).expect("at most 245 nodes per cluster");
    Ipv4Addr::new(127, 0, subnet, last)
}

// ---------------------------------------------------------------------------
// Cluster

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Manager,
    Worker,
}

/// The shape of a test cluster: node1 bootstraps it, nodes 2..=managers join
/// as managers, the rest as workers.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub managers: usize,
    pub workers: usize,
    /// Use `127.0.S.x`; `None` claims a free one.
    pub subnet: Option<u8>,
    /// Extra flags for every `shoal daemon`.
    pub daemon_args: Vec<String>,
    /// Extra environment for every `shoal daemon`.
    pub env: Vec<(String, String)>,
}

impl ClusterSpec {
    pub fn new(managers: usize, workers: usize) -> Self {
        assert!(managers >= 1, "a cluster needs a manager");
        ClusterSpec { managers, workers, subnet: None, daemon_args: Vec::new(), env: Vec::new() }
    }
}

struct Node {
    role: Role,
    addr: Ipv4Addr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    id: Option<String>,
}

/// A running test cluster. See the crate docs.
pub struct Cluster {
    bin: PathBuf,
    spec: ClusterSpec,
    subnet: u8,
    nodes: Vec<Node>,
    api_node: usize,
    // Dropped after `Drop::drop` ran: the logs outlive the processes.
    dir: Option<TempDir>,
    _subnet_lock: File,
}

impl Cluster {
    /// `n` nodes: node1 a manager, the others workers; Ready when this returns.
    pub fn new(n: usize) -> Cluster {
        Cluster::start(ClusterSpec::new(1, n.saturating_sub(1)))
    }

    /// Starts the cluster and waits until every node is Ready.
    pub fn start(spec: ClusterSpec) -> Cluster {
        let bin = shoal_bin();
        let n = spec.managers + spec.workers;
        let (subnet, lock) = claim_subnet(spec.subnet, n);
        let dir = tempfile::Builder::new()
            .prefix(&format!("shoal-cluster-127.0.{subnet}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create a temp dir: {e}"));
        let nodes = (1..=n)
            .map(|i| Node {
                role: if i <= spec.managers { Role::Manager } else { Role::Worker },
                addr: node_ip(subnet, i),
                data_dir: dir.path().join(format!("node{i}")),
                log: dir.path().join(format!("node{i}.log")),
                child: None,
                id: None,
            })
            .collect();
        // Built before anything starts, so that a panic below still goes
        // through Drop: nodes stopped, logs printed.
        let mut c = Cluster { bin, spec, subnet, nodes, api_node: 1, dir: Some(dir), _subnet_lock: lock };
        c.boot();
        c
    }

    /// Starts one more node that joins as a worker; returns its number once
    /// every node is Ready.
    pub fn add_worker(&mut self) -> usize {
        let i = self.len() + 1;
        let dir = self.dir().to_path_buf();
        self.nodes.push(Node {
            role: Role::Worker,
            addr: node_ip(self.subnet, i),
            data_dir: dir.join(format!("node{i}")),
            log: dir.join(format!("node{i}.log")),
            child: None,
            id: None,
        });
        let token = self.shoal_ok(&["join-token", "worker", "-q"]).trim().to_string();
        let join = SocketAddrV4::new(self.addr(1), CLUSTER_PORT).to_string();
        self.spawn_node(i, &["--join", &join, "--token", &token]);
        let all: Vec<usize> = (1..=i).collect();
        self.wait_nodes_ready(&all, READY_DEADLINE);
        self.refresh_ids();
        i
    }

    fn boot(&mut self) {
        let n = self.len();
        self.spawn_node(1, &["--init"]);
        let worker_token = wait_for(API_DEADLINE, "node1's API to answer `join-token worker -q`", || {
            self.check_alive(1);
            let out = self.shoal(&["join-token", "worker", "-q"]);
            match out.stdout.trim() {
                t if out.success() && !t.is_empty() => Ok(t.to_string()),
                _ => Err(out),
            }
        });
        let manager_token = if self.spec.managers > 1 {
            let out = self.shoal(&["join-token", "manager", "-q"]).ok();
            out.stdout.trim().to_string()
        } else {
            String::new()
        };
        let join = SocketAddrV4::new(self.addr(1), CLUSTER_PORT).to_string();
        for i in 2..=n {
            let token = match self.node(i).role {
                Role::Manager => &manager_token,
                Role::Worker => &worker_token,
            };
            self.spawn_node(i, &["--join", &join, "--token", token]);
        }
        let all: Vec<usize> = (1..=n).collect();
        self.wait_nodes_ready(&all, READY_DEADLINE);
        self.refresh_ids();
        for i in 1..=n {
            if self.node(i).id.is_none() {
                panic!("node ls does not list node{i}");
            }
        }
    }

    fn node(&self, i: usize) -> &Node {
        assert!(i >= 1 && i <= self.nodes.len(), "no node{i} in a {}-node cluster", self.nodes.len());
        &self.nodes[i - 1]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        assert!(i >= 1 && i <= self.nodes.len(), "no node{i} in a {}-node cluster", self.nodes.len());
        &mut self.nodes[i - 1]
    }

    /// `shoal daemon` for node i with the flags every start has, plus `extra`.
    fn spawn_node(&mut self, i: usize, extra: &[&str]) {
        let node = self.node(i);
        assert!(node.child.is_none(), "node{i} is already running");
        fs::create_dir_all(&node.data_dir).unwrap_or_else(|e| panic!("create {}: {e}", node.data_dir.display()));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", node.log.display()));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("daemon")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--advertise-addr", &node.addr.to_string()])
            .args(["--api-addr", &SocketAddrV4::new(node.addr, API_PORT).to_string()])
            .args(["--hostname", &format!("node{i}")])
            .args(extra)
            .args(&self.spec.daemon_args)
            .env_remove("SHOAL_HOST")
            .env("RUST_BACKTRACE", "1")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let _ = writeln!(log, "=== harness: starting node{i}: {}", describe(&cmd));
        let err = log.try_clone().unwrap_or_else(|e| panic!("dup log: {e}"));
        cmd.stdout(log).stderr(err);
        let child = spawn_daemon(cmd).unwrap_or_else(|e| panic!("cannot start node{i} ({}): {e}", self.bin.display()));
        self.node_mut(i).child = Some(child);
    }

    /// Panics if node i was started and has exited since.
    #[track_caller]
    fn check_alive(&self, i: usize) {
        let node = self.node(i);
        // try_wait needs &mut; a Child's pid stays valid (a zombie) until
        // waited for, so signal 0 tells whether it still runs.
        if let Some(child) = &node.child {
            let pid = Pid::from_raw(child.id() as i32);
            let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
                .unwrap_or(true);
            if zombie || kill(pid, None).is_err() {
                panic!("node{i} exited unexpectedly (log: {})", node.log.display());
            }
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The `S` of this cluster's `127.0.S.x` addresses.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// Node i's advertise address, `127.0.S.(10+i)`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.node(i).addr
    }

    /// Node i's API, `127.0.S.(10+i):4243`.
    pub fn api_addr(&self, i: usize) -> String {
        SocketAddrV4::new(self.addr(i), API_PORT).to_string()
    }

    pub fn hostname(&self, i: usize) -> String {
        let _ = self.node(i);
        format!("node{i}")
    }

    pub fn role(&self, i: usize) -> Role {
        self.node(i).role
    }

    /// Node i's id as `node ls` reported it at start.
    pub fn node_id(&self, i: usize) -> String {
        self.node(i).id.clone().unwrap_or_else(|| panic!("node{i}'s id is not known"))
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.node(i).data_dir.clone()
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node(i).log.clone()
    }

    /// The temp dir holding every node's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(TempDir::path).expect("temp dir")
    }

    /// Node i's process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i).child.as_ref().map(Child::id)
    }

    /// Whether node i's process (started by this harness) is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.node_mut(i).child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Makes `shoal`/`shoal_json`/… talk to node i's API (default node1).
    pub fn set_api_node(&mut self, i: usize) {
        let _ = self.node(i);
        self.api_node = i;
    }

    /// Runs `shoal -H <api node> args…` (60 s limit, then it panics).
    #[track_caller]
    pub fn shoal(&self, args: &[&str]) -> Output {
        self.shoal_on(self.api_node, args)
    }

    /// Runs `shoal -H <node i's API> args…`.
    #[track_caller]
    pub fn shoal_on(&self, i: usize, args: &[&str]) -> Output {
        self.shoal_timeout(i, CLI_TIMEOUT, args)
    }

    #[track_caller]
    pub fn shoal_timeout(&self, i: usize, timeout: Duration, args: &[&str]) -> Output {
        let mut cmd = self.cli_command(i, args);
        run_with_timeout(&mut cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the CLI and returns its stdout; panics with its output if it fails.
    #[track_caller]
    pub fn shoal_ok(&self, args: &[&str]) -> String {
        self.shoal(args).ok().stdout
    }

    /// Runs a CLI command that must fail with `needle` in its stderr.
    #[track_caller]
    pub fn shoal_fails(&self, args: &[&str], needle: &str) {
        let out = self.shoal(args);
        assert!(!out.success(), "should fail: {out}");
        assert!(out.stderr.contains(needle), "expected {needle:?}: {out}");
    }

    /// Runs the CLI (add `--format json` yourself) and parses its stdout.
    #[track_caller]
    pub fn shoal_json(&self, args: &[&str]) -> Value {
        let out = self.shoal(args).ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Starts the CLI without waiting (e.g. `service logs -f`); stdout and
    /// stderr are piped. The caller kills and waits for it.
    pub fn shoal_spawn(&self, args: &[&str]) -> Child {
        self.cli_command(self.api_node, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    fn cli_command(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-H").arg(self.api_addr(i)).args(args).env_remove("SHOAL_HOST");
        cmd
    }

    /// `node ls --format json` as `hostname → status`.
    pub fn node_statuses(&self) -> Result<BTreeMap<String, String>, Output> {
        let out = self.shoal(&["node", "ls", "--format", "json"]);
        if !out.success() {
            return Err(out);
        }
        match serde_json::from_str(&out.stdout) {
            Ok(v) => Ok(node_statuses(&v)),
            Err(_) => Err(out),
        }
    }

    /// Waits until `node ls` shows each of `nodes` Ready; panics at once if
    /// one of their processes exits.
    #[track_caller]
    pub fn wait_nodes_ready(&self, nodes: &[usize], deadline: Duration) {
        let what = format!("nodes {nodes:?} to be Ready");
        wait_for(deadline, &what, || {
            for &i in nodes {
                self.check_alive(i);
            }
            let st = self.node_statuses().map_err(|o| o.to_string())?;
            if nodes.iter().all(|i| st.get(&format!("node{i}")).map(String::as_str) == Some("ready")) {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        })
    }

    /// Waits until `node ls` shows node i with this status ("ready", "down").
    #[track_caller]
    pub fn wait_node_status(&self, i: usize, status: &str, deadline: Duration) {
        let host = self.hostname(i);
        wait_for(deadline, &format!("{host} to be {status}"), || {
            let st = self.node_statuses().map_err(|o| o.to_string())?;
            if st.get(&host).map(String::as_str) == Some(status) {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        })
    }

    /// `service ps SVC --format json`.
    #[track_caller]
    pub fn service_tasks(&self, svc: &str) -> Value {
        self.shoal_json(&["service", "ps", svc, "--format", "json"])
    }

    /// Waits until exactly `n` tasks of `svc` are running (and meant to be);
    /// returns them.
    #[track_caller]
    pub fn wait_running(&self, svc: &str, n: usize, deadline: Duration) -> Vec<Value> {
        wait_for(deadline, &format!("{n} running tasks of {svc}"), || {
            let out = self.shoal(&["service", "ps", svc, "--format", "json"]);
            let tasks: Value = serde_json::from_str(&out.stdout).map_err(|_| out.to_string())?;
            let running = running_tasks(&tasks);
            if running.len() == n {
                Ok(running)
            } else {
                let states: Vec<String> = tasks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| format!("{}:{}->{}", t["slot"], task_state(t), t["desired_state"].as_str().unwrap_or("")))
                    .collect();
                Err(format!("{} running; tasks {}", running.len(), states.join(" ")))
            }
        })
    }

    /// Containers node i runs (label `shoal.node.id`).
    pub fn node_containers(&self, i: usize) -> Vec<ContainerRow> {
        containers_with_label("shoal.node.id", &self.node_id(i))
    }

    /// Stops node i with SIGTERM; SIGKILL if it has not exited within
    /// [`STOP_DEADLINE`]. Returns its exit status.
    pub fn stop_node(&mut self, i: usize) -> ExitStatus {
        let child = self.node_mut(i).child.take().unwrap_or_else(|| panic!("node{i} is not running"));
        let (status, killed) = stop_child(child, STOP_DEADLINE);
        if killed {
            eprintln!("harness: node{i} ignored SIGTERM for {STOP_DEADLINE:?}; killed it");
        }
        status
    }

    /// Kills node i with SIGKILL (a crash).
    pub fn kill_node(&mut self, i: usize) -> ExitStatus {
        let mut child = self.node_mut(i).child.take().unwrap_or_else(|| panic!("node{i} is not running"));
        let _ = child.kill();
        child.wait().unwrap_or_else(|e| panic!("wait for node{i}: {e}"))
    }

    /// Starts node i again from its data dir (stopping it first if it runs),
    /// with the same flags minus `--init`/`--join`. Does not wait for it: see
    /// [`Cluster::wait_nodes_ready`].
    pub fn restart_node(&mut self, i: usize) {
        if self.node(i).child.is_some() {
            self.stop_node(i);
        }
        self.spawn_node(i, &[]);
    }

    /// [`Cluster::restart_node`] with extra flags for this start only
    /// (e.g. `--force-new-cluster`).
    pub fn restart_node_with(&mut self, i: usize, extra: &[&str]) {
        if self.node(i).child.is_some() {
            self.stop_node(i);
        }
        self.spawn_node(i, extra);
    }

    /// The node whose manager status is `Leader`, as node `via` sees it.
    pub fn leader_seen_from(&self, via: usize) -> Result<usize, String> {
        let out = self.shoal_timeout(via, Duration::from_secs(10), &["node", "ls", "--format", "json"]);
        let v: Value = serde_json::from_str(&out.stdout).map_err(|_| format!("node{via}: {}", out.stderr.trim()))?;
        v.as_array()
            .into_iter()
            .flatten()
            .find(|n| n["manager_status"] == "Leader")
            .and_then(|n| n["hostname"].as_str()?.strip_prefix("node")?.parse().ok())
            .ok_or_else(|| "no leader yet".to_string())
    }

    /// Reads every node's id from `node ls`; keeps what it already knew when
    /// the API does not answer.
    pub fn refresh_ids(&mut self) {
        let out = self.shoal_timeout(self.api_node, Duration::from_secs(10), &["node", "ls", "--format", "json"]);
        let Ok(v) = serde_json::from_str::<Value>(&out.stdout) else {
            return;
        };
        for n in v.as_array().into_iter().flatten() {
            let (Some(h), Some(id)) = (n["hostname"].as_str(), n["id"].as_str()) else {
                continue;
            };
            if let Some(i) = h.strip_prefix("node").and_then(|s| s.parse::<usize>().ok()) {
                if i >= 1 && i <= self.nodes.len() {
                    self.nodes[i - 1].id = Some(id.to_string());
                }
            }
        }
    }

    /// Prints the tail of every node's log to stderr (the test's output).
    pub fn print_logs(&self) {
        let lines: usize = std::env::var("SHOAL_TEST_LOG_LINES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
        for (k, node) in self.nodes.iter().enumerate() {
            let text = fs::read_to_string(&node.log).unwrap_or_else(|e| format!("(no log: {e})\n"));
            let all: Vec<&str> = text.lines().collect();
            let from = if lines == 0 { 0 } else { all.len().saturating_sub(lines) };
            eprintln!(
                "======== node{} log ({}, last {} of {} lines) ========",
                k + 1,
                node.log.display(),
                all.len() - from,
                all.len()
            );
            for l in &all[from..] {
                eprintln!("{l}");
            }
        }
        eprintln!("======== end of node logs ========");
    }
}

/// SIGTERM, wait up to `deadline`, then SIGKILL. Returns the status and
/// whether it had to kill.
fn stop_child(mut child: Child, deadline: Duration) -> (ExitStatus, bool) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (st, false),
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
            _ => break,
        }
    }
    let _ = child.kill();
    (child.wait().unwrap_or_else(|_| failed_status()), true)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nothing here may panic: this often runs while a test is unwinding.
        let failing = thread::panicking();
        if self.nodes.iter().any(|n| n.id.is_none() && n.child.is_some()) {
            let mut cmd = self.cli_command(self.api_node, &["node", "ls", "--format", "json"]);
            if let Ok(out) = run_with_timeout(&mut cmd, Duration::from_secs(5)) {
                if let Ok(v) = serde_json::from_str::<Value>(&out.stdout) {
                    for n in v.as_array().into_iter().flatten() {
                        let (Some(h), Some(id)) = (n["hostname"].as_str(), n["id"].as_str()) else {
                            continue;
                        };
                        if let Some(i) = h.strip_prefix("node").and_then(|s| s.parse::<usize>().ok()) {
                            if i >= 1 && i <= self.nodes.len() && self.nodes[i - 1].id.is_none() {
                                self.nodes[i - 1].id = Some(id.to_string());
                            }
                        }
                    }
                }
            }
        }
        // Stop all nodes at once: SIGTERM to each, then wait on each.
        let children: Vec<(usize, Child)> =
            self.nodes.iter_mut().enumerate().filter_map(|(k, n)| n.child.take().map(|c| (k + 1, c))).collect();
        let end = Instant::now() + STOP_DEADLINE;
        for (_, c) in &children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        for (i, c) in children {
            let (_, killed) = stop_child(c, end.saturating_duration_since(Instant::now()));
            if killed {
                eprintln!("harness: node{i} did not stop within {STOP_DEADLINE:?} of SIGTERM; killed it");
            }
        }
        // Remove the containers of this cluster's nodes only: other tests
        // share the Docker engine.
        for node in &self.nodes {
            let Some(id) = &node.id else { continue };
            let out = docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("label=shoal.node.id={id}")]);
            let ids: Vec<String> = out.stdout.split_whitespace().map(String::from).collect();
            docker_rm_force(&ids);
            // A node killed with SIGKILL could not remove its routing-mesh
            // table (`ip shoal_<first 12 of its id>`); nothing else may.
            if id.len() >= 12 {
                let _ = Command::new("nft")
                    .args(["delete", "table", "ip", &format!("shoal_{}", &id[..12])])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if failing {
            self.print_logs();
            if std::env::var_os("SHOAL_TEST_KEEP").is_some() {
                if let Some(dir) = self.dir.take() {
                    eprintln!("harness: kept {}", dir.keep().display());
                }
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn wait_for_returns_the_first_value() {
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n * 10)
        });
        assert_eq!(v, 30);
    }

    #[test]
    fn wait_for_times_out_with_what_and_the_last_observation() {
        let start = Instant::now();
        let mut n = 0;
        let err = catch_unwind(AssertUnwindSafe(|| {
            wait_for(Duration::from_millis(350), "the moon", || -> Result<(), String> {
                n += 1;
                Err(format!("saw {n}"))
            })
        }))
        .unwrap_err();
        let elapsed = start.elapsed();
        let msg = panic_text(err);
        assert!(msg.contains("waiting for the moon"), "{msg}");
        assert!(msg.contains(&format!("last observed: saw {n}")), "{msg}");
        assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
        // ~every 100 ms: neither a busy loop nor one try.
        assert!((3..=6).contains(&n), "{n} attempts");
    }

    #[test]
    fn wait_for_with_option_says_it_saw_none() {
        let err = catch_unwind(|| wait_for(Duration::from_millis(10), "nothing", || None::<()>)).unwrap_err();
        let msg = panic_text(err);
        assert!(msg.contains("waiting for nothing"), "{msg}");
        assert!(msg.contains("returned None"), "{msg}");
    }

    #[test]
    fn inspect_output_becomes_rows_with_labels() {
        let json = r#"[{"Id":"abc123","Name":"/web.1.xyz","State":{"Status":"running","Running":true},
            "Config":{"Image":"shoal/busybox:latest","Labels":{"shoal.node.id":"n1","shoal.task.slot":"1",
            "org.shoal-test.busybox-sha256":"ff"}}},
            {"Id":"def","Name":"/x","State":{"Status":"exited"},"Config":{"Image":"i","Labels":null}}]"#;
        let rows = parse_inspect(json).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "abc123");
        assert_eq!(rows[0].name, "web.1.xyz");
        assert_eq!(rows[0].state, "running");
        assert_eq!(rows[0].image, "shoal/busybox:latest");
        assert_eq!(rows[0].label("shoal.node.id"), Some("n1"));
        assert_eq!(rows[0].label("shoal.task.slot"), Some("1"));
        assert_eq!(rows[1].state, "exited");
        assert!(rows[1].labels.is_empty());
        assert_eq!(parse_inspect("").unwrap(), vec![]);
        assert!(parse_inspect("{").is_err());
    }

    #[test]
    fn node_ls_json_gives_statuses_by_hostname() {
        let v: Value = serde_json::from_str(
            r#"[{"id":"a","hostname":"node1","role":"manager","availability":"active","status":"ready",
                 "manager_status":"Leader","is_self":true,"labels":{"status":"x"}},
                {"id":"b","hostname":"node2","role":"worker","availability":"active","status":"down",
                 "manager_status":"","is_self":false}]"#,
        )
        .unwrap();
        let st = node_statuses(&v);
        assert_eq!(st.get("node1").map(String::as_str), Some("ready"));
        assert_eq!(st.get("node2").map(String::as_str), Some("down"));
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn only_tasks_running_and_meant_to_be_count() {
        let v: Value = serde_json::from_str(
            r#"[{"slot":1,"desired_state":"running","status":{"state":"running"}},
                {"slot":2,"desired_state":"running","status":{"state":"starting"}},
                {"slot":1,"desired_state":"shutdown","status":{"state":"running"}}]"#,
        )
        .unwrap();
        let r = running_tasks(&v);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["slot"], 1);
    }

    #[test]
    fn a_slow_command_is_killed_at_its_limit() {
        let start = Instant::now();
        let err = run_with_timeout(Command::new("sleep").arg("10"), Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!((out.stdout.as_str(), out.stderr.as_str(), out.status.code()), ("out\n", "err\n", Some(3)));
    }

    #[test]
    fn parallel_clusters_get_different_subnets() {
        let (a, _la) = claim_subnet(None, 3);
        let (b, _lb) = claim_subnet(None, 3);
        assert_ne!(a, b);
        assert!((1..=199).contains(&a) && (1..=199).contains(&b));
    }

    #[test]
    fn a_spawned_daemon_runs_and_stops_on_sigterm() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = spawn_daemon(cmd).unwrap();
        let (status, killed) = stop_child(child, Duration::from_secs(5));
        assert!(!killed);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }
}
