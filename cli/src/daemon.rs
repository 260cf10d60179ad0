//! `shoal daemon`: bootstrap (`--init`), join (`--join`), or resume a node
//! from its data directory, then run it until SIGINT/SIGTERM.
//!
//! A node's identity lives in `DATA_DIR/node.json`, its TLS key and
//! certificates under `DATA_DIR/tls` (see `worker::tls`); managers keep the
//! raft log under `DATA_DIR/raft`. Containers keep running when the daemon
//! stops; a restarted node adopts them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use common::mesh::{MeshFailure, MeshTable};
use common::node::{Node, Role};
use common::task::{Task, TaskStatusUpdate};
use common::time::now_ms;
use common::wire::{Frame, Hello, LogLine, LogRequest, PeerInfo, PROTOCOL_VERSION};
use common::{NodeId, TaskId};
use futures::stream::{BoxStream, StreamExt};
use manager::api::{self, ApiState};
use manager::raft::Propose;
use manager::store::{ClusterInfo, Command};
use manager::{Manager, ManagerConfig};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use worker::agent::{Agent, AgentSink};
use worker::membership::{self, fact, MembershipConfig};
use worker::mesh::{self, DataPath, MeshConfig, MeshProgrammer, SetTable};
use worker::net::{self, Router};
use worker::runtime::docker::DockerRuntime;
use worker::runtime::Runtime;
use worker::supervisor::{Assign, TaskSupervisor};
use worker::tls::{CertificateRequest, ClusterCa, JoinToken, NodeIdentity, Tls};

pub const DEFAULT_PORT: u16 = 4242;
pub const DEFAULT_API: &str = "127.0.0.1:4243";

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Bootstrap a new cluster with this node as its first manager.
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// Join the cluster of the manager at MANAGER_IP:PORT.
    #[arg(long, value_name = "MANAGER_IP:PORT", requires = "token")]
    join: Option<String>,
    /// Join token (its kind decides whether this node is a worker or a manager).
    #[arg(long)]
    token: Option<String>,
    /// The address other nodes reach this one at.
    #[arg(long, value_name = "IP")]
    advertise_addr: Option<IpAddr>,
    /// Cluster port: TCP for node-to-node frames, UDP for gossip.
    #[arg(long)]
    port: Option<u16>,
    /// Where the HTTP API listens (default 127.0.0.1:4243).
    #[arg(long, value_name = "IP:PORT")]
    api_addr: Option<SocketAddr>,
    /// The node's state: identity, raft log.
    #[arg(long, default_value = "/var/lib/shoal")]
    data_dir: PathBuf,
    /// Hostname shown for this node (default: the machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// Raft entries between snapshots (log compaction).
    #[arg(long, default_value_t = 10_000, hide = true)]
    snapshot_interval: u64,
    /// Routing-mesh data path: `kernel` (nftables DNAT; needs root and nft),
    /// `userspace` (a proxy in this process; no privileges), or `auto`
    /// (kernel where it works, else userspace, with a warning).
    #[arg(long, default_value = "auto")]
    mesh: MeshChoice,
    /// Disaster recovery: restart this manager as the only manager of a
    /// cluster that keeps all its services, when a majority of managers is
    /// lost for good. The other managers become workers.
    #[arg(long, conflicts_with_all = ["init", "join"])]
    force_new_cluster: bool,
}

/// `--mesh`: a data path, or `auto` (decided at start by what works here).
#[derive(Clone, Copy, Debug)]
pub struct MeshChoice(Option<DataPath>);

impl std::str::FromStr for MeshChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(MeshChoice(None)),
            other => other.parse().map(|p| MeshChoice(Some(p))).map_err(|e: String| format!("{e} (or auto)")),
        }
    }
}

/// What a node remembers about itself between restarts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    pub node_id: NodeId,
    pub raft_id: u64,
    pub role: Role,
    pub cluster_id: String,
    pub advertise_addr: IpAddr,
    pub port: u16,
    pub api_addr: SocketAddr,
    pub hostname: String,
    /// The managers (raft ids and cluster addresses), refreshed from the leader.
    #[serde(default)]
    pub managers: Vec<PeerInfo>,
}

