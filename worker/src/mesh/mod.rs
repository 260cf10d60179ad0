//! The routing mesh on one node: every ingress-published port is open on the
//! node's advertise address, and each new connection (each new UDP flow)
//! goes to the next running task of its service, round robin, across all
//! nodes.
//!
//! - [`plan`]: pure. The mesh this node should serve for a
//!   [`MeshTable`] ([`plan::desired`]), and the changes from what is
//!   programmed ([`plan::diff`]).
//! - [`nft`]: the in-kernel data path, nftables DNAT with `numgen inc`, in a
//!   table of this node's own.
//! - [`forward`]: what the kernel path needs from the host to forward to
//!   other nodes: IP forwarding on, an accept in Docker's `DOCKER-USER` chain.
//! - [`proxy`]: the userspace data path, a TCP/UDP proxy in this process.
//! - [`MeshProgrammer`]: the actor. It takes [`SetTable`] from the agent,
//!   applies only the difference to the chosen [`DataPath`], and on
//!   [`Shutdown`] removes what it programmed.
//!
//! A published port this node cannot take (someone else listens on it) is
//! not programmed: it is logged, counted in `shoal_mesh_ports{state="failed"}`,
//! listed in [`MeshStatus::failures`] for the manager to show, and tried again
//! every [`MeshConfig::retry_every`] until it is free or unpublished. In the
//! kernel path the node holds a bound (never listening) socket on each
//! published port, as kube-proxy did for node ports, so both paths detect a
//! taken port the same way and nobody takes it while the mesh owns it.

pub mod forward;
pub mod nft;
pub mod plan;
pub mod proxy;
#[cfg(target_os = "linux")]
pub mod pump;
#[cfg(target_os = "linux")]
pub mod splice;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use common::ids::NodeId;
use common::mesh::{MeshTable, Protocol};

use self::nft::NftTable;
use self::plan::{Change, DesiredMesh, PortKey};
use self::proxy::{Proxy, ProxyConfig, ProxyStats};
use crate::node::metrics::{metrics, ActorMetrics, GaugeFamily};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// Someone else holds the published port on this node's address.
    #[error("published port {port} cannot be served on this node: {addr} is already in use")]
    PortInUse { port: PortKey, addr: SocketAddr },
    #[error("the kernel mesh needs the nft command (apt-get install nftables), or run with --mesh userspace")]
    NftMissing,
    /// nft ran and failed; nft's first line of complaint.
    #[error("{0}")]
    Nft(String),
    /// IP forwarding or the FORWARD chain's accept could not be set up.
    #[error("{0}")]
    Forward(String),
    #[error("{0}")]
    Io(String),
    /// A port with `proxy-protocol=v2` on a node whose mesh is the kernel's.
    #[error("published port {port} asks for proxy-protocol=v2, which only the userspace mesh speaks: run this node with `shoal daemon --mesh userspace`")]
    NeedsUserspace { port: PortKey },
}

impl MeshError {
    /// Might go away by itself (the port freed, a transient failure); a
    /// missing nft will not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, MeshError::NftMissing | MeshError::NeedsUserspace { .. })
    }
}

/// How published ports reach their tasks on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DataPath {
    /// nftables DNAT: needs root (CAP_NET_ADMIN) and the nft command.
    #[default]
    Kernel,
    /// A proxy in the node process: no privileges.
    Userspace,
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataPath::Kernel => "kernel",
            DataPath::Userspace => "userspace",
        })
    }
}

impl FromStr for DataPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kernel" => Ok(DataPath::Kernel),
            "userspace" => Ok(DataPath::Userspace),
            _ => Err(format!("invalid mesh {s:?}: expected kernel or userspace")),
        }
    }
}

/// Can `path` work here? For the kernel path: nft is installed, this
/// process may program nftables, and IP forwarding is on (turned on here if
/// it was off). The daemon calls it at start to fail with a clear error
/// instead of serving nothing.
pub async fn preflight(path: DataPath, node_id: &NodeId, addr: IpAddr) -> Result<(), MeshError> {
    match path {
        DataPath::Userspace => Ok(()),
        DataPath::Kernel => {
            nft::probe(&NftTable::for_node(node_id, addr)).await?;
            if forward::enable_forwarding(addr)? {
                tracing::warn!(
                    sysctl = forward::forwarding_sysctl(addr).0,
                    "mesh: turned IP forwarding on: the kernel mesh forwards connections to tasks on other nodes"
                );
            }
            Ok(())
        }
    }
}

