//! `shoal sim`: a whole cluster in one process, to size one before building
//! it. Real managers (raft on disk with fsync, the store, orchestrator,
//! scheduler, dispatcher, the API) and simulated worker nodes that join
//! with the real join protocol, hold real sessions over the cluster port
//! (mutual TLS) and run the real TaskSupervisor — over the in-memory fake
//! runtime: a container is a record, its start takes `--start-ms`. Every
//! node has its own loopback address. A manager is
//! [`crate::daemon::run_with`] on a thread of its own; the worker nodes
//! share `--node-threads` threads, each an actix system that runs many
//! nodes ([`crate::daemon::Prepared::run`]), each node in a `LocalSet` of
//! its own, so that a node stopped (`--kill`) takes every task it spawned
//! with it; they serve no HTTP API. Liveness comes from an in-process board standing in
//! for gossip (`worker::node::membership::Board`: real chitchat among a
//! hundred in-process members already flaps on 2 cores); `--gossip` runs
//! real chitchat instead.
//!
//! It creates the services through the API, prints progress once a second
//! from the first manager's `/metrics` (the store's task counts), then a
//! table of figures, and last `placed T tasks on N nodes: all running in S s`.
//! With `--kill N` it then stops N worker nodes and prints how long until
//! their tasks were replaced and running elsewhere.
//!
//! Layout: the pure parts (addresses, the replica split, the metrics text,
//! the table) are functions with tests; [`run`] starts and watches threads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use common::spec::{ServiceSpec, TaskTemplate};
use tokio::sync::watch;
use worker::node::membership::Board;
use worker::runtime::fake::FakeRuntime;

use crate::daemon::{prepare, run_with, DaemonArgs, Launch, Outcome, Prepared, DEFAULT_PORT};

/// The image every simulated task runs (present on every fake engine).
pub const IMAGE: &str = "shoal/sim:1";

/// At most this many nodes join at once (each join is a TLS handshake and
/// a certificate signed by the leader).
const JOIN_WAVE: usize = 64;

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Simulated worker nodes.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Managers (raft members; the first bootstraps the cluster).
    #[arg(long, default_value_t = 3)]
    pub managers: usize,
    /// Services to create.
    #[arg(long, default_value_t = 10)]
    pub services: usize,
    /// Tasks in all, split evenly over the services.
    #[arg(long, default_value_t = 1000)]
    pub tasks: u64,
    /// How long starting a container takes on the fake runtime.
    #[arg(long, default_value_t = 0)]
    pub start_ms: u64,
    /// Where the nodes keep their data (one directory per node); kept
    /// afterwards. Default: a temporary directory, removed at the end.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Give up (non-zero exit) when not all tasks run by then (`10m`, `90s`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The first node's address; the others follow (127.A.B.1–250, then
    /// the next B). The tests' clusters use 127.0.x.
    #[arg(long, default_value = "127.1.0.1")]
    pub first_addr: Ipv4Addr,
    /// Real chitchat gossip among all nodes instead of the in-process
    /// liveness board (it does not fit past ~50 nodes on 2 cores: members
    /// flap down under the load).
    #[arg(long)]
    pub gossip: bool,
    /// After the last line, keep the cluster running until SIGINT/SIGTERM
    /// (to look at it with the CLI or the web view).
    #[arg(long)]
    pub hold: bool,
    /// Threads the worker nodes share (the managers have their own).
    #[arg(long, default_value_t = 2)]
    pub node_threads: usize,
    /// Once all tasks run, stop this many worker nodes and measure how
    /// long until their tasks are replaced and running on the others.
    #[arg(long, default_value_t = 0)]
    pub kill: usize,
}