impl NodeState {
    fn cluster_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise_addr, self.port)
    }
}

fn raft_dir(dir: &Path) -> PathBuf {
    dir.join("raft")
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("node.json")
}

fn load_state(dir: &Path) -> Result<Option<NodeState>> {
    let p = state_path(dir);
    match std::fs::read(&p) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", p.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Written to a temporary file, synced, then renamed: never half a file.
fn save_state(dir: &Path, s: &NodeState) -> Result<()> {
    use std::io::Write;
    let p = state_path(dir);
    let tmp = dir.join("node.json.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(s)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("tls")
}

/// The first manager makes the cluster CA and certifies itself with it.
fn init_identity(dir: &Path, state: &NodeState) -> Result<ClusterCa> {
    let ca = ClusterCa::generate(&state.cluster_id)?;
    NodeIdentity::issue(&ca, &state.node_id, state.role)?.save(&tls_dir(dir))?;
    Ok(ca)
}

/// This node's TLS side, from what init or join saved.
fn load_tls(dir: &Path, state: &NodeState) -> Result<Tls> {
    let tls = tls_dir(dir);
    let identity = NodeIdentity::load(&tls)?.ok_or_else(|| {
        anyhow!(
            "{} holds no certificate for node {}: a node made before the cluster port used TLS cannot rejoin; \
             start it afresh (another --data-dir) with --init or --join",
            tls.display(),
            state.node_id
        )
    })?;
    let me = identity.peer()?;
    if me.node_id != state.node_id {
        bail!("{} holds the certificate of node {}, not of this node ({})", tls.display(), me.node_id, state.node_id);
    }
    Ok(Tls::new(&identity)?)
}

fn machine_hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

fn secret(n: usize) -> String {
    let id = format!("{}{}", common::ServiceId::random(), common::ServiceId::random());
    id[..n].to_string()
}

pub fn run(args: DaemonArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let existing = load_state(&args.data_dir)?;
    let (state, fresh_init) = match (existing, args.init, &args.join) {
        (Some(s), false, None) => (resume(s, &args)?, false),
        (Some(s), _, _) => bail!(
            "{} already holds node {} ({}) of cluster {}: start without --init/--join to resume it, or use another --data-dir",
            args.data_dir.display(),
            s.node_id,
            s.hostname,
            s.cluster_id
        ),
        (None, true, _) => (init_state(&args)?, true),
        (None, false, Some(join)) => {
            let s = join_cluster(&args, join)?;
            save_state(&args.data_dir, &s)?;
            (s, false)
        }
        (None, false, None) => bail!(
            "no node in {}: start with --init to create a cluster or with --join MANAGER_IP:PORT --token TOKEN to join one",
            args.data_dir.display()
        ),
    };
    if args.force_new_cluster {
        if state.role != Role::Manager {
            bail!(
                "--force-new-cluster needs a manager's data directory; {} holds worker {}",
                args.data_dir.display(),
                state.hostname
            );
        }
        let r = manager::raft::recover::force_new_cluster(&raft_dir(&args.data_dir), state.raft_id, &state.node_id)
            .map_err(|e| anyhow!("--force-new-cluster: {e}"))?;
        tracing::warn!(
            index = r.index,
            services = r.services,
            demoted = ?r.demoted,
            "forced a new cluster with this manager as its only manager"
        );
        eprintln!(
            "Forced a new cluster from log index {} with {} service(s); former managers now workers: {}.",
            r.index,
            r.services,
            if r.demoted.is_empty() { "none".to_string() } else { r.demoted.join(", ") }
        );
    }
    if state.role == Role::Worker {
        // A demoted manager's raft log is stale: were it promoted again, it
        // must start from what the leader sends, not from old votes.
        let dir = raft_dir(&args.data_dir);
        if dir.exists() {
            tracing::info!(dir = %dir.display(), "removing the raft log of a former manager");
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    // The CA exists outside the store only until the first manager has
    // committed it there.
    let ca = if fresh_init { Some(init_identity(&args.data_dir, &state)?) } else { None };
    let tls = load_tls(&args.data_dir, &state)?;
    let data_dir = args.data_dir.clone();
    let opts = RunOptions {
        snapshot_interval: args.snapshot_interval,
        mesh: args.mesh.0,
        open_files: raise_open_file_limit(),
    };
    actix_web::rt::System::new().block_on(run_node(state, data_dir, ca, tls, opts))?;
    Ok(ExitCode::SUCCESS)
}

fn resume(mut s: NodeState, args: &DaemonArgs) -> Result<NodeState> {
    if let Some(a) = args.advertise_addr {
        if a != s.advertise_addr {
            bail!("this node was registered with advertise address {}; it cannot change to {a}", s.advertise_addr);
        }
    }
    if let Some(p) = args.port {
        if p != s.port {
            bail!("this node was registered with cluster port {}; it cannot change to {p}", s.port);
        }
    }
    let mut changed = false;
    if let Some(a) = args.api_addr {
        changed |= s.api_addr != a;
        s.api_addr = a;
    }
    if changed {
        save_state(&args.data_dir, &s)?;
    }
    Ok(s)
}

fn init_state(args: &DaemonArgs) -> Result<NodeState> {
    let advertise = args.advertise_addr.ok_or_else(|| anyhow!("--init needs --advertise-addr IP"))?;
    Ok(NodeState {
        node_id: NodeId::random(),
        raft_id: manager::join::new_raft_id(),
        role: Role::Manager,
        cluster_id: secret(25),
        advertise_addr: advertise,
        port: args.port.unwrap_or(DEFAULT_PORT),
        api_addr: args.api_addr.unwrap_or_else(|| DEFAULT_API.parse().expect("default API address")),
        hostname: args.hostname.clone().unwrap_or_else(machine_hostname),
        managers: vec![],
    })
}

fn join_cluster(args: &DaemonArgs, target: &str) -> Result<NodeState> {
    let advertise = args.advertise_addr.ok_or_else(|| anyhow!("--join needs --advertise-addr IP"))?;
    let token = args.token.clone().ok_or_else(|| anyhow!("--join needs --token TOKEN"))?;
    // A malformed token is refused here: its CA fingerprint is what lets
    // this node check the manager before sending the token.
    let pinned: JoinToken = token.parse()?;
    let target: SocketAddr = match target.parse() {
        Ok(a) => a,
        Err(_) => {
            let ip: IpAddr =
                target.parse().map_err(|_| anyhow!("invalid --join address {target:?}: expected MANAGER_IP:PORT"))?;
            SocketAddr::new(ip, DEFAULT_PORT)
        }
    };
    let port = args.port.unwrap_or(DEFAULT_PORT);
    let hostname = args.hostname.clone().unwrap_or_else(machine_hostname);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let request = CertificateRequest::new()?;
    let hello = Hello::Join {
        token,
        hostname: hostname.clone(),
        advertise_addr: SocketAddr::new(advertise, port),
        protocol: PROTOCOL_VERSION,
        csr: request.csr_der().to_vec(),
    };
    let answer = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let (_conn, answer) = net::dial_join(target, pinned.ca, hello, Duration::from_secs(30)).await?;
            Ok::<_, net::NetError>(answer)
        })
        .await
    });
    let accepted = match answer {
        Ok(Ok(Frame::JoinAccepted(a))) => a,
        Ok(Ok(other)) => bail!("unexpected answer from {target}: {other:?}"),
        Ok(Err(net::NetError::Refused(reason))) => bail!("join refused by {target}: {reason}"),
        Ok(Err(e)) => bail!("cannot join through {target}: {e}"),
        Err(_) => bail!("cannot join through {target}: no answer within 30 s"),
    };
    let identity = request
        .complete(accepted.certificate.clone(), accepted.ca_certificate.clone(), Some(pinned.ca))
        .with_context(|| format!("join through {target}: the certificate it issued is unusable"))?;
    identity.save(&tls_dir(&args.data_dir))?;
    Ok(NodeState {
        node_id: accepted.node_id,
        raft_id: accepted.raft_id,
        role: accepted.role,
        cluster_id: accepted.cluster_id,
        advertise_addr: advertise,
        port,
        api_addr: args.api_addr.unwrap_or_else(|| DEFAULT_API.parse().expect("default API address")),
        hostname,
        managers: accepted.managers,
    })
}