/// The data path a node should use: `requested`, if it works here (else
/// the reason it does not); with none requested, the kernel path where it
/// works (root and nft) and the userspace proxy elsewhere, with a warning.
pub async fn choose(requested: Option<DataPath>, node_id: &NodeId, addr: IpAddr) -> Result<DataPath, MeshError> {
    match requested {
        Some(path) => preflight(path, node_id, addr).await.map(|()| path),
        None => match preflight(DataPath::Kernel, node_id, addr).await {
            Ok(()) => Ok(DataPath::Kernel),
            Err(e) => {
                tracing::warn!(error = %e, "mesh: the kernel data path does not work here; using the userspace proxy");
                Ok(DataPath::Userspace)
            }
        },
    }
}

/// Flushes the conntrack entries of UDP flows DNATed to targets that left
/// (see [`NftTable::udp_targets_gone`]); a failure is logged, the flows
/// then move once they idle out.
async fn flush_udp(addr: IpAddr, gone: Vec<(PortKey, SocketAddr)>) {
    for (port, to) in gone {
        match nft::flush_udp_flows(addr, port.port, to).await {
            Ok(n) => tracing::debug!(%port, %to, flows = n, "mesh: flushed the UDP flows of a backend that left"),
            Err(e) => tracing::warn!(%port, %to, error = %e, "mesh: cannot flush the UDP flows of a backend that left"),
        }
    }
}

/// How often the kernel path checks that its FORWARD accept is still there.
const ACCEPT_CHECK_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub node_id: NodeId,
    /// The node's advertise address: published ports are served there only.
    pub addr: IpAddr,
    pub data_path: DataPath,
    pub proxy: ProxyConfig,
    /// How often ports that could not be taken are tried again.
    pub retry_every: Duration,
}

impl MeshConfig {
    pub fn new(node_id: NodeId, addr: IpAddr, data_path: DataPath) -> Self {
        MeshConfig { node_id, addr, data_path, proxy: ProxyConfig::default(), retry_every: Duration::from_secs(5) }
    }
}

/// One published port this node does not serve, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortFailure {
    pub port: PortKey,
    pub service: String,
    pub error: MeshError,
}

/// What the mesh on this node is doing, for the node's status report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshStatus {
    pub data_path: DataPath,
    /// Published ports served (including those refusing for want of tasks).
    pub programmed: usize,
    /// Published ports not served, in port order.
    pub failures: Vec<PortFailure>,
    /// The data path itself does not work (nft missing or failing): no port
    /// is served as it should be.
    pub error: Option<MeshError>,
}

/// The whole routing mesh, from the dispatcher.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct SetTable(pub MeshTable);

/// Removes the node's nftables table (kernel path) or closes its listeners
/// (userspace path), then stops the actor. The daemon sends it on SIGTERM.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(), MeshError>")]
pub struct Shutdown;

#[derive(Message, Clone, Debug)]
#[rtype(result = "MeshStatus")]
pub struct GetStatus;

enum Path {
    Kernel {
        table: NftTable,
        /// The table exists and matches `current`: changes can be applied
        /// incrementally. False at start and after a failed change.
        ready: bool,
        /// Bound, never-listening sockets holding each programmed port.
        held: HashMap<PortKey, Held>,
    },
    Userspace(Proxy),
}

/// Holds a port for the kernel path: dropped, the port is free again.
#[allow(dead_code)]
enum Held {
    Tcp(tokio::net::TcpSocket),
    Udp(std::net::UdpSocket),
}

fn hold(at: SocketAddr, port: PortKey) -> Result<Held, MeshError> {
    let err = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            MeshError::PortInUse { port, addr: at }
        } else {
            MeshError::Io(format!("cannot bind {at}/{}: {e}", port.protocol))
        }
    };
    match port.protocol {
        Protocol::Tcp => {
            let s = match at {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .map_err(err)?;
            // No SO_REUSEADDR: a later bind by anyone else fails.
            s.bind(at).map_err(err)?;
            Ok(Held::Tcp(s))
        }
        Protocol::Udp => std::net::UdpSocket::bind(at).map(Held::Udp).map_err(err),
    }
}