/// The address of node `i` (managers first): 250 per /24, skipping .0 and
/// .251–.255, starting at `first`.
pub fn node_addr(first: Ipv4Addr, i: usize) -> Result<Ipv4Addr> {
    let [a, b, c, d] = first.octets();
    if a != 127 || d == 0 || d > 250 {
        bail!("--first-addr must be a loopback address 127.x.y.z with z in 1–250 (got {first})");
    }
    let n = (d as usize - 1) + i;
    let third = c as usize + n / 250;
    let second = b as usize + third / 256;
    if second > 255 {
        bail!("{i} nodes do not fit in 127.0.0.0/8 after {first}");
    }
    Ok(Ipv4Addr::new(127, second as u8, (third % 256) as u8, (n % 250 + 1) as u8))
}

/// `tasks` split over `services`: as even as it goes, the first ones one more.
pub fn replicas(tasks: u64, services: usize) -> Vec<u64> {
    let s = services as u64;
    (0..s).map(|i| tasks / s + u64::from(i < tasks % s)).collect()
}

/// One sample (no labels, or exactly these) from OpenMetrics text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

/// The store's task counts as the sim follows them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Tasks in the store (created by the orchestrator, committed).
    pub committed: u64,
    /// Tasks given a node by the scheduler (assigned or further on).
    pub placed: u64,
    /// Tasks their node reported running.
    pub running: u64,
    /// Tasks that ended (failed, rejected, …): none should.
    pub failed: u64,
    /// Raft commit index.
    pub commit_index: u64,
    /// Nodes alive in the first manager's gossip.
    pub gossip_live: u64,
}

pub fn counts(text: &str) -> Counts {
    let state = |s: &str| sample(text, &format!("shoal_tasks{{state=\"{s}\"}}")).unwrap_or(0.0) as u64;
    let placed_states = ["assigned", "accepted", "preparing", "ready", "starting", "running"];
    let all = placed_states.iter().chain(&["new", "pending"]).map(|s| state(s)).sum::<u64>();
    let ended = ["complete", "shutdown", "failed", "rejected", "orphaned"].iter().map(|s| state(s)).sum::<u64>();
    Counts {
        committed: all + ended,
        placed: placed_states.iter().map(|s| state(s)).sum(),
        running: state("running"),
        failed: ended,
        commit_index: sample(text, "shoal_raft_commit_index").unwrap_or(0.0) as u64,
        gossip_live: sample(text, "shoal_gossip_live_members").unwrap_or(0.0) as u64,
    }
}

/// A progress line: counts and what they gained per second since the last.
pub fn progress_line(elapsed: Duration, now: Counts, before: Counts, dt: Duration) -> String {
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt.as_secs_f64().max(1e-3);
    format!(
        "{:>7.1}s  committed {:>8} ({:>8.0}/s)  placed {:>8} ({:>8.0}/s)  running {:>8} ({:>8.0}/s)  raft entries {:>6.0}/s",
        elapsed.as_secs_f64(),
        now.committed,
        rate(now.committed, before.committed),
        now.placed,
        rate(now.placed, before.placed),
        now.running,
        rate(now.running, before.running),
        rate(now.commit_index, before.commit_index),
    )
}

/// What a run measured, for the table.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub nodes: usize,
    pub managers: usize,
    pub services: usize,
    pub tasks: u64,
    pub nodes_up: Duration,
    pub idle_rss_per_node: u64,
    pub idle_cpu_per_node: f64,
    pub threads: u64,
    pub all_placed: Duration,
    pub all_running: Duration,
    pub raft_entries: u64,
    pub raft_log_bytes: u64,
    pub snapshot_bytes: u64,
    pub rss: u64,
    pub manager_cpu: Vec<f64>,
    /// CPU of the managers' cluster-port threads, of the threads the
    /// worker nodes share, of the rest (raft arbiters, the sim).
    pub io_cpu: f64,
    pub nodes_cpu: f64,
    pub other_cpu: f64,
    pub process_cpu: f64,
    /// Tasks that ended on the way (none should).
    pub ended: u64,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