/// Forwards the agent's assignments to the supervisor and keeps the list
/// of managers fresh (on disk and as gossip seeds).
struct Sink {
    supervisor: actix::Addr<TaskSupervisor>,
    data_dir: PathBuf,
    state: Arc<RwLock<NodeState>>,
    membership: actix::Addr<membership::Membership>,
    /// The MeshProgrammer; tables go to it in the order they arrive, before
    /// the assignments that follow them (a task leaves the rotation before
    /// its stop reaches the supervisor).
    mesh: actix::Addr<MeshProgrammer>,
    /// Told when the node's role changed (and which managers can certify
    /// it): the process restarts in its new role.
    role_changed: mpsc::UnboundedSender<(Role, Vec<PeerInfo>)>,
}

impl AgentSink for Sink {
    fn mesh(&self, table: MeshTable) {
        self.mesh.do_send(SetTable(table));
    }
    fn assign(&self, full: bool, tasks: Vec<Task>, removed: Vec<TaskId>) {
        self.supervisor.do_send(Assign { full, tasks, removed });
    }
    fn managers(&self, managers: Vec<PeerInfo>) {
        let mut s = self.state.write();
        // The leader's list is the store's roles: promoted or demoted?
        let listed = managers.iter().any(|m| m.node_id == s.node_id);
        let role = if listed { Role::Manager } else { Role::Worker };
        if !managers.is_empty() && role != s.role {
            // The node saves its new role once it holds a certificate for it.
            tracing::warn!(from = %s.role, to = %role, "this node's role changed");
            let _ = self.role_changed.send((role, managers));
            return;
        }
        if s.managers != managers {
            let me = s.cluster_addr();
            let seeds = managers.iter().map(|m| m.addr).filter(|a| *a != me).collect();
            s.managers = managers;
            if let Err(e) = save_state(&self.data_dir, &s) {
                tracing::warn!(error = %e, "cannot save the managers list");
            }
            self.membership.do_send(membership::SetSeeds(seeds));
        }
    }
}