pub struct MeshProgrammer {
    config: MeshConfig,
    path: Path,
    desired: DesiredMesh,
    /// What the data path serves now.
    current: DesiredMesh,
    failures: BTreeMap<PortKey, PortFailure>,
    /// The data path's own failure (nft).
    error: Option<MeshError>,
    /// An nft transaction is in flight; `dirty`: sync again after it.
    busy: bool,
    dirty: bool,
    /// Shut down: no more programming.
    done: bool,
    status_tx: watch::Sender<MeshStatus>,
    metrics: ActorMetrics,
    ports_gauge: GaugeFamily,
    proxy_gauge: GaugeFamily,
}

impl MeshProgrammer {
    /// The actor, not started, and a watch on its status (for the agent to
    /// pass on to the managers).
    pub fn new(config: MeshConfig) -> (Self, watch::Receiver<MeshStatus>) {
        let path = match config.data_path {
            DataPath::Kernel => Path::Kernel {
                table: NftTable::for_node(&config.node_id, config.addr).with_interface(nft::interface_of(config.addr)),
                ready: false,
                held: HashMap::new(),
            },
            DataPath::Userspace => Path::Userspace(Proxy::new(config.addr, config.proxy.clone())),
        };
        let (status_tx, status_rx) = watch::channel(MeshStatus { data_path: config.data_path, ..Default::default() });
        let m = metrics();
        let programmer = MeshProgrammer {
            desired: DesiredMesh::empty(config.addr),
            current: DesiredMesh::empty(config.addr),
            path,
            config,
            failures: BTreeMap::new(),
            error: None,
            busy: false,
            dirty: false,
            done: false,
            status_tx,
            metrics: m.actor("mesh"),
            ports_gauge: m.gauge_family(
                "shoal_mesh_ports",
                "Published ports on this node: programmed, or failed (port taken, nft error)",
                "state",
            ),
            proxy_gauge: m.gauge_family(
                "shoal_mesh_proxy",
                "Userspace mesh proxy: connections forwarded, refused (no task), failed (no task answered), active; udp flows and dropped datagrams",
                "what",
            ),
        };
        (programmer, status_rx)
    }

    /// The nft table this node programs in the kernel path.
    pub fn table(&self) -> Option<&NftTable> {
        match &self.path {
            Path::Kernel { table, .. } => Some(table),
            Path::Userspace(_) => None,
        }
    }