pub fn table(f: &Figures) -> String {
    let secs = f.all_running.as_secs_f64().max(1e-3);
    let rows: Vec<(&str, String)> = vec![
        ("cluster", format!("{} managers, {} nodes, {} services, {} tasks", f.managers, f.nodes, f.services, f.tasks)),
        ("all nodes joined and ready", format!("{:.1} s", f.nodes_up.as_secs_f64())),
        ("an idle node: memory, CPU", format!("{}, {:.4} cores", mib(f.idle_rss_per_node), f.idle_cpu_per_node)),
        ("threads in the process", f.threads.to_string()),
        ("first service created → all placed", format!("{:.1} s", f.all_placed.as_secs_f64())),
        ("first service created → all running", format!("{:.1} s", f.all_running.as_secs_f64())),
        ("placements/s", format!("{:.0}", f.tasks as f64 / f.all_placed.as_secs_f64().max(1e-3))),
        ("raft entries/s", format!("{:.0} ({} entries)", f.raft_entries as f64 / secs, f.raft_entries)),
        ("raft log, snapshot (first manager)", format!("{}, {}", mib(f.raft_log_bytes), mib(f.snapshot_bytes))),
        ("process RSS (all managers and nodes)", mib(f.rss)),
        (
            "manager threads' CPU (each)",
            f.manager_cpu.iter().map(|c| format!("{c:.1} s")).collect::<Vec<_>>().join(", "),
        ),
        (
            "cluster-port, node, other threads' CPU",
            format!("{:.1} s, {:.1} s, {:.1} s", f.io_cpu, f.nodes_cpu, f.other_cpu),
        ),
        ("process CPU", format!("{:.1} s ({:.2} cores)", f.process_cpu, f.process_cpu / secs)),
        ("tasks ended on the way (none should)", f.ended.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

pub fn last_line(tasks: u64, nodes: usize, all_running: Duration) -> String {
    format!("placed {tasks} tasks on {nodes} nodes: all running in {:.1} s", all_running.as_secs_f64())
}

/// The resident set of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0)
    };
    kb("VmRSS:") * 1024
}

fn threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok()).unwrap_or(0)
}

/// utime + stime of a `/proc/…/stat` line, in seconds (USER_HZ is 100 on Linux).
fn stat_cpu(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // Fields after the name start at 3 (state): utime is 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / 100.0))
}

fn process_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_cpu(&s)).map(|(_, c)| c).unwrap_or(0.0)
}

/// CPU seconds per thread name.
fn thread_cpu() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        if let Some((name, cpu)) = std::fs::read_to_string(e.path().join("stat")).ok().and_then(|s| stat_cpu(&s)) {
            *out.entry(name).or_insert(0.0) += cpu;
        }
    }
    out
}

/// The raft log's and the snapshot's bytes under a manager's data dir.
fn raft_sizes(dir: &Path) -> (u64, u64) {
    let (mut log, mut snap) = (0, 0);
    for e in std::fs::read_dir(dir.join("raft")).into_iter().flatten().flatten() {
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        match e.file_name().to_str() {
            Some(n) if n.starts_with("snapshot") => snap += len,
            _ => log += len,
        }
    }
    (log, snap)
}

struct SimNode {
    name: String,
    /// Its containers.
    runtime: Arc<FakeRuntime>,
    /// Sending true stops it.
    stop: watch::Sender<bool>,
    /// How its run ended, once it did (a dropped sender: it panicked).
    done: std_mpsc::Receiver<Result<Outcome>>,
    ended: Option<Result<Outcome, String>>,
}

impl SimNode {
    fn finished(&mut self) -> bool {
        if self.ended.is_none() {
            self.ended = match self.done.try_recv() {
                Ok(r) => Some(r.map_err(|e| format!("{e:#}"))),
                Err(std_mpsc::TryRecvError::Empty) => None,
                Err(std_mpsc::TryRecvError::Disconnected) => Some(Err("panicked".to_string())),
            };
        }
        self.ended.is_some()
    }
}