fn log_source(runtime: Arc<dyn Runtime>, node: NodeId) -> net::LogSource {
    Arc::new(move |req: LogRequest| -> BoxStream<'static, Result<LogLine, String>> {
        let runtime = runtime.clone();
        let node = node.clone();
        futures::stream::once(async move {
            let containers = runtime.list(&node).await.map_err(|e| e.to_string())?;
            let streams: Vec<_> = req
                .tasks
                .iter()
                .filter_map(|t| {
                    containers.iter().find(|c| &c.task_id == t).map(|c| (t.clone(), c.container_id.clone()))
                })
                .map(|(t, c)| runtime.logs(&t, &c, req.follow, req.tail))
                .collect();
            Ok::<_, String>(futures::stream::select_all(streams).map(|r| r.map_err(|e| e.to_string())))
        })
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping"),
        _ = term.recv() => tracing::info!("terminated, stopping"),
    }
}

struct RunOptions {
    snapshot_interval: u64,
    mesh: Option<DataPath>,
    /// The soft limit on open files, once raised.
    open_files: u64,
}

/// Raises this process's soft limit on open files to its hard limit, as
/// servers do (every cluster-port connection is a file; the soft limit is
/// often 1024); returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = hard, "raised the open-file limit");
            hard
        }
        Err(e) => {
            tracing::warn!(limit = soft, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Runs the node; `ca` is there on the first start of a cluster's first
/// manager (`--init`), which commits it to the store.
async fn run_node(
    state: NodeState,
    data_dir: PathBuf,
    ca: Option<ClusterCa>,
    tls: Tls,
    opts: RunOptions,
) -> Result<()> {
    let fresh_init = ca.is_some();
    let snapshot_interval = opts.snapshot_interval;
    let cluster_addr = state.cluster_addr();
    let listener = tokio::net::TcpListener::bind(cluster_addr)
        .await
        .with_context(|| format!("cannot listen on the cluster port {cluster_addr}"))?;
    let runtime: Arc<dyn Runtime> = Arc::new(
        DockerRuntime::connect()
            .await
            .map_err(|e| anyhow!("cannot use Docker: {e} (is dockerd running and /var/run/docker.sock reachable?)"))?
            .publish_on(state.advertise_addr),
    );
    let data_path = mesh::choose(opts.mesh, &state.node_id, state.advertise_addr).await.map_err(|e| {
        let which = opts.mesh.map(|p| p.to_string()).unwrap_or_else(|| "auto".into());
        anyhow!("cannot use the {which} routing mesh: {e}")
    })?;
    let (programmer, mut mesh_status) =
        MeshProgrammer::new(MeshConfig::new(state.node_id.clone(), state.advertise_addr, data_path));
    let mesh_addr = actix::Actor::start(programmer);

    // Gossip: who is alive.
    let facts: BTreeMap<String, String> = [
        (fact::ROLE.to_string(), state.role.to_string()),
        (fact::HOSTNAME.to_string(), state.hostname.clone()),
        (fact::CLUSTER_ADDR.to_string(), cluster_addr.to_string()),
    ]
    .into();
    let (membership, live_set) = membership::start(MembershipConfig {
        node_id: state.node_id.clone(),
        cluster_id: state.cluster_id.clone(),
        gossip_addr: cluster_addr,
        seeds: state.managers.iter().map(|m| m.addr).filter(|a| *a != cluster_addr).collect(),
        generation: now_ms(),
        facts,
    })
    .await
    .map_err(|e| anyhow!("cannot start gossip on {cluster_addr}/udp: {e}"))?;
    let (live_tx, live) = watch::channel(live_set.borrow().nodes.keys().cloned().collect());
    {
        let mut live_set = live_set.clone();
        actix::spawn(async move {
            while live_set.changed().await.is_ok() {
                let ids = live_set.borrow().nodes.keys().cloned().collect();
                live_tx.send_replace(ids);
            }
            tracing::error!("membership stopped; exiting");
            std::process::exit(70);
        });
    }

    // Tasks on this node.
    let (reports_tx, reports_rx) = mpsc::unbounded_channel::<TaskStatusUpdate>();
    let supervisor = actix::Actor::start(TaskSupervisor::new(state.node_id.clone(), runtime.clone(), reports_tx));

    let router = Router::new(log_source(runtime.clone(), state.node_id.clone()), &tls);
    let mut mgr: Option<Manager> = None;
    if state.role == Role::Manager {
        // Raft needs the other managers' addresses before its store has
        // caught up with them.
        let peers: Vec<PeerInfo> = state.managers.iter().filter(|p| p.node_id != state.node_id).cloned().collect();
        let (m, inbound) = Manager::start(ManagerConfig {
            node_id: state.node_id.clone(),
            raft_id: state.raft_id,
            data_dir: &data_dir,
            bootstrap: fresh_init,
            peers,
            live: live.clone(),
            compact_every: snapshot_interval,
            tls: tls.clone(),
        })
        .map_err(|e| anyhow!(e))?;
        router.set_manager(inbound);
        mgr = Some(m);
    }
    let limits = net::ServeConfig::default().fit_to(opts.open_files);
    if limits != net::ServeConfig::default() {
        tracing::warn!(
            open_files = opts.open_files,
            handshaking = limits.max_handshaking,
            established = limits.max_established,
            "the open-file limit is low: the cluster port takes fewer connections than by default"
        );
    }
    // Dropping `stop_cluster_port` (or sending on it) stops the listener.
    let (stop_cluster_port, cluster_port_stopped) = tokio::sync::oneshot::channel::<()>();
    let cluster_port = actix::spawn(router.serve(listener, limits, async {
        let _ = cluster_port_stopped.await;
    }));

    if let Some(ca) = ca {
        let m = mgr.as_ref().expect("init makes a manager");
        bootstrap_cluster(m, &state, ca).await?;
        save_state(&data_dir, &state)?;
        print_join_commands(m, &state);
    }

    // The session with the leader.
    let managers = Arc::new(RwLock::new(if state.managers.is_empty() {
        vec![cluster_addr]
    } else {
        state.managers.iter().map(|m| m.addr).collect()
    }));
    let shared_state = Arc::new(RwLock::new(state.clone()));
    let (role_tx, mut role_rx) = mpsc::unbounded_channel();
    let role_retry = role_tx.clone();
    let sink = Arc::new(Sink {
        role_changed: role_tx,
        supervisor,
        data_dir: data_dir.clone(),
        state: shared_state,
        membership,
        mesh: mesh_addr.clone(),
    });
    // What the mesh cannot serve, for the managers to show.
    let (failures_tx, failures_rx) = watch::channel(Vec::new());
    actix::spawn(async move {
        while mesh_status.changed().await.is_ok() {
            let list: Vec<MeshFailure> = mesh_status
                .borrow_and_update()
                .failures
                .iter()
                .map(|f| MeshFailure {
                    service_name: f.service.clone(),
                    protocol: f.port.protocol,
                    published: f.port.port,
                    error: f.error.to_string(),
                })
                .collect();
            failures_tx.send_if_modified(|old| {
                let changed = *old != list;
                *old = list;
                changed
            });
        }
    });
    let agent = Agent { node_id: state.node_id.clone(), managers, tls: tls.clone() };
    actix::spawn(agent.run(sink, reports_rx, failures_rx));

    let server = api::serve(
        state.api_addr,
        ApiState { node_id: state.node_id.clone(), hostname: state.hostname.clone(), manager: mgr, live },
    )
    .with_context(|| format!("cannot listen for the API on {}", state.api_addr))?;
    let handle = server.handle();
    actix::spawn(server);
    tracing::info!(node = %state.node_id, hostname = %state.hostname, role = %state.role, cluster = %cluster_addr, api = %state.api_addr, "node running");

    let change_role = async {
        while let Some((role, managers)) = role_rx.recv().await {
            let addrs: Vec<SocketAddr> = managers.iter().map(|m| m.addr).collect();
            match renew_certificate(&tls, &data_dir, &state.node_id, role, &addrs).await {
                Ok(()) => return (role, managers),
                Err(e) => {
                    tracing::warn!(%role, error = %e, "cannot get a certificate for the new role yet; will retry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Ask again on the next managers list, or now.
                    while role_rx.try_recv().is_ok() {}
                    let _ = role_retry.send((role, managers));
                }
            }
        }
        std::future::pending().await
    };
    let new_role = tokio::select! {
        _ = wait_for_signal() => None,
        role = change_role => Some(role),
    };
    // No new cluster connections while the node stops.
    let _ = stop_cluster_port.send(());
    if tokio::time::timeout(Duration::from_secs(5), cluster_port).await.is_err() {
        tracing::warn!("the cluster port did not close its connections within 5 s");
    }
    if let Some((role, managers)) = new_role {
        let mut s = state.clone();
        s.role = role;
        s.managers = managers;
        save_state(&data_dir, &s)?;
        // Containers and the mesh table stay; the new process adopts them.
        handle.stop(true).await;
        tracing::info!(%role, "restarting in the new role");
        return Err(reexec());
    }
    // The mesh goes first: no nftables table outlives the node.
    match mesh_addr.send(mesh::Shutdown).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "routing mesh not fully removed"),
        Err(e) => tracing::warn!(error = %e, "routing mesh unreachable at shutdown"),
    }
    handle.stop(true).await;
    Ok(())
}

/// Asks a manager for a certificate for `role` (signed from a fresh key's
/// CSR with the role the store gives this node) and saves it.
async fn renew_certificate(
    tls: &Tls,
    data_dir: &Path,
    node: &NodeId,
    role: Role,
    managers: &[SocketAddr],
) -> Result<()> {
    let dir = tls_dir(data_dir);
    let pinned =
        NodeIdentity::load(&dir)?.ok_or_else(|| anyhow!("{} holds no certificate", dir.display()))?.ca_fingerprint()?;
    let mut last = anyhow!("no manager to ask");
    for addr in managers {
        let request = CertificateRequest::new()?;
        let hello = Hello::Renew { node_id: node.clone(), csr: request.csr_der().to_vec() };
        let (certificate, ca_certificate) = match net::dial(tls, *addr, hello).await {
            Ok((_conn, Frame::Certificate { certificate, ca_certificate })) => (certificate, ca_certificate),
            Ok((_conn, other)) => {
                last = anyhow!("{addr} answered {other:?}");
                continue;
            }
            Err(e) => {
                last = anyhow!("{addr}: {e}");
                continue;
            }
        };
        let identity = request.complete(certificate, ca_certificate, Some(pinned))?;
        let got = identity.peer()?.role;
        if got != role {
            // That manager has not applied the change yet.
            last = anyhow!("{addr} still certifies this node as a {got}");
            continue;
        }
        identity.save(&dir)?;
        tracing::info!(%role, manager = %addr, "certificate renewed for the new role");
        return Ok(());
    }
    Err(last)
}

/// Replaces this process with `shoal daemon` on the same data directory and
/// options, without the one-off flags (`--init`, `--join`, `--token`,
/// `--force-new-cluster`). Returns only if exec failed.
fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow!("cannot restart in the new role: {e}"),
    };
    let args = restart_args(std::env::args_os().skip(1).collect());
    tracing::info!(?args, "restarting");
    let err = std::process::Command::new(exe).args(args).exec();
    anyhow!("cannot restart in the new role: {err}")
}