    /// Brings the data path to the desired mesh: only what changed.
    fn sync(&mut self, ctx: &mut Context<Self>) {
        if self.done {
            return;
        }
        if self.busy {
            self.dirty = true;
            return;
        }
        let changes = plan::diff(&self.current, &self.desired);
        let kernel_stale = matches!(self.path, Path::Kernel { ready: false, .. });
        let peers_changed = self.current.peers != self.desired.peers;
        if changes.is_empty() && !kernel_stale && !peers_changed {
            self.publish();
            return;
        }
        let at = self.config.addr;
        let desired = &self.desired;
        // Take (bind) new ports first; a port that cannot be had is left out
        // of this round and tried again later.
        let mut ok = Vec::with_capacity(changes.len());
        for c in changes {
            let port = c.port();
            let taken = match (&mut self.path, &c) {
                (Path::Userspace(proxy), Change::Open { to, .. }) => {
                    proxy.open_with(port, to.backends.clone(), to.proxy_protocol)
                }
                (Path::Userspace(proxy), Change::Retarget { to, .. }) => {
                    proxy.retarget_with(port, to.backends.clone(), to.proxy_protocol);
                    Ok(())
                }
                (Path::Kernel { .. }, Change::Open { to, .. } | Change::Retarget { to, .. }) if to.proxy_protocol => {
                    // The kernel forwards packets; it cannot add a header.
                    Err(MeshError::NeedsUserspace { port })
                }
                (Path::Userspace(proxy), Change::Close { .. }) => {
                    proxy.close(port);
                    Ok(())
                }
                (Path::Kernel { held, .. }, Change::Open { .. }) if held.contains_key(&port) => {
                    // Held since an earlier round whose nft run failed.
                    Ok(())
                }
                (Path::Kernel { held, .. }, Change::Open { .. }) => {
                    hold(SocketAddr::new(at, port.port), port).map(|h| {
                        held.insert(port, h);
                    })
                }
                (Path::Kernel { .. }, Change::Retarget { .. } | Change::Close { .. }) => Ok(()),
            };
            match taken {
                Ok(()) => {
                    self.failures.remove(&port);
                    ok.push(c);
                }
                Err(error) => {
                    let service = desired.ports.get(&port).map(|f| f.service.clone()).unwrap_or_default();
                    if self.failures.get(&port).map(|f| &f.error) != Some(&error) {
                        tracing::error!(port = %port, service = %service, error = %error, "mesh: cannot serve a published port");
                    }
                    self.failures.insert(port, PortFailure { port, service, error });
                }
            }
        }
        // Unpublished ports fail no more.
        self.failures.retain(|p, _| desired.ports.contains_key(p));
        let mut target = plan::apply(&self.current, at, &ok);
        target.peers = desired.peers.clone();

        let script = match &self.path {
            Path::Userspace(_) => {
                self.current = target;
                self.publish();
                return;
            }
            Path::Kernel { table, ready, .. } => {
                if *ready && !table.needs_rebuild(&self.current, &target) {
                    table.update(&self.current, &ok)
                } else {
                    table.rebuild(&target)
                }
            }
        };
        if script.is_empty() {
            self.current = target;
            self.publish();
            return;
        }
        self.busy = true;
        let closed: Vec<PortKey> = ok.iter().filter(|c| matches!(c, Change::Close { .. })).map(Change::port).collect();
        let flush = match &self.path {
            Path::Kernel { table, ready: true, .. } => table.udp_targets_gone(&self.current, &target),
            _ => Vec::new(),
        };
        let old_addr = self.current.addr;
        let started = Instant::now();
        ctx.wait(
            async move { nft::run(&script).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.busy = false;
                    let Path::Kernel { ready, held, table } = &mut act.path else {
                        return;
                    };
                    match res {
                        Ok(()) => {
                            tracing::debug!(table = %table.qualified(), took_ms = started.elapsed().as_millis() as u64, "mesh: nft applied");
                            *ready = true;
                            act.error = None;
                            act.current = target;
                            // The rules are gone: the ports may go too.
                            for p in closed {
                                held.remove(&p);
                            }
                            if !flush.is_empty() {
                                ctx.spawn(flush_udp(old_addr, flush).into_actor(act));
                            }
                        }
                        Err(e) => {
                            if act.error.as_ref() != Some(&e) {
                                tracing::error!(table = %table.qualified(), error = %e, "mesh: programming nftables failed; will rebuild the table");
                            }
                            // Rebuild from scratch next time; what is
                            // programmed is now unknown.
                            *ready = false;
                            act.error = Some(e);
                        }
                    }
                    act.publish();
                    if std::mem::take(&mut act.dirty) {
                        act.sync(ctx);
                    }
                }),
        );
    }

    fn status(&self) -> MeshStatus {
        MeshStatus {
            data_path: self.config.data_path,
            programmed: self.current.ports.len(),
            failures: self.failures.values().cloned().collect(),
            error: self.error.clone(),
        }
    }

    fn publish(&mut self) {
        let st = self.status();
        let failed = if st.error.is_some() { self.desired.ports.len() } else { st.failures.len() };
        self.ports_gauge.set("programmed", st.programmed as i64);
        self.ports_gauge.set("failed", failed as i64);
        self.status_tx.send_if_modified(|old| {
            let changed = *old != st;
            *old = st;
            changed
        });
    }

    fn export_proxy_stats(&self) {
        let Path::Userspace(proxy) = &self.path else {
            return;
        };
        let s: Arc<ProxyStats> = proxy.stats();
        let g = &self.proxy_gauge;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        g.set("tcp_forwarded", get(&s.tcp_forwarded));
        g.set("tcp_refused", get(&s.tcp_refused));
        g.set("tcp_failed", get(&s.tcp_failed));
        g.set("tcp_active", s.tcp_active.load(Ordering::Relaxed));
        g.set("udp_flows", s.udp_flows.load(Ordering::Relaxed));
        g.set("udp_dropped", get(&s.udp_dropped));
    }

    /// Logs what [`forward::ensure_accept`] did. A failure is not fatal:
    /// ports still work from this node's own tasks and from local clients.
    fn log_accept(&mut self, accept: Result<forward::Accept, MeshError>) {
        match accept {
            Ok(forward::Accept::Added(chain)) => {
                tracing::info!(chain, addr = %self.config.addr, "mesh: accepting forwarded mesh connections in the filter table")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "mesh: connections to tasks on other nodes may be dropped by the host firewall")
            }
        }
    }

    /// The rules are the node's to remove; the ports held go with them.
    fn teardown_blocking(&mut self) {
        if let Path::Kernel { table, ready, held } = &mut self.path {
            if let Err(e) = nft::run_blocking(&table.teardown()) {
                tracing::warn!(table = %table.qualified(), error = %e, "mesh: removing the nft table failed");
            }
            forward::remove_accept(self.config.addr);
            *ready = false;
            held.clear();
        }
        if let Path::Userspace(proxy) = &mut self.path {
            proxy.close_all();
        }
    }
}