/// The threads the worker nodes share: each runs an actix system, and on
/// it each node it is handed runs in a `LocalSet` of its own, dropped (with
/// every task and actor the node started) once the node's run ends.
struct Hosts {
    queues: Vec<HostQueue>,
    next: usize,
}

impl Hosts {
    fn start(threads: usize) -> Result<Hosts> {
        let mut queues = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Prepared, std_mpsc::Sender<Result<Outcome>>)>();
            std::thread::Builder::new()
                .name(format!("sim-nodes-{}", i + 1))
                .spawn(move || {
                    actix_web::rt::System::new().block_on(async move {
                        while let Some((node, done)) = rx.recv().await {
                            actix::spawn(async move {
                                let local = tokio::task::LocalSet::new();
                                let result = local.run_until(node.run()).await;
                                drop(local);
                                let _ = done.send(result);
                            });
                        }
                    })
                })
                .context("cannot start a thread for the nodes")?;
            queues.push(tx);
        }
        Ok(Hosts { queues, next: 0 })
    }

    /// The next host's queue, round robin.
    fn next_queue(&mut self) -> HostQueue {
        self.next += 1;
        self.queues[self.next % self.queues.len()].clone()
    }
}

type HostQueue = tokio::sync::mpsc::UnboundedSender<(Prepared, std_mpsc::Sender<Result<Outcome>>)>;

/// Starts one node: a manager (`hosts` none) on a thread of its own, a
/// worker on a shared host thread once it joined (the join blocks, on a
/// thread of its own). It stops when its `stop` turns true.
fn start_node(
    name: String,
    flags: Vec<String>,
    runtime: Arc<FakeRuntime>,
    liveness: Option<Board>,
    hosts: Option<&mut Hosts>,
) -> Result<SimNode> {
    let args = DaemonArgs::from_flags(&flags).map_err(|e| anyhow!("{name}: {e}"))?;
    let (stop, mut stopped) = watch::channel(false);
    let shutdown = Box::pin(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    let no_api = hosts.is_some();
    let launch =
        Launch { runtime: Some(runtime.clone()), shutdown: Some(shutdown), quiet: true, liveness, light: true, no_api };
    let (done_tx, done) = std_mpsc::channel();
    match hosts {
        None => {
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let _ = done_tx.send(run_with(args, launch));
                })
                .with_context(|| format!("cannot start a thread for {name}"))?;
        }
        Some(hosts) => {
            let host = hosts.next_queue();
            std::thread::Builder::new()
                .name(format!("{name}-join"))
                .spawn(move || {
                    // A host gone drops `done_tx` with the node: it counts as failed.
                    let _ = match prepare(args, launch) {
                        Ok(node) => host.send((node, done_tx)).map_err(drop),
                        Err(e) => done_tx.send(Err(e)).map_err(drop),
                    };
                })
                .with_context(|| format!("cannot start a thread for {name}"))?;
        }
    }
    Ok(SimNode { name, runtime, stop, done, ended: None })
}

/// A node that stopped on its own is a failure: its error, for the message.
fn check_nodes(nodes: &mut Vec<SimNode>) -> Result<()> {
    if let Some(i) = nodes.iter_mut().position(|n| n.finished()) {
        let n = nodes.swap_remove(i);
        let why = match n.ended {
            Some(Ok(outcome)) => format!("stopped ({outcome:?})"),
            Some(Err(e)) => e,
            None => unreachable!("finished"),
        };
        bail!("node {} failed: {why}", n.name);
    }
    Ok(())
}

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        Api { base: format!("http://{addr}"), agent }
    }
    fn get(&self, path: &str) -> Result<String> {
        let r = self.agent.get(&format!("{}{path}", self.base)).call().map_err(|e| anyhow!("GET {path}: {e}"))?;
        r.into_string().with_context(|| format!("GET {path}"))
    }
    fn json(&self, path: &str) -> Result<serde_json::Value> {
        serde_json::from_str(&self.get(path)?).with_context(|| format!("GET {path}: not JSON"))
    }
    fn counts(&self) -> Result<Counts> {
        Ok(counts(&self.get("/metrics")?))
    }
}

