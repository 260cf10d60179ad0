//! `manager` is the control plane that runs on manager nodes, on top of
//! the node runtime every node runs (`worker::node`):
//!
//! - [`raft`]: RaftLog, the replicated log on disk and the store it builds
//!   ([`store`]); raft messages travel over the cluster port.
//! - [`orchestrator`], [`scheduler`]: the leader's control loops, thin actors
//!   ([`control`]) over pure cores.
//! - [`dispatcher`]: sessions with every node: assignments out, status in
//!   (the session connection itself is served by [`dispatcher::session`]).
//! - [`liveness`]: which nodes count as live (gossip and, for nodes the
//!   store knows, a session with the leader).
//! - [`join`]: admitting nodes by token; [`ca`]: the cluster CA that signs
//!   their certificates and makes the tokens (only managers hold it).
//! - [`gossip_keys`]: the leader gives a cluster without gossip keys its
//!   first one (a control loop, like the orchestrator's).
//! - [`roles`]: promotions and demotions through raft membership.
//! - [`network`]: the overlay networks' allocator and table.
//! - [`events`]: the numbered stream of applied changes; [`mesh`]: the
//!   routing-mesh table every node is sent.
//! - [`api`]: the HTTP JSON API for the CLI, with `/metrics`.
//! - [`ui`]: the web view at `/ui` (a page built into the binary, live over
//!   server-sent events).
//!
//! [`Manager::start`] wires them together; `cli`'s daemon calls it.

pub mod api;
pub mod ca;
pub mod control;
pub mod dispatcher;
pub mod events;
pub mod gossip_keys;
pub mod join;
pub mod liveness;
pub mod mesh;
pub mod network;
pub mod orchestrator;
pub mod raft;
pub mod roles;
pub mod scheduler;
pub mod store;
#[cfg(test)]
mod testing;
pub mod ui;

use std::path::Path;

use actix::Addr;
use common::wire::{Frame, Hello, PeerInfo};
use common::NodeId;
use tokio::sync::{mpsc, watch};
use worker::node::net::{self, Inbound};
use worker::node::tls::Tls;

use control::{ControlLoop, DiskAlarms, LiveNodes};
use dispatcher::Dispatcher;
use raft::{RaftHandles, RaftLog, RaftOptions, RaftStatus, SharedStore};

pub struct ManagerConfig<'a> {
    pub node_id: NodeId,
    pub raft_id: u64,
    pub data_dir: &'a Path,
    pub bootstrap: bool,
    pub peers: Vec<PeerInfo>,
    /// Nodes alive in gossip, as this node sees them.
    pub gossip: LiveNodes,
    /// Nodes whose disk alarm gossip shows raised.
    pub disk_alarms: DiskAlarms,
    pub compact_every: u64,
    /// `--storage-quota`: at most this many bytes of raft files; `None`
    /// takes [`raft::storage::default_quota`].
    pub storage_quota: Option<u64>,
    /// This node's TLS identity, for the connections the manager dials.
    pub tls: Tls,
    /// The key of the raft files (see [`raft::storage::keys`]).
    pub data_key: raft::storage::keys::DataKey,
}

#[derive(Clone)]
pub struct Manager {
    pub raft: Addr<RaftLog>,
    pub store: SharedStore,
    pub status: watch::Receiver<RaftStatus>,
    pub applied: watch::Receiver<u64>,
    pub dispatcher: Addr<Dispatcher>,
    /// When the leader last heard from each node's session.
    pub heard: dispatcher::Heard,
    /// The live nodes ([`liveness`]): what `node ls` calls Ready and the
    /// leader's loops treat as up.
    pub live: LiveNodes,
    /// Held while a raft membership change is in flight.
    pub conf_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    pub events: std::sync::Arc<events::EventHub>,
    pub tls: Tls,
    /// The runtime that serves this manager's cluster-port connections
    /// (TLS, hellos, sessions, raft peers, joins): threads of their own, so
    /// that raft's messages and thousands of sessions' frames are read
    /// while the loops keep the node's actix thread busy (see
    /// [`Manager::start`]).
    pub io: tokio::runtime::Handle,
}

