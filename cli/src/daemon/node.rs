//! Running a node: the cluster port, gossip, the task supervisor and the
//! mesh on every node, the manager's actors on managers, the session with
//! the leader and the HTTP API, until shutdown or a change of role.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use common::gossip_key::GossipKeyRing;
use common::mesh::{MeshFailure, MeshTable};
use common::network::AddrPool;
use common::node::{Node, Role};
use common::secret::FileData;
use common::task::{Task, TaskStatusUpdate};
use common::time::now_ms;
use common::wire::{LogLine, LogRequest, PeerInfo};
use common::{NodeId, TaskId};
use futures::stream::{BoxStream, StreamExt};
use manager::api::{self, ApiState};
use manager::ca::ClusterCa;
use manager::raft::Propose;
use manager::store::{ClusterInfo, Command};
use manager::{Manager, ManagerConfig};
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use worker::agent::{Agent, AgentSink};
use worker::mesh::{self, DataPath, MeshConfig, MeshProgrammer, SetTable};
use worker::node::membership::{self, fact, GossipKeys, MembershipConfig};
use worker::node::net::{self, Router};
use worker::node::tls::Tls;
use worker::runtime::docker::DockerRuntime;
use worker::runtime::files::TaskFiles;
use worker::runtime::Runtime;
use worker::supervisor::archive::LogArchive;
use worker::supervisor::{Assign, SupervisorConfig, TaskSupervisor};

use super::role::renew_certificate;
use super::state::{save_state, NodeState};
use super::{Launch, Outcome};

/// Forwards the agent's assignments to the supervisor and keeps the list
/// of managers fresh (on disk and as gossip seeds).
struct Sink {
    supervisor: actix::Addr<TaskSupervisor>,
    data_dir: PathBuf,
    state: Arc<RwLock<NodeState>>,
    /// Gossip (none where a board stands in for it).
    membership: Option<actix::Addr<membership::Membership>>,
    /// The MeshProgrammer; tables go to it in the order they arrive, before
    /// the assignments that follow them (a task leaves the rotation before
    /// its stop reaches the supervisor).
    mesh: actix::Addr<MeshProgrammer>,
    /// The overlay networks' part of each table, for `worker::net`.
    networks: watch::Sender<Vec<common::network::NetworkEntry>>,
    /// Told when the node's role changed (and which managers can certify
    /// it): the process restarts in its new role.
    role_changed: mpsc::UnboundedSender<(Role, Vec<PeerInfo>)>,
    /// Where the tasks' secrets and configs are written.
    files: Arc<TaskFiles>,
    /// What gossip seals with.
    gossip_keys: GossipKeys,
    /// The node's identity, whose key seals the gossip keys' copy on disk
    /// (it changes when the certificate is renewed).
    tls: Tls,
    /// The cluster port's router, told which nodes were removed.
    router: Router,
}

impl AgentSink for Sink {
    fn mesh(&self, table: MeshTable) {
        self.networks.send_if_modified(|n| {
            let changed = *n != table.networks;
            if changed {
                n.clone_from(&table.networks);
            }
            changed
        });
        self.mesh.do_send(SetTable(table));
    }
    fn assign(&self, full: bool, tasks: Vec<Task>, removed: Vec<TaskId>) {
        // A task no longer here takes its files with it.
        if full {
            self.files.retain(&tasks.iter().map(|t| t.id.clone()).collect());
        }
        for id in &removed {
            self.files.forget(id);
        }
        self.supervisor.do_send(Assign { full, tasks, removed });
    }
    fn files(&self, files: Vec<FileData>) {
        self.files.set_values(files);
    }
    fn gossip_keys(&self, ring: GossipKeyRing) {
        if self.gossip_keys.set(ring.clone()) {
            tracing::info!(key = ?ring.current.as_ref().map(|k| k.id), switch_at = ring.switch_at, "gossip keys updated");
            if let Err(e) = super::gossip::save(&self.data_dir, &self.tls.identity().storage_key(), &ring) {
                tracing::warn!(error = %e, "cannot save the gossip keys");
            }
        }
    }
    fn revoked(&self, nodes: std::collections::BTreeSet<NodeId>) {
        tracing::info!(removed_nodes = nodes.len(), "certificates of removed nodes are refused");
        if let Err(e) = super::state::save_revoked(&self.data_dir, &nodes) {
            tracing::warn!(error = %e, "cannot save the removed nodes");
        }
        self.router.set_revoked(nodes);
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
            if let Some(m) = &self.membership {
                m.do_send(membership::SetSeeds(seeds));
            }
        }
    }
}

