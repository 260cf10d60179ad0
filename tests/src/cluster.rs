//! A cluster of real `shoal daemon` processes on `127.0.S.x`: start, join, drive with the CLI, stop, clean up.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::docker::{containers_with_label, docker, docker_rm_force, ContainerRow};
use crate::env::{
    busybox_image, shoal_bin, API_DEADLINE, API_PORT, CLI_TIMEOUT, CLUSTER_PORT, READY_DEADLINE, STOP_DEADLINE,
};
use crate::json::{node_statuses, running_tasks, task_state};
use crate::process::{describe, run_with_timeout, spawn_daemon, stop_child, Output};
use crate::wait::wait_for;

/// Claims a subnet `127.0.S.0/24` for one cluster: a lock file held for the
/// cluster's life (other test processes skip it) and free ports on every node
/// address (leftovers from a crashed run are skipped too). Subnets 1–199 are
/// handed out; `deploy/cluster.sh` uses 127.0.0, the bench 127.0.250.
pub fn claim_subnet(fixed: Option<u8>, nodes: usize) -> (u8, File) {
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

pub(crate) fn ports_free(subnet: u8, nodes: usize) -> Result<(), String> {
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

pub(crate) fn node_ip(subnet: u8, i: usize) -> Ipv4Addr {
    let last = u8::try_from(10 + i).expect("at most 245 nodes per cluster");
    Ipv4Addr::new(127, 0, subnet, last)
}

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
    /// Extra flags for node1's first start only (with `--init`).
    pub init_args: Vec<String>,
    /// Extra environment for every `shoal daemon`.
    pub env: Vec<(String, String)>,
    /// Node i's `--data-dir`, instead of `nodeI` in the cluster's temp dir
    /// (say, on a small tmpfs the test fills).
    pub data_dirs: BTreeMap<usize, PathBuf>,
}

impl ClusterSpec {
    pub fn new(managers: usize, workers: usize) -> Self {
        assert!(managers >= 1, "a cluster needs a manager");
        ClusterSpec {
            managers,
            workers,
            subnet: None,
            daemon_args: Vec::new(),
            init_args: Vec::new(),
            env: Vec::new(),
            data_dirs: BTreeMap::new(),
        }
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
                data_dir: spec.data_dirs.get(&i).cloned().unwrap_or_else(|| dir.path().join(format!("node{i}"))),
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
        let mut init = vec!["--init".to_string()];
        init.extend(self.spec.init_args.iter().cloned());
        let init: Vec<&str> = init.iter().map(String::as_str).collect();
        self.spawn_node(1, &init);
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

    /// Runs `shoal -H <api node> args…` with `env` set (e.g. `DOCKER_CONFIG`).
    #[track_caller]
    pub fn shoal_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = self.cli_command(self.api_node, args);
        cmd.envs(env.iter().copied());
        run_with_timeout(&mut cmd, CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
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

    /// `service create --name NAME FLAGS… <test image> COMMAND…`; returns
    /// its stdout.
    #[track_caller]
    pub fn create_service(&self, name: &str, flags: &[&str], command: &[&str]) -> String {
        let mut args = vec!["service", "create", "--name", name];
        args.extend_from_slice(flags);
        args.push(busybox_image());
        args.extend_from_slice(command);
        self.shoal_ok(&args)
    }

    /// The cluster is unharmed: `nodes` are Ready and a new service `after`
    /// of two tasks converges.
    #[track_caller]
    pub fn assert_unharmed(&self, nodes: &[usize], deadline: Duration) {
        self.wait_nodes_ready(nodes, deadline);
        self.create_service("after", &["--replicas", "2"], &["sleep", "100000"]);
        self.wait_running("after", 2, deadline);
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
        // A node the API did not name (its API is TLS-only, or it never
        // answered) still wrote its id to its data directory when it joined.
        for n in self.nodes.iter_mut().filter(|n| n.id.is_none()) {
            let state = std::fs::read(n.data_dir.join("node.json")).ok();
            let v = state.and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if let Some(id) = v.as_ref().and_then(|v| v["node_id"].as_str()) {
                n.id = Some(id.to_string());
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
            // Its Docker networks (worker::net): the nodes of this harness
            // share one engine and a node removes its networks only while it
            // runs; a stale one would collide (by bridge name) with the next
            // cluster's network of the same VNI.
            let nets = docker(&["network", "ls", "-q", "--filter", &format!("label=shoal.node.id={id}")]);
            for net in nets.stdout.split_whitespace() {
                let _ = docker(&["network", "rm", net]);
            }
            // The tmpfs directory a node writes its tasks' secrets and
            // configs to (worker::runtime::files).
            if !id.is_empty() && !id.contains('/') {
                let _ = std::fs::remove_dir_all(Path::new("/dev/shm/shoal").join(id));
            }
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
mod tests {
    use super::*;

    #[test]
    fn parallel_clusters_get_different_subnets() {
        let (a, _la) = claim_subnet(None, 3);
        let (b, _lb) = claim_subnet(None, 3);
        assert_ne!(a, b);
        assert!((1..=199).contains(&a) && (1..=199).contains(&b));
    }
}