/// Threads of the runtime that serves a manager's cluster port.
pub const IO_THREADS: usize = 2;

/// The cluster-port runtime; it lives as long as the process (as the raft
/// log's arbiter does).
fn io_runtime() -> Result<tokio::runtime::Handle, raft::RaftError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(IO_THREADS)
        .thread_name("cluster-io")
        .enable_all()
        .build()
        .map_err(|_| raft::RaftError::Thread("cannot start the cluster-port runtime"))?;
    let handle = rt.handle().clone();
    std::mem::forget(rt);
    Ok(handle)
}

impl Manager {
    /// Starts the raft log and the leader's loops; returns the sender that
    /// the cluster-port router hands manager connections to (bounded by
    /// [`net::INBOUND_QUEUE`]; each is taken at once and served by a task of
    /// its own on [`Manager::io`], where the caller also runs the listener).
    /// The raft log runs on an arbiter of its own and the loops on the
    /// caller's actix thread; were the connections served there too, a
    /// leader busy placing tasks for a thousand sessions would read its
    /// followers' raft answers late and lose its quorum check.
    pub fn start(cfg: ManagerConfig) -> Result<(Manager, mpsc::Sender<Inbound>), raft::RaftError> {
        let transport = raft::transport::Transport::new(cfg.node_id.clone(), cfg.raft_id, &cfg.peers, cfg.tls.clone());
        let hub = events::EventHub::new();
        let raft_dir = cfg.data_dir.join("raft");
        let quota = cfg.storage_quota.or_else(|| raft::storage::default_quota(&raft_dir));
        match quota {
            Some(bytes) => tracing::info!(bytes, dir = %raft_dir.display(), "raft storage quota"),
            None => tracing::warn!(dir = %raft_dir.display(), "cannot read the free space: no raft storage quota"),
        }
        let RaftHandles { addr, store, status, applied } = RaftLog::start(
            &raft_dir,
            RaftOptions {
                raft_id: cfg.raft_id,
                bootstrap: cfg.bootstrap,
                compact_every: cfg.compact_every,
                events: hub.clone(),
                quota,
                key: cfg.data_key,
            },
            transport,
        )?;
        let heard = dispatcher::Heard::default();
        let live = liveness::start(
            cfg.gossip.clone(),
            store.clone(),
            status.clone(),
            applied.clone(),
            heard.clone(),
            addr.clone(),
        );
        // Nodes coming and going, as this manager sees them.
        {
            let (hub, store, mut live) = (hub.clone(), store.clone(), live.clone());
            actix::spawn(async move {
                let mut before = live.borrow_and_update().clone();
                while live.changed().await.is_ok() {
                    let after = live.borrow_and_update().clone();
                    let evs = events::liveness_events(&before, &after, &store.read(), common::time::now_ms());
                    hub.publish(evs);
                    before = after;
                }
            });
        }
        // Disk alarms raised and cleared, as this manager's gossip sees them.
        {
            let (hub, store, mut alarms) = (hub.clone(), store.clone(), cfg.disk_alarms.clone());
            actix::spawn(async move {
                let mut before = alarms.borrow_and_update().clone();
                while alarms.changed().await.is_ok() {
                    let after = alarms.borrow_and_update().clone();
                    hub.publish(events::disk_alarm_events(&before, &after, &store.read(), common::time::now_ms()));
                    before = after;
                }
            });
        }
        ControlLoop::start(
            orchestrator::Orchestrator::default(),
            addr.clone(),
            store.clone(),
            status.clone(),
            applied.clone(),
            live.clone(),
        );
        ControlLoop::start(
            scheduler::Scheduler::default(),
            addr.clone(),
            store.clone(),
            status.clone(),
            applied.clone(),
            live.clone(),
        );
        ControlLoop::start(
            gossip_keys::FirstGossipKey::default(),
            addr.clone(),
            store.clone(),
            status.clone(),
            applied.clone(),
            live.clone(),
        );
        let dispatcher = Dispatcher::start(addr.clone(), store.clone(), status.clone(), applied.clone(), heard.clone());
        let io = io_runtime()?;
        let manager = Manager {
            raft: addr,
            store,
            status,
            applied,
            dispatcher,
            heard,
            live,
            conf_lock: Default::default(),
            events: hub,
            tls: cfg.tls,
            io: io.clone(),
        };
        // Raft membership goes by gossip: whether a manager can vote is
        // about its raft links, not its session with the dispatcher.
        roles::RoleManager::start(manager.clone(), cfg.gossip.clone());
        let (tx, mut rx) = mpsc::channel::<Inbound>(net::INBOUND_QUEUE);
        let m = manager.clone();
        io.spawn(async move {
            while let Some(inbound) = rx.recv().await {
                let m = m.clone();
                tokio::spawn(async move {
                    let peer = inbound.peer;
                    if let Err(e) = m.accept(inbound).await {
                        tracing::debug!(%peer, error = %e, "manager connection ended");
                    }
                });
            }
        });
        Ok((manager, tx))
    }