impl Actor for MeshProgrammer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(node = %self.config.node_id, addr = %self.config.addr, data_path = %self.config.data_path, "mesh programmer started");
        if let Path::Kernel { table, .. } = &self.path {
            // A table left by a killed node on this address would send our
            // ports to its dead backends: clear it before programming ours
            // (our own stale table goes with the first rebuild).
            let table = table.clone();
            let addr = self.config.addr;
            self.busy = true;
            ctx.wait(
                async move {
                    nft::probe(&table).await?;
                    let stale = nft::remove_stale_tables(&table, addr).await?;
                    Ok::<_, MeshError>((stale, forward::ensure_accept(addr).await))
                }
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.busy = false;
                    match res {
                        Ok((stale, accept)) => {
                            for name in stale {
                                tracing::warn!(table = %name, "mesh: removed a stale nft table left on this address");
                            }
                            act.log_accept(accept);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "mesh: the kernel data path does not work here");
                            act.error = Some(e);
                        }
                    }
                    act.sync(ctx);
                }),
            );
        } else {
            self.publish();
        }
        ctx.run_interval(self.config.retry_every, |act, ctx| {
            let retry_kernel = matches!(act.path, Path::Kernel { ready: false, .. })
                && act.error.as_ref().is_some_and(MeshError::is_retryable);
            if !act.failures.is_empty() || retry_kernel {
                act.sync(ctx);
            }
        });
        ctx.run_interval(Duration::from_secs(2), |act, _| act.export_proxy_stats());
        if matches!(self.path, Path::Kernel { .. }) && forward::applies_to(self.config.addr) {
            // A restarted firewall or Docker engine may have taken the
            // accept away: look again now and then.
            ctx.run_interval(ACCEPT_CHECK_EVERY, |act, ctx| {
                if act.done {
                    return;
                }
                let addr = act.config.addr;
                ctx.spawn(
                    async move { forward::ensure_accept(addr).await }
                        .into_actor(act)
                        .map(|accept, act, _| act.log_accept(accept)),
                );
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if !self.done {
            // Stopped without a Shutdown (the system is going down): still
            // leave no rules behind.
            self.teardown_blocking();
        }
        self.export_proxy_stats();
        tracing::info!(node = %self.config.node_id, "mesh programmer stopped");
    }
}

impl Handler<SetTable> for MeshProgrammer {
    type Result = ();

    fn handle(&mut self, msg: SetTable, ctx: &mut Self::Context) {
        let started = Instant::now();
        self.desired = plan::desired(&msg.0, self.config.addr);
        self.sync(ctx);
        self.metrics.handled(started, self.error.is_none());
    }
}

impl Handler<GetStatus> for MeshProgrammer {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<Shutdown> for MeshProgrammer {
    type Result = ResponseActFuture<Self, Result<(), MeshError>>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        self.done = true;
        let script = match &mut self.path {
            Path::Userspace(proxy) => {
                proxy.close_all();
                None
            }
            Path::Kernel { table, .. } => Some(table.teardown()),
        };
        self.current = DesiredMesh::empty(self.config.addr);
        self.failures.clear();
        self.publish();
        let addr = self.config.addr;
        Box::pin(
            async move {
                match script {
                    Some(s) => {
                        let _ = tokio::task::spawn_blocking(move || forward::remove_accept(addr)).await;
                        nft::run(&s).await
                    }
                    None => Ok(()),
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                if let Path::Kernel { held, ready, table } = &mut act.path {
                    held.clear();
                    *ready = false;
                    match &res {
                        Ok(()) => tracing::info!(table = %table.qualified(), "mesh: nft table removed"),
                        Err(e) => tracing::warn!(table = %table.qualified(), error = %e, "mesh: removing the nft table failed"),
                    }
                }
                act.metrics.handled(started, res.is_ok());
                ctx.stop();
                res
            }),
        )
    }
}