fn wait_until<T>(
    deadline: Instant,
    what: &str,
    nodes: &mut Vec<SimNode>,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let mut last = String::new();
    loop {
        check_nodes(nodes)?;
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "deadline passed while waiting for {what}{}",
                if last.is_empty() { String::new() } else { format!(" (last error: {last})") }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `shoal sim`.
pub fn run(args: SimArgs) -> Result<std::process::ExitCode> {
    if args.managers == 0 {
        bail!("--managers must be at least 1");
    }
    if args.services == 0 || args.tasks == 0 {
        bail!("--services and --tasks must be at least 1");
    }
    let deadline = Instant::now() + args.timeout;
    let (temp, root) = match &args.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = std::env::temp_dir().join(format!("shoal-sim-{}", std::process::id()));
            (Some(t.clone()), t)
        }
    };
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut nodes: Vec<SimNode> = Vec::new();
    let mut hosts = Hosts::start(args.node_threads)?;
    let result = simulate(&args, &root, deadline, &mut hosts, &mut nodes);
    if let (Ok(line), true) = (&result, args.hold) {
        // The last line, then the cluster stays up until a signal.
        println!("{line}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        hold();
    }
    // Every node stops (workers first, then the managers); a node takes
    // at most ~5 s.
    for n in nodes.iter().rev() {
        let _ = n.stop.send(true);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && nodes.iter_mut().any(|n| !n.finished()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(hosts);
    if let Some(t) = temp {
        if nodes.iter_mut().all(|n| n.finished()) {
            let _ = std::fs::remove_dir_all(&t);
        }
    }
    let line = result?;
    if !args.hold {
        println!("{line}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn hold() {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(_) => return,
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
}

fn node_flags(name: &str, ip: Ipv4Addr, dir: &Path) -> Vec<String> {
    vec![
        "--advertise-addr".into(),
        ip.to_string(),
        "--api-addr".into(),
        format!("{ip}:4243"),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--hostname".into(),
        name.into(),
        "--mesh".into(),
        "userspace".into(),
    ]
}

/// Brings the cluster up, runs the work; returns the last line.
fn simulate(
    args: &SimArgs,
    root: &Path,
    deadline: Instant,
    hosts: &mut Hosts,
    nodes: &mut Vec<SimNode>,
) -> Result<String> {
    let total = args.managers + args.nodes;
    node_addr(args.first_addr, total.saturating_sub(1))?;
    let runtime =
        || Arc::new(FakeRuntime::new().with_image(IMAGE).with_start_delay(Duration::from_millis(args.start_ms)));
    let board = (!args.gossip).then(Board::new);
    let started = Instant::now();
    let rss_before = rss();
    let first = node_addr(args.first_addr, 0)?;
    let join_addr = SocketAddr::from((first, DEFAULT_PORT)).to_string();
    let api = Api::new(SocketAddr::from((first, 4243)));

    let mut flags = node_flags("sim-m1", first, root);
    flags.push("--init".into());
    nodes.push(start_node("sim-m1".into(), flags, runtime(), board.clone(), None)?);
    let tokens = wait_until(deadline, "the first manager's API", nodes, || Ok(Some(api.json("/v1/join-tokens")?)))?;
    let token =
        |role: &str| tokens[role].as_str().map(str::to_string).ok_or_else(|| anyhow!("no {role} token in {tokens}"));
    let (manager_token, worker_token) = (token("manager")?, token("worker")?);
    let managers: Vec<String> = (1..=args.managers).map(|i| format!("sim-m{i}")).collect();
    println!(
        "shoal sim: {} managers ({}), {} nodes ({} – {}), data in {}",
        args.managers,
        (0..args.managers)
            .map(|i| node_addr(args.first_addr, i).map(|a| format!("{a}:4243")))
            .collect::<Result<Vec<_>>>()?
            .join(", "),
        args.nodes,
        node_addr(args.first_addr, args.managers)?,
        node_addr(args.first_addr, total - 1)?,
        root.display()
    );

    let ready = |want: usize| -> Result<Option<usize>> {
        let list = api.json("/v1/nodes")?;
        let n = list.as_array().map(|a| a.iter().filter(|n| n["status"] == "ready").count()).unwrap_or(0);
        Ok((n >= want).then_some(n))
    };
    // Managers one by one: a raft membership change at a time.
    for (i, name) in managers.iter().enumerate().skip(1) {
        let mut flags = node_flags(name, node_addr(args.first_addr, i)?, root);
        flags.extend(["--join".into(), join_addr.clone(), "--token".into(), manager_token.clone()]);
        nodes.push(start_node(name.clone(), flags, runtime(), board.clone(), None)?);
        wait_until(deadline, &format!("manager {name} to be ready"), nodes, || ready(i + 1))?;
    }
    // Workers in waves.
    let mut joined = args.managers;
    while joined < total {
        let wave = JOIN_WAVE.min(total - joined);
        for i in joined..joined + wave {
            let name = format!("sim-w{}", i - args.managers + 1);
            let mut flags = node_flags(&name, node_addr(args.first_addr, i)?, root);
            flags.extend(["--join".into(), join_addr.clone(), "--token".into(), worker_token.clone()]);
            nodes.push(start_node(name, flags, runtime(), board.clone(), Some(&mut *hosts))?);
        }
        joined += wave;
        let want = joined;
        wait_until(deadline, &format!("{want} nodes to be ready"), nodes, || {
            let list = api.json("/v1/nodes")?;
            let n = list.as_array().map(|a| a.len()).unwrap_or(0);
            Ok((n >= want).then_some(()))
        })?;
    }
    wait_until(deadline, &format!("all {total} nodes to be ready"), nodes, || ready(total))?;
    let nodes_up = started.elapsed();
    println!("{total} nodes ready in {:.1} s", nodes_up.as_secs_f64());

    // An idle cluster: what a node costs.
    // Two heartbeat periods: every session beats about twice.
    let (cpu0, t0) = (process_cpu(), Instant::now());
    std::thread::sleep(2 * worker::agent::HEARTBEAT);
    let idle_cpu = (process_cpu() - cpu0) / t0.elapsed().as_secs_f64();
    let idle_rss = rss();
    let figures_idle = (idle_rss.saturating_sub(rss_before) / total as u64, idle_cpu / total as f64);
    println!(
        "idle: {} RSS, {:.2} cores, {} threads ({} and {:.4} cores per node)",
        mib(idle_rss),
        idle_cpu,
        threads(),
        mib(figures_idle.0),
        figures_idle.1
    );

    let base = api.counts()?;
    let cpu_start = process_cpu();
    let mgr_cpu_start = thread_cpu();
    let work = Instant::now();
    for (i, n) in replicas(args.tasks, args.services).into_iter().enumerate() {
        let spec = ServiceSpec::new(&format!("sim-{:04}", i + 1), n, TaskTemplate::new(IMAGE));
        let body = serde_json::to_value(&spec)?;
        let url = format!("{}/v1/services", api.base);
        // 503: no leader for now (an election under load); asked again. A
        // 409 after that: the first try was applied after all.
        let mut retried = false;
        loop {
            match api.agent.post(&url).send_json(body.clone()) {
                Ok(r) if r.status() == 201 => break,
                Ok(r) => bail!("creating service {}: HTTP {}", spec.name, r.status()),
                Err(ureq::Error::Status(409, _)) if retried => break,
                Err(ureq::Error::Status(503, _)) if Instant::now() < deadline => {
                    retried = true;
                    check_nodes(nodes)?;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => bail!("creating service {}: {e}", spec.name),
            }
        }
    }
    println!("{} services created in {:.1} s", args.services, work.elapsed().as_secs_f64());

    let mut before = base;
    let mut tick = Instant::now();
    let mut all_placed = None;
    let all_running = loop {
        check_nodes(nodes)?;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
        let now = match api.counts() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the metrics");
                continue;
            }
        };
        let dt = tick.elapsed();
        tick = Instant::now();
        println!("{}", progress_line(work.elapsed(), now, before, dt));
        if all_placed.is_none() && now.placed >= args.tasks {
            all_placed = Some(work.elapsed());
        }
        // None should end; those that did are counted in the table (a
        // task created twice across a leader change is shut down), and
        // the run goes on to every slot running.
        if now.failed > before.failed {
            tracing::warn!(ended = now.failed, "tasks ended (failed, rejected or shut down); none should");
        }
        // Every slot running once: as many run as asked for, and no
        // spare still meant to run.
        if now.running >= args.tasks && now.committed.saturating_sub(now.failed) <= args.tasks {
            before = now;
            break work.elapsed();
        }
        if Instant::now() >= deadline {
            bail!(
                "deadline ({}) passed: {} of {} tasks running, {} placed, {} committed",
                humantime::format_duration(args.timeout),
                now.running,
                args.tasks,
                now.placed,
                now.committed
            );
        }
        before = now;
    };
    let cpu = thread_cpu();
    let (log, snap) = raft_sizes(&root.join("sim-m1"));
    let figures = Figures {
        nodes: args.nodes,
        managers: args.managers,
        services: args.services,
        tasks: args.tasks,
        nodes_up,
        idle_rss_per_node: figures_idle.0,
        idle_cpu_per_node: figures_idle.1,
        threads: threads(),
        all_placed: all_placed.unwrap_or(all_running),
        all_running,
        raft_entries: before.commit_index.saturating_sub(base.commit_index),
        raft_log_bytes: log,
        snapshot_bytes: snap,
        rss: rss(),
        manager_cpu: managers
            .iter()
            .map(|m| cpu.get(m).copied().unwrap_or(0.0) - mgr_cpu_start.get(m).copied().unwrap_or(0.0))
            .collect(),
        io_cpu: cpu_of(&cpu, &mgr_cpu_start, |n| n.starts_with("cluster-io")),
        nodes_cpu: cpu_of(&cpu, &mgr_cpu_start, |n| n.starts_with("sim-nodes-")),
        other_cpu: cpu_of(&cpu, &mgr_cpu_start, |n| {
            !n.starts_with("cluster-io") && !n.starts_with("sim-nodes-") && !managers.iter().any(|m| m == n)
        }),
        process_cpu: process_cpu() - cpu_start,
        ended: before.failed,
    };
    print!("\n{}", table(&figures));
    if args.kill > 0 {
        println!("{}", kill(args, &api, nodes, deadline, before)?);
    }
    Ok(last_line(args.tasks, args.nodes, all_running))
}

/// CPU seconds since `before` of the threads whose name `pick` takes.
fn cpu_of(now: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>, pick: impl Fn(&str) -> bool) -> f64 {
    now.iter().filter(|(n, _)| pick(n)).map(|(n, c)| c - before.get(n).copied().unwrap_or(0.0)).sum()
}

/// What `--kill` measured.
pub fn kill_line(killed: usize, tasks: u64, down: Duration, replaced: Duration) -> String {
    format!(
        "killed {killed} nodes holding {tasks} tasks: all seen down in {:.1} s, their tasks replaced and running elsewhere in {:.1} s",
        down.as_secs_f64(),
        replaced.as_secs_f64()
    )
}

/// `--kill N`: stops the last N worker nodes, then waits until the store
/// has given up their tasks (ended: orphaned) and as many run as before.
fn kill(args: &SimArgs, api: &Api, nodes: &mut Vec<SimNode>, deadline: Instant, before: Counts) -> Result<String> {
    let workers = nodes.len().saturating_sub(args.managers);
    if args.kill > workers {
        bail!("--kill {}: there are only {workers} worker nodes", args.kill);
    }
    let victims: Vec<SimNode> = nodes.split_off(nodes.len() - args.kill);
    let held: u64 = victims
        .iter()
        .map(|n| {
            n.runtime.containers().iter().filter(|c| c.state == worker::runtime::ContainerState::Running).count() as u64
        })
        .sum();
    let names: BTreeSet<String> = victims.iter().map(|n| n.name.clone()).collect();
    println!("stopping {} nodes ({} tasks run there)", victims.len(), held);
    let started = Instant::now();
    for n in &victims {
        let _ = n.stop.send(true);
    }
    let mut down = None;
    let mut tick = Instant::now();
    let mut last = before;
    let replaced = loop {
        check_nodes(nodes)?;
        std::thread::sleep(Duration::from_millis(250));
        if down.is_none() {
            let list = api.json("/v1/nodes").unwrap_or_default();
            let still = list
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|n| n["status"] == "ready" && n["hostname"].as_str().is_some_and(|h| names.contains(h)))
                        .count()
                })
                .unwrap_or(usize::MAX);
            if still == 0 {
                down = Some(started.elapsed());
            }
        }
        let Ok(now) = api.counts() else { continue };
        if tick.elapsed() >= Duration::from_secs(1) {
            println!("{}", progress_line(started.elapsed(), now, last, tick.elapsed()));
            (tick, last) = (Instant::now(), now);
        }
        if down.is_some() && now.failed >= before.failed + held && now.running >= args.tasks {
            break started.elapsed();
        }
        if Instant::now() >= deadline {
            bail!(
                "deadline passed after --kill: {} of {} tasks running, {} of {} given up",
                now.running,
                args.tasks,
                now.failed.saturating_sub(before.failed),
                held
            );
        }
    };
    for mut n in victims {
        let until = Instant::now() + Duration::from_secs(10);
        while !n.finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(kill_line(args.kill, held, down.unwrap_or(replaced), replaced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_consecutive_loopback_addresses() {
        let first: Ipv4Addr = "127.1.0.1".parse().unwrap();
        assert_eq!(node_addr(first, 0).unwrap(), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(node_addr(first, 249).unwrap(), Ipv4Addr::new(127, 1, 0, 250));
        assert_eq!(node_addr(first, 250).unwrap(), Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(node_addr(first, 5002).unwrap(), Ipv4Addr::new(127, 1, 20, 3));
        assert_eq!(node_addr("127.0.255.250".parse().unwrap(), 1).unwrap(), Ipv4Addr::new(127, 1, 0, 1));
        assert!(node_addr("10.0.0.1".parse().unwrap(), 0).is_err());
        assert!(node_addr("127.255.255.1".parse().unwrap(), 1000).is_err());
    }

    #[test]
    fn tasks_split_evenly_over_services() {
        assert_eq!(replicas(10, 3), vec![4, 3, 3]);
        assert_eq!(replicas(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(replicas(1_000_000, 1_000).iter().sum::<u64>(), 1_000_000);
    }

    #[test]
    fn counts_come_from_the_metrics_text() {
        let text = "# HELP x\nshoal_tasks{state=\"new\"} 3\nshoal_tasks{state=\"assigned\"} 5\n\
                    shoal_tasks{state=\"running\"} 7\nshoal_tasks{state=\"failed\"} 1\n\
                    shoal_raft_commit_index 42\nshoal_gossip_live_members 9\n";
        let c = counts(text);
        assert_eq!(c, Counts { committed: 16, placed: 12, running: 7, failed: 1, commit_index: 42, gossip_live: 9 });
        assert_eq!(sample(text, "shoal_raft"), None);
    }

    #[test]
    fn the_last_line_says_what_ran_where() {
        assert_eq!(
            last_line(2000, 50, Duration::from_millis(12_340)),
            "placed 2000 tasks on 50 nodes: all running in 12.3 s"
        );
        let stat = "123 (sim-m1) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(stat_cpu(stat), Some(("sim-m1".to_string(), 3.0)));
    }
}