fn restart_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        match s.as_ref() {
            "--init" | "--force-new-cluster" => {}
            "--join" | "--token" => skip_value = true,
            _ if s.starts_with("--join=") || s.starts_with("--token=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// The first manager commits the cluster's identity and itself.
async fn bootstrap_cluster(m: &Manager, state: &NodeState, ca: ClusterCa) -> Result<()> {
    let mut status = m.status.clone();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.is_leader))
        .await
        .map_err(|_| anyhow!("this node did not become the raft leader of its new cluster within 10 s"))?
        .map_err(|_| anyhow!("the raft log stopped"))?;
    let now = now_ms();
    let fingerprint = ca.fingerprint()?;
    let info = ClusterInfo {
        id: state.cluster_id.clone(),
        worker_token: manager::join::new_token(fingerprint),
        manager_token: manager::join::new_token(fingerprint),
        created_at: now,
        ca,
    };
    let node = Node {
        id: state.node_id.clone(),
        raft_id: state.raft_id,
        hostname: state.hostname.clone(),
        role: Role::Manager,
        availability: Default::default(),
        labels: Default::default(),
        addr: state.cluster_addr(),
        created_at: now,
        updated_at: now,
    };
    match m.raft.send(Propose(Command::Batch(vec![Command::InitCluster(Box::new(info)), Command::AddNode(node)]))).await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("cannot initialise the cluster: {e}")),
        Err(e) => Err(anyhow!("cannot initialise the cluster: {e}")),
    }
}

fn print_join_commands(m: &Manager, state: &NodeState) {
    let c = m.store.read().cluster.clone();
    let addr = state.cluster_addr();
    println!("Cluster initialized: current node ({}) is now a manager.\n", state.node_id);
    println!("To add a worker to this cluster, run the following command:\n");
    println!("    shoal daemon --join {addr} --token {} --advertise-addr <IP>\n", c.worker_token);
    println!("To add a manager to this cluster, run the following command:\n");
    println!("    shoal daemon --join {addr} --token {} --advertise-addr <IP>\n", c.manager_token);
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_keeps_the_options_and_drops_the_one_off_flags() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let got = restart_args(args(&[
            "daemon",
            "--join",
            "127.0.0.1:4000",
            "--token",
            "SHTKN-1-a-b",
            "--data-dir",
            "/d",
            "--mesh=userspace",
            "--init",
            "--token=x",
            "--force-new-cluster",
            "--api-addr",
            "127.0.0.1:1",
        ]));
        assert_eq!(got, args(&["daemon", "--data-dir", "/d", "--mesh=userspace", "--api-addr", "127.0.0.1:1"]));
    }
}