fn log_source(runtime: Arc<dyn Runtime>, node: NodeId, archive: Arc<LogArchive>) -> net::LogSource {
    Arc::new(move |req: LogRequest| -> BoxStream<'static, Result<LogLine, String>> {
        let runtime = runtime.clone();
        let node = node.clone();
        // With `service`: the kept logs of its tasks this node removed.
        let kept = match &req.service {
            Some(s) => archive.lines_of(s, req.tail, common::time::now_ms()),
            None => vec![],
        };
        let kept = futures::stream::iter(kept.into_iter().map(Ok::<_, String>));
        let live = futures::stream::once(async move {
            let containers = runtime.list(&node).await.map_err(|e| e.to_string())?;
            // The tasks asked for, and with `service` every container of it
            // still here (kept for its logs after its task went).
            let streams: Vec<_> = containers
                .iter()
                .filter(|c| req.tasks.contains(&c.task_id) || (req.service.is_some() && c.service_id == req.service))
                .map(|c| {
                    let slot = c.slot;
                    runtime.logs(&c.task_id, &c.container_id, req.follow, req.tail).map(move |r| {
                        r.map(|mut l| {
                            l.slot = slot;
                            l
                        })
                    })
                })
                .collect();
            Ok::<_, String>(futures::stream::select_all(streams).map(|r| r.map_err(|e| e.to_string())))
        })
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten();
        kept.chain(live).boxed()
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

pub(crate) struct RunOptions {
    /// A manager's data key of its raft files.
    pub data_key: Option<manager::raft::storage::keys::DataKey>,
    pub snapshot_interval: u64,
    pub storage_quota: Option<u64>,
    pub mesh: Option<DataPath>,
    /// The soft limit on open files, once raised.
    pub open_files: u64,
    /// `--docker-socket`: the API on a unix socket as well.
    pub docker_socket: Option<PathBuf>,
    /// What the node tells the leader it offers.
    pub describe: super::describe::DescribeFlags,
    /// The gossip keys saved in the data directory.
    pub gossip_keys: GossipKeyRing,
    /// `--api-tls`: the API over TLS with client certificates.
    pub api_tls: bool,
    /// `--api-max-connections`.
    pub api_max_connections: usize,
    /// `--default-addr-pool…` at `--init`: committed with the cluster.
    pub addr_pool: AddrPool,
    /// `--init --cert-expiry`: how long the cluster's certificates are valid.
    pub cert_expiry: Duration,
    pub launch: Launch,
}

/// Runs the node; `ca` is there on the first start of a cluster's first
/// manager (`--init`), which commits it to the store.
pub(crate) async fn run_node(
    state: NodeState,
    data_dir: PathBuf,
    ca: Option<ClusterCa>,
    tls: Tls,
    opts: RunOptions,
) -> Result<Outcome> {
    let fresh_init = ca.is_some();
    let quiet = opts.launch.quiet;
    let board = opts.launch.liveness;
    let snapshot_interval = opts.snapshot_interval;
    let cluster_addr = state.cluster_addr();
    let listener = tokio::net::TcpListener::bind(cluster_addr)
        .await
        .with_context(|| format!("cannot listen on the cluster port {cluster_addr}"))?;
    let task_files = Arc::new(TaskFiles::new(TaskFiles::default_dir(&state.node_id)));
    // The overlay networks need the Docker engine (none with a test runtime).
    let mut overlay_docker = None;
    let (runtime, engine_labels): (Arc<dyn Runtime>, _) = match opts.launch.runtime {
        Some(r) => (r, BTreeMap::new()),
        None => {
            let docker = DockerRuntime::connect().await.map_err(|e| {
                anyhow!("cannot use Docker: {e} (is dockerd running and /var/run/docker.sock reachable?)")
            })?;
            let labels = docker.engine_labels().await;
            let docker =
                docker.publish_on(state.advertise_addr).node_hostname(&state.hostname).task_files(task_files.clone());
            overlay_docker = Some(docker.client().clone());
            (Arc::new(docker), labels)
        }
    };
    let description = opts.describe.description(engine_labels);
    let (networks_tx, networks_rx) = watch::channel(Vec::new());
    // The VIPs' nft table goes when the node stops (not on a role change).
    let (stop_vips, vips_stopped) = tokio::sync::oneshot::channel();
    let mut vips = None;
    // The encrypted networks' tunnel goes when the node stops.
    let (stop_overlay, overlay_stopped) = tokio::sync::oneshot::channel();
    let mut overlay = None;
    let gossip_keys = GossipKeys::new(opts.gossip_keys.clone());
    if let Some(docker) = overlay_docker {
        let vip = worker::net::vip::Programmer { node: state.node_id.clone() };
        vips = Some(actix::spawn(vip.run(networks_rx.clone(), vips_stopped)));
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstreams = worker::net::resolver::host_resolvers(&resolv_conf);
        if upstreams.is_empty() {
            tracing::warn!("dns: no nameserver in /etc/resolv.conf: tasks get SERVFAIL for names not in the cluster");
        }
        let resolver = worker::net::resolver::Resolver { node: state.node_id.clone(), upstreams };
        actix::spawn(resolver.run(networks_rx.clone()));
        let tunnel = worker::net::tunnel::TunnelConfig {
            node: state.node_id.clone(),
            cluster_id: state.cluster_id.clone(),
            underlay: state.advertise_addr,
            keys: gossip_keys.clone(),
        };
        let programmer =
            worker::net::Programmer { node: state.node_id.clone(), underlay: state.advertise_addr, docker, tunnel };
        overlay = Some(actix::spawn(programmer.run(networks_rx, overlay_stopped)));
    }
    let shutdown = opts.launch.shutdown.unwrap_or_else(|| Box::pin(wait_for_signal()));
    let data_path = mesh::choose(opts.mesh, &state.node_id, state.advertise_addr).await.map_err(|e| {
        let which = opts.mesh.map(|p| p.to_string()).unwrap_or_else(|| "auto".into());
        anyhow!("cannot use the {which} routing mesh: {e}")
    })?;
    let mut mesh_config = MeshConfig::new(state.node_id.clone(), state.advertise_addr, data_path);
    if opts.launch.light {
        mesh_config.proxy.threads = 0;
    }
    let (programmer, mut mesh_status) = MeshProgrammer::new(mesh_config);
    let mesh_addr = actix::Actor::start(programmer);

    // Gossip: who is alive.
    let facts: BTreeMap<String, String> = [
        (fact::ROLE.to_string(), state.role.to_string()),
        (fact::HOSTNAME.to_string(), state.hostname.clone()),
        (fact::CLUSTER_ADDR.to_string(), cluster_addr.to_string()),
    ]
    .into();
    let base_facts = facts.clone();
    let membership_config = MembershipConfig {
        node_id: state.node_id.clone(),
        cluster_id: state.cluster_id.clone(),
        gossip_addr: cluster_addr,
        seeds: state.managers.iter().map(|m| m.addr).filter(|a| *a != cluster_addr).collect(),
        generation: now_ms(),
        facts,
    };
    let (membership, live_set, _on_board) = match &board {
        None => {
            let (m, live) = membership::start(membership_config, gossip_keys.clone())
                .await
                .map_err(|e| anyhow!("cannot start gossip on {cluster_addr}/udp: {e}"))?;
            (Some(m), live, None)
        }
        Some(board) => {
            let member = membership::MemberFacts {
                facts: membership_config.facts,
                gossip_addr: cluster_addr,
                generation: membership_config.generation,
            };
            let (on, live) = board.join(state.node_id.clone(), member, state.role == Role::Manager);
            (None, live, Some(on))
        }
    };
    let (live_tx, live) = watch::channel(live_set.borrow().nodes.keys().cloned().collect());
    let disk_alarms_of = |set: &membership::LiveSet| -> BTreeMap<NodeId, String> {
        let alarms = set.nodes.iter().filter_map(|(id, m)| m.get(fact::DISK_ALARM).map(|why| (id.clone(), why)));
        alarms.map(|(id, why)| (id, why.to_string())).collect()
    };
    let (alarms_tx, disk_alarms) = watch::channel(disk_alarms_of(&live_set.borrow()));
    {
        let mut live_set = live_set.clone();
        actix::spawn(async move {
            while live_set.changed().await.is_ok() {
                let ids = live_set.borrow().nodes.keys().cloned().collect();
                live_tx.send_replace(ids);
                let alarms = disk_alarms_of(&live_set.borrow());
                alarms_tx.send_if_modified(|old| std::mem::replace(old, alarms.clone()) != alarms);
            }
            tracing::error!("membership stopped; exiting");
            std::process::exit(70);
        });
    }

    // Tasks on this node.
    let (reports_tx, reports_rx) = mpsc::unbounded_channel::<TaskStatusUpdate>();
    let archive = Arc::new(LogArchive::default());
    let config = SupervisorConfig { archive: archive.clone(), ..Default::default() };
    let supervisor =
        actix::Actor::start(TaskSupervisor::with_config(state.node_id.clone(), runtime.clone(), reports_tx, config));

    let router = Router::new(log_source(runtime.clone(), state.node_id.clone(), archive), &tls);
    // Removed nodes stay refused across a restart, before any session.
    router.set_revoked(super::state::load_revoked(&data_dir));
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
            gossip: live.clone(),
            disk_alarms: disk_alarms.clone(),
            compact_every: snapshot_interval,
            storage_quota: opts.storage_quota,
            tls: tls.clone(),
            data_key: opts
                .data_key
                .clone()
                .ok_or_else(|| anyhow!("a manager starts with the key of its raft files"))?,
        })
        .map_err(|e| anyhow!(e))?;
        router.set_manager(inbound);
        if let Some(membership) = &membership {
            publish_disk_alarm(m.status.clone(), membership.clone(), base_facts);
        }
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
    // Dropping `stop_cluster_port` (or sending on it) stops the listener;
    // `cluster_port` resolves once it and its connections are gone.
    let (stop_cluster_port, cluster_port_stopped) = tokio::sync::oneshot::channel::<()>();
    let (cluster_port_done, cluster_port) = tokio::sync::oneshot::channel::<()>();
    let serve = {
        let router = router.clone();
        move |listener| async move {
            router
                .serve(listener, limits, async {
                    let _ = cluster_port_stopped.await;
                })
                .await;
            let _ = cluster_port_done.send(());
        }
    };
    match &mgr {
        // A manager serves its cluster port on its own runtime (see
        // `Manager::io`): the listener moves there.
        Some(m) => {
            let listener = listener.into_std().context("cannot move the cluster port's listener")?;
            m.io.spawn(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener).await,
                    Err(e) => tracing::error!(error = %e, "cannot serve the cluster port"),
                }
            });
        }
        None => {
            actix::spawn(serve(listener));
        }
    }

    if let Some(ca) = ca {
        let m = mgr.as_ref().expect("init makes a manager");
        bootstrap_cluster(m, &state, ca, gossip_keys.get(), opts.addr_pool.clone(), opts.cert_expiry).await?;
        save_state(&data_dir, &state)?;
        if !quiet {
            print_join_commands(m, &state);
        }
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
        files: task_files,
        role_changed: role_tx,
        supervisor,
        data_dir: data_dir.clone(),
        state: shared_state,
        membership,
        mesh: mesh_addr.clone(),
        networks: networks_tx,
        gossip_keys: gossip_keys.clone(),
        tls: tls.clone(),
        router,
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
    let renewal = super::renew::keep_renewed(tls.clone(), &data_dir, managers.clone(), gossip_keys.clone());
    let agent = Agent { node_id: state.node_id.clone(), managers, tls: tls.clone(), description };
    actix::spawn(agent.run(sink, reports_rx, failures_rx));

    let api_tls = match (&mgr, opts.api_tls) {
        (Some(m), true) => {
            let (config, renewal) = api_server_tls(m, &state, cluster_addr, &data_dir)
                .await
                .with_context(|| format!("--api-tls on {}", state.api_addr))?;
            actix::spawn(renewal.run(m.clone()));
            Some(config)
        }
        _ => None,
    };
    let asked = api::limits::Limits { max_connections: opts.api_max_connections, ..Default::default() };
    let api_limits = asked.clone().fit_to(opts.open_files);
    if api_limits.max_connections != asked.max_connections {
        tracing::warn!(
            open_files = opts.open_files,
            connections = api_limits.max_connections,
            handshakes = api_limits.max_handshaking,
            "the open-file limit is low: the API takes fewer connections than asked"
        );
    }
    let api_state =
        ApiState { node_id: state.node_id.clone(), hostname: state.hostname.clone(), manager: mgr, live, disk_alarms };
    let server = (!opts.launch.no_api)
        .then(|| {
            api::serve(state.api_addr, opts.docker_socket.as_deref(), api_tls, api_state, &api_limits).with_context(
                || match &opts.docker_socket {
                    Some(p) => format!("cannot listen for the API on {} and {}", state.api_addr, p.display()),
                    None => format!("cannot listen for the API on {}", state.api_addr),
                },
            )
        })
        .transpose()?;
    let handle = server.as_ref().map(|s| s.handle());
    if let Some(server) = server {
        actix::spawn(server);
    }
    tracing::info!(node = %state.node_id, hostname = %state.hostname, role = %state.role, cluster = %cluster_addr, api = %state.api_addr, "node running");

    let change_role = async {
        while let Some((role, managers)) = role_rx.recv().await {
            let addrs: Vec<SocketAddr> = managers.iter().map(|m| m.addr).collect();
            match renew_certificate(&tls, &data_dir, &state.node_id, role, &addrs).await {
                Ok(()) => {
                    // The new certificate came with a new key: the gossip
                    // keys are sealed again with the storage key it gives.
                    let saved = super::gossip::storage_key(&data_dir)
                        .and_then(|k| super::gossip::save(&data_dir, &k, &gossip_keys.get()));
                    if let Err(e) = saved {
                        tracing::warn!(error = %e, "cannot save the gossip keys for the new role");
                    }
                    return (role, managers);
                }
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
    // The renewal stops with the node or when its role changes (the new
    // role's certificate is saved by then; a renewal cut short saved
    // nothing or a whole identity of the old role, which the new role's
    // replaces).
    let new_role = tokio::select! {
        _ = shutdown => None,
        role = change_role => Some(role),
        () = renewal => None,
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
        if let Some(handle) = &handle {
            handle.stop(true).await;
        }
        return Ok(Outcome::RoleChanged(role));
    }
    // The mesh goes first: no nftables table outlives the node.
    match mesh_addr.send(mesh::Shutdown).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "routing mesh not fully removed"),
        Err(e) => tracing::warn!(error = %e, "routing mesh unreachable at shutdown"),
    }
    let _ = stop_vips.send(());
    if let Some(vips) = vips {
        if tokio::time::timeout(Duration::from_secs(5), vips).await.is_err() {
            tracing::warn!("the VIP table was not removed within 5 s");
        }
    }
    let _ = stop_overlay.send(());
    if let Some(overlay) = overlay {
        if tokio::time::timeout(Duration::from_secs(5), overlay).await.is_err() {
            tracing::warn!("the encrypted tunnel's rules were not removed within 5 s");
        }
    }
    if let Some(handle) = &handle {
        handle.stop(true).await;
    }
    Ok(Outcome::Stopped)
}

/// Gossips this manager's disk alarm (the [`fact::DISK_ALARM`] key beside
/// `facts`) whenever raft raises or clears it, so every manager's `node ls`
/// and event stream show it, even while this one cannot write to raft.
fn publish_disk_alarm(
    mut status: watch::Receiver<manager::raft::RaftStatus>,
    membership: actix::Addr<membership::Membership>,
    facts: BTreeMap<String, String>,
) {
    actix::spawn(async move {
        let mut shown: Option<String> = None;
        loop {
            let alarm = status.borrow_and_update().disk_alarm.clone();
            if alarm != shown {
                let mut facts = facts.clone();
                if let Some(why) = &alarm {
                    facts.insert(fact::DISK_ALARM.to_string(), why.clone());
                }
                match membership.send(membership::SetFacts(facts)).await {
                    Ok(Ok(())) => shown = alarm,
                    // Gossip restarting: the next status change (a tick) retries.
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot gossip the disk alarm yet"),
                    Err(_) => return,
                }
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The API's TLS side: its certificate names the API's address, the
/// cluster address, loopback, `localhost` and the hostname. Also makes the
/// first admin's bundle.
async fn api_server_tls(
    m: &Manager,
    state: &NodeState,
    cluster_addr: SocketAddr,
    data_dir: &Path,
) -> Result<(rustls::ServerConfig, manager::api::certs::ApiCertRenewal)> {
    let mut ips = vec![cluster_addr.ip(), std::net::Ipv4Addr::LOCALHOST.into(), std::net::Ipv6Addr::LOCALHOST.into()];
    if !state.api_addr.ip().is_unspecified() {
        ips.push(state.api_addr.ip());
    }
    ips.sort();
    ips.dedup();
    let mut names = vec!["localhost".to_string()];
    let dns_name = |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if dns_name(&state.hostname) && state.hostname != "localhost" {
        names.push(state.hostname.clone());
    }
    let tls = manager::api::certs::server_tls(m, &ips, &names, Duration::from_secs(60)).await?;
    let bundle = write_admin_bundle(m, data_dir, &state.hostname)?;
    tracing::info!(api = %state.api_addr, ?ips, admin_bundle = %bundle.display(), "the API requires client certificates (TLS)");
    Ok(tls)
}

/// The first admin's bundle, `DATA_DIR/api-client/{ca,cert,key}.pem` (owner
/// only), made once: whoever can read the data dir is root on this manager
/// anyway. With it, `shoal cert issue` gives others theirs.
fn write_admin_bundle(m: &Manager, data_dir: &Path, hostname: &str) -> Result<PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use worker::node::api_tls::{sign_client_csr, ApiRole, ClientRequest};
    let dir = data_dir.join("api-client");
    if dir.join("key.pem").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let ca = m.store.read().cluster.ca.clone();
    let req = ClientRequest::new()?;
    let name: String = format!("admin@{hostname}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-@".contains(*c))
        .take(64)
        .collect();
    let cert = sign_client_csr(&ca.cert_pem, &ca.key_pem, req.csr_pem(), &name, ApiRole::Admin)?;
    // The key last: its presence says the bundle is whole.
    for (file, text, mode) in
        [("ca.pem", ca.cert_pem.as_str(), 0o644), ("cert.pem", &cert, 0o644), ("key.pem", &req.key_pem(), 0o600)]
    {
        let path = dir.join(file);
        let tmp = dir.join(format!("{file}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// The first manager commits the cluster's identity and itself.
async fn bootstrap_cluster(
    m: &Manager,
    state: &NodeState,
    ca: ClusterCa,
    gossip_keys: GossipKeyRing,
    addr_pool: AddrPool,
    cert_expiry: Duration,
) -> Result<()> {
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
        gossip_keys,
        revoked: Default::default(),
        addr_pool,
        cert_expiry_ms: Some(cert_expiry.as_millis() as u64),
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