    pub fn is_leader(&self) -> bool {
        self.status.borrow().is_leader
    }

    /// The leader's cluster address, if known.
    pub fn leader_addr(&self) -> Option<std::net::SocketAddr> {
        let leader = self.status.borrow().leader_id;
        self.store.read().addr_of_raft_id(leader)
    }

    async fn accept(&self, inbound: Inbound) -> Result<(), net::NetError> {
        // The permit is the connection's place under the cluster port's cap.
        let Inbound { hello, conn, peer, permit: _permit } = inbound;
        match hello {
            Hello::Join { token, hostname, advertise_addr, protocol, csr } => {
                join::handle_join(
                    conn,
                    peer,
                    token,
                    hostname,
                    advertise_addr,
                    protocol,
                    csr,
                    self.store.clone(),
                    self.raft.clone(),
                )
                .await
            }
            Hello::Raft { .. } => raft::transport::serve_peer(conn, self.raft.clone()).await,
            Hello::Session { node_id } => {
                dispatcher::session::serve(conn, node_id, &self.dispatcher, &self.heard, &self.store, &self.status)
                    .await
            }
            Hello::Logs(_) => Err(net::NetError::Unexpected("logs hello at the manager".into())),
            Hello::Renew { node_id, csr } => self.renew(conn, node_id, csr).await,
        }
    }

    /// Signs a certificate for `node` with the role the store gives it now,
    /// for the cluster's certificate lifetime: a renewal, or a change of
    /// role (the caller's identity was checked against its current
    /// certificate, and the router refuses removed nodes' before this).
    async fn renew(&self, mut conn: net::Conn, node: NodeId, csr: Vec<u8>) -> Result<(), net::NetError> {
        let (role, revoked, ca, lifetime) = {
            let s = self.store.read();
            let c = &s.cluster;
            (s.nodes.get(&node).map(|n| n.role), c.revoked.contains(&node), c.ca.clone(), c.cert_expiry())
        };
        let role = match role {
            Some(role) if !revoked => role,
            _ => {
                tracing::warn!(%node, "refused to renew the certificate of a node not in the cluster");
                let reason = format!("node {node} is not part of this cluster (was it removed?)");
                return net::send(&mut conn, Frame::Refused { reason }).await;
            }
        };
        let answer = match ca.sign(&csr, &node, role, lifetime) {
            Ok(certificate) => {
                tracing::info!(%node, %role, valid_for = ?lifetime, "issued a node certificate (renewal or new role)");
                Frame::Certificate { certificate, ca_certificate: ca.cert_pem.clone() }
            }
            Err(e) => Frame::Refused { reason: format!("cannot issue a certificate: {e}") },
        };
        net::send(&mut conn, answer).await
    }
}
