//! Dispatcher: the leader's side of every node's session. Each node first
//! gets its full assignment set, then only what changed; its status reports
//! are gathered for a few milliseconds and proposed as one entry.
//!
//! Each session's queue is bounded ([`SESSION_QUEUE`]): a node that cannot
//! keep up is dropped, not buffered for without limit, and gets its full
//! set again when it reconnects.
//!
//! When the leader last heard from each node's session is kept in [`Heard`],
//! which the liveness rule reads (`crate::liveness`).
//!
//! Layout: this file is the actor; [`session`] serves one node's session
//! connection (hello answer, frames out, reports in) against it; [`push`]
//! says what changed in each node's assignment set since it was last sent,
//! from the store's change feed ([`diff`] compares two whole sets).

pub mod diff;
pub mod push;
pub mod session;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::mesh::{MeshFailure, MeshTable};
use common::sched::NodeDescription;
use common::secret::{FileData, Kind};
use common::task::{Task, TaskStatusUpdate};
use common::time::{now_ms, Millis};
use common::wire::Frame;
use common::NodeId;
use tokio::sync::{mpsc, watch, Notify};
use worker::node::metrics::{metrics, ActorMetrics};

use crate::control::WakeUp;
use crate::raft::{Propose, RaftLog, RaftStatus, SharedStore};
use crate::store::Command;

/// How long status reports wait to be batched.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// A batch this large is proposed at once.
pub const BATCH_MAX: usize = 2_000;
/// Each session's writer sends its own heartbeats (`session`), at this
/// period with jitter; the node answers each.
pub const HEARTBEAT: Duration = worker::agent::HEARTBEAT;
/// How often the dispatcher checks that it still leads and drops the
/// sessions that ended.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Frames queued for one node and not yet written to its connection: a
/// mesh table and an assignment diff per store change. A node this far
/// behind is not reading.
pub const SESSION_QUEUE: usize = 512;
/// How long writing one frame to a node may take before its session ends.
pub const SESSION_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// When the leader last heard from each node over its session (any frame,
/// or the session opening), shared by the session connections, which note
/// it, and the liveness rule (`crate::liveness`), which reads it. A shared
/// map rather than messages, so that a busy dispatcher mailbox does not
/// make nodes look silent.
#[derive(Clone, Default)]
pub struct Heard {
    at: Arc<parking_lot::Mutex<HashMap<NodeId, Millis>>>,
    /// Signalled when a session opens (a node may have come back).
    opened: Arc<Notify>,
}

impl Heard {
    pub fn note(&self, node: &NodeId, now: Millis) {
        self.at.lock().insert(node.clone(), now);
    }

    fn opened(&self, node: &NodeId, now: Millis) {
        self.note(node, now);
        self.opened.notify_one();
    }

    /// Forgets every node: this manager no longer leads.
    fn clear(&self) {
        self.at.lock().clear();
    }

    pub fn snapshot(&self) -> HashMap<NodeId, Millis> {
        self.at.lock().clone()
    }

    /// Resolves once a session opened since the last call (a wake-up is
    /// never lost: one that came with nobody waiting is kept).
    pub async fn session_opened(&self) {
        self.opened.notified().await
    }
}

/// The dispatcher's end of a session's bounded queue. When a frame does
/// not fit, the session is dropped rather than buffered for without limit:
/// its connection closes, the node reconnects, and its new session starts
/// with the full assignment set, so it misses nothing that the dropped
/// frames carried.
struct SessionTx {
    tx: mpsc::Sender<Frame>,
    ended: Option<Ended>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The queue was full.
    Lagging,
    /// The session's connection is gone.
    Closed,
}

impl SessionTx {
    fn new(tx: mpsc::Sender<Frame>) -> Self {
        SessionTx { tx, ended: None }
    }

    /// Queues a frame; once one did not fit, nothing more is queued (see
    /// [`Dispatcher::drop_ended`]).
    fn send(&mut self, frame: Frame) -> Result<(), Ended> {
        if let Some(ended) = self.ended {
            return Err(ended);
        }
        self.tx.try_send(frame).map_err(|e| {
            let ended = match e {
                mpsc::error::TrySendError::Full(_) => Ended::Lagging,
                mpsc::error::TrySendError::Closed(_) => Ended::Closed,
            };
            self.ended = Some(ended);
            ended
        })
    }
}

struct Session {
    id: u64,
    tx: SessionTx,
    /// What this node was last sent; nothing until the full set went out.
    sent: push::Sent,
    /// The mesh table went out (it is resent to all when it changes).
    mesh_sent: bool,
    /// The secrets and configs whose values this node was last sent.
    files_sent: BTreeSet<(Kind, String)>,
    /// The gossip key ring this node was last sent.
    gossip_keys_sent: Option<common::gossip_key::GossipKeyRing>,
    revoked_sent: Option<std::collections::BTreeSet<NodeId>>,
}

pub struct Dispatcher {
    raft: Addr<RaftLog>,
    store: SharedStore,
    status: watch::Receiver<RaftStatus>,
    sessions: HashMap<NodeId, Session>,
    reports: Vec<TaskStatusUpdate>,
    flush_queued: bool,
    mesh: MeshTable,
    managers: Vec<common::wire::PeerInfo>,
    /// Published ports each node reports it cannot serve.
    mesh_failures: BTreeMap<NodeId, Vec<MeshFailure>>,
    metrics: ActorMetrics,
    wake: WakeUp,
    heard: Heard,
    /// Where the dispatcher is in the store's change feed.
    tracker: push::Tracker,
    /// The mesh table and managers list held are the store's as of the
    /// last store change: false until a push to all ran, and again after
    /// a store change found no session to push to.
    pushed_all: bool,
}

impl Dispatcher {
    pub fn start(
        raft: Addr<RaftLog>,
        store: SharedStore,
        status: watch::Receiver<RaftStatus>,
        applied: watch::Receiver<u64>,
        heard: Heard,
    ) -> Addr<Self> {
        let wake = WakeUp::default();
        let addr = Dispatcher {
            raft,
            store,
            status,
            sessions: HashMap::new(),
            reports: Vec::new(),
            flush_queued: false,
            mesh: MeshTable::default(),
            managers: Vec::new(),
            mesh_failures: BTreeMap::new(),
            metrics: metrics().actor("dispatcher"),
            wake: wake.clone(),
            heard,
            tracker: push::Tracker::default(),
            pushed_all: false,
        }
        .start();
        let a = addr.clone();
        let mut applied = applied;
        let depth = metrics().actor("dispatcher");
        actix::spawn(async move {
            while applied.changed().await.is_ok() {
                if !wake.wake(&a, || StoreChanged, &depth) {
                    return;
                }
            }
        });
        addr
    }

    /// Removes the sessions whose queue overflowed or whose connection
    /// ended (see [`SessionTx`]).
    fn drop_ended(&mut self) {
        self.sessions.retain(|node, s| match s.tx.ended {
            None => true,
            Some(Ended::Closed) => false,
            Some(Ended::Lagging) => {
                tracing::warn!(
                    %node,
                    session = s.id,
                    queued = SESSION_QUEUE,
                    "node session cannot keep up; dropped it (the node reconnects and gets its full set)"
                );
                false
            }
        });
    }

    fn push_all(&mut self) {
        let store = self.store.read();
        let managers = {
            let st = self.status.borrow();
            let members: Vec<u64> = st.voters.iter().chain(&st.learners).copied().collect();
            store.members_and_managers(&members)
        };
        // A promotion or demotion reaches every node (the node itself
        // restarts in its new role) even when no task changes.
        let managers_changed = managers != self.managers;
        self.managers = managers.clone();
        let dirty = self.tracker.take(&store);
        // The mesh goes first: a task leaves the rotation before the
        // assignment that stops it is sent. Recomputed only when a change
        // can reach it.
        let mesh_changed = dirty.mesh && {
            let mesh = crate::mesh::table(&store);
            let changed = mesh != self.mesh;
            self.mesh = mesh;
            changed
        };
        // A removed node's session ends here, before it could be sent the
        // gossip key its removal brought.
        self.sessions.retain(|node, s| {
            let member = store.nodes.contains_key(node);
            if !member {
                tracing::info!(%node, session = s.id, "node removed; its session ends");
            }
            member
        });
        let gossip_keys = &store.cluster.gossip_keys;
        for session in self.sessions.values_mut() {
            if !gossip_keys.is_empty() && session.gossip_keys_sent.as_ref() != Some(gossip_keys) {
                let _ = session.tx.send(Frame::GossipKeys(gossip_keys.clone()));
                session.gossip_keys_sent = Some(gossip_keys.clone());
            }
            let revoked = &store.cluster.revoked;
            if !revoked.is_empty() && session.revoked_sent.as_ref() != Some(revoked) {
                let _ = session.tx.send(Frame::Revoked(revoked.clone()));
                session.revoked_sent = Some(revoked.clone());
            }
            if mesh_changed || !session.mesh_sent {
                let _ = session.tx.send(Frame::Mesh(self.mesh.clone()));
                session.mesh_sent = true;
            }
        }
        for (node, session) in self.sessions.iter_mut() {
            // Only what changed for this node (see `push`).
            let (update, files_changed) = session.sent.update(&store, node, &dirty);
            // The values the tasks need go before the tasks.
            if files_changed {
                let files = files_needed(push::assignment_set(&store, node));
                if files != session.files_sent {
                    let _ = session.tx.send(Frame::Files(file_data(&store, &files)));
                    session.files_sent = files;
                }
            }
            let frame = match update {
                push::Update::Full(tasks) => {
                    Some(Frame::Assignments { full: true, tasks, removed: vec![], managers: managers.clone() })
                }
                update @ push::Update::Diff { .. } if update.is_empty() && !managers_changed => None,
                push::Update::Diff { upserts, removed } => {
                    Some(Frame::Assignments { full: false, tasks: upserts, removed, managers: managers.clone() })
                }
            };
            if let Some(f) = frame {
                let _ = session.tx.send(f);
            }
        }
    }

    fn flush(&mut self) {
        self.flush_queued = false;
        if self.reports.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.reports);
        let n = batch.len();
        let raft = self.raft.clone();
        actix::spawn(async move {
            match raft.send(Propose(Command::UpdateTaskStatus(batch))).await {
                Ok(Ok(())) => tracing::trace!(reports = n, "status batch applied"),
                Ok(Err(e)) => tracing::warn!(reports = n, error = %e, "status batch not applied"),
                Err(e) => tracing::error!(error = %e, "raft log unreachable"),
            }
        });
    }
}

/// The secrets and configs these tasks use.
fn files_needed<'a>(tasks: impl Iterator<Item = &'a Task>) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    for t in tasks {
        out.extend(t.spec.secrets.iter().map(|r| (Kind::Secret, r.id.to_string())));
        out.extend(t.spec.configs.iter().map(|r| (Kind::Config, r.id.to_string())));
    }
    out
}

/// Their values, from the store (one removed meanwhile is left out: a
/// service that names it cannot exist).
fn file_data(store: &crate::store::Store, files: &BTreeSet<(Kind, String)>) -> Vec<FileData> {
    files
        .iter()
        .filter_map(|(kind, id)| {
            let data = match kind {
                Kind::Secret => &store.secrets.get(&common::SecretId::from(id.as_str()))?.data,
                Kind::Config => &store.configs.get(&common::ConfigId::from(id.as_str()))?.data,
            };
            Some(FileData { kind: *kind, id: id.clone(), data: data.clone() })
        })
        .collect()
}

impl Actor for Dispatcher {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(HOUSEKEEPING, |this, _| {
            if !this.status.borrow().is_leader {
                // Sessions belong to the leader: drop them so nodes reconnect.
                this.sessions.clear();
                this.heard.clear();
                this.pushed_all = false;
                return;
            }
            this.drop_ended();
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct StoreChanged;

impl Handler<StoreChanged> for Dispatcher {
    type Result = ();
    fn handle(&mut self, _: StoreChanged, _: &mut Context<Self>) {
        let started = Instant::now();
        self.wake.take();
        if !self.sessions.is_empty() {
            self.push_all();
            self.pushed_all = true;
            self.drop_ended();
        } else {
            self.pushed_all = false;
        }
        self.metrics.handled(started, true);
    }
}

/// A node opened session `session` (ids from [`next_session_id`]); frames
/// for it go to `tx`, made with [`SESSION_QUEUE`] places; dropping the
/// sender means the session is over. Sent without waiting for an answer,
/// so that the session's heartbeats flow while the dispatcher is busy.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub node: NodeId,
    pub session: u64,
    pub tx: mpsc::Sender<Frame>,
}

/// A new session id, unique in this process.
pub fn next_session_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Handler<Register> for Dispatcher {
    type Result = ();
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        let started = Instant::now();
        let id = msg.session;
        tracing::info!(node = %msg.node, session = id, "node session opened");
        self.heard.opened(&msg.node, now_ms());
        self.sessions.insert(
            msg.node.clone(),
            Session {
                id,
                tx: SessionTx::new(msg.tx),
                sent: push::Sent::default(),
                mesh_sent: false,
                files_sent: BTreeSet::new(),
                gossip_keys_sent: None,
                revoked_sent: None,
            },
        );
        // Only the new session is sent its full set: after a leader change
        // a thousand nodes register at once, and a push to every session
        // for each would make that quadratic. What the store changed since
        // the last push to all reaches every session with the next one
        // (a store change queued one).
        if self.pushed_all {
            self.push_new(&msg.node);
        } else {
            self.push_all();
            self.pushed_all = true;
        }
        self.drop_ended();
        self.metrics.handled(started, true);
    }
}

impl Dispatcher {
    /// The first frames of `node`'s new session: the keys and lists every
    /// session holds, the mesh table and managers as last pushed to all,
    /// the files its tasks need, its full assignment set.
    fn push_new(&mut self, node: &NodeId) {
        let store = self.store.read();
        if !store.nodes.contains_key(node) {
            tracing::info!(%node, "node removed; its session ends");
            self.sessions.remove(node);
            return;
        }
        let Some(session) = self.sessions.get_mut(node) else { return };
        let gossip_keys = &store.cluster.gossip_keys;
        if !gossip_keys.is_empty() {
            let _ = session.tx.send(Frame::GossipKeys(gossip_keys.clone()));
            session.gossip_keys_sent = Some(gossip_keys.clone());
        }
        let revoked = &store.cluster.revoked;
        if !revoked.is_empty() {
            let _ = session.tx.send(Frame::Revoked(revoked.clone()));
            session.revoked_sent = Some(revoked.clone());
        }
        let _ = session.tx.send(Frame::Mesh(self.mesh.clone()));
        session.mesh_sent = true;
        let files = files_needed(push::assignment_set(&store, node));
        if !files.is_empty() {
            let _ = session.tx.send(Frame::Files(file_data(&store, &files)));
        }
        session.files_sent = files;
        // A new session's `sent` is empty: this is its full set.
        let (update, _) = session.sent.update(&store, node, &push::Dirty::default());
        let tasks = match update {
            push::Update::Full(tasks) => tasks,
            push::Update::Diff { .. } => push::assignment_set(&store, node).cloned().collect(),
        };
        let _ =
            session.tx.send(Frame::Assignments { full: true, tasks, removed: vec![], managers: self.managers.clone() });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub node: NodeId,
    pub session: u64,
}

impl Handler<Unregister> for Dispatcher {
    type Result = ();
    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        if self.sessions.get(&msg.node).is_some_and(|s| s.id == msg.session) {
            tracing::info!(node = %msg.node, session = msg.session, "node session closed");
            self.sessions.remove(&msg.node);
        }
    }
}

/// Status reports from a node's session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reports {
    pub node: NodeId,
    pub updates: Vec<TaskStatusUpdate>,
}

impl Handler<Reports> for Dispatcher {
    type Result = ();
    fn handle(&mut self, msg: Reports, ctx: &mut Context<Self>) {
        let started = Instant::now();
        {
            // A node reports only on its own tasks.
            let store = self.store.read();
            self.reports.extend(
                msg.updates
                    .into_iter()
                    .filter(|u| store.tasks.get(&u.task_id).is_some_and(|t| t.assigned_node() == Some(&msg.node))),
            );
        }
        if self.reports.len() >= BATCH_MAX {
            self.flush();
        } else if !self.flush_queued && !self.reports.is_empty() {
            self.flush_queued = true;
            ctx.run_later(BATCH_WINDOW, |this, _| this.flush());
        }
        self.metrics.handled(started, true);
    }
}

/// A node's list of published ports it cannot serve.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MeshReport {
    pub node: NodeId,
    pub failures: Vec<MeshFailure>,
}

impl Handler<MeshReport> for Dispatcher {
    type Result = ();
    fn handle(&mut self, msg: MeshReport, _: &mut Context<Self>) {
        for f in &msg.failures {
            tracing::warn!(node = %msg.node, service = %f.service_name, port = f.published, error = %f.error, "node cannot serve a published port");
        }
        if msg.failures.is_empty() {
            self.mesh_failures.remove(&msg.node);
        } else {
            self.mesh_failures.insert(msg.node, msg.failures);
        }
    }
}

/// A node's description, as its session reported it: written to the store
/// when it differs from what the store holds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Described {
    pub node: NodeId,
    pub description: NodeDescription,
}

impl Handler<Described> for Dispatcher {
    type Result = ();
    fn handle(&mut self, msg: Described, _: &mut Context<Self>) {
        if self.store.read().descriptions.get(&msg.node) == Some(&msg.description) {
            return;
        }
        let raft = self.raft.clone();
        actix::spawn(async move {
            let node = msg.node.clone();
            let cmd = Command::SetNodeDescription { id: msg.node, description: msg.description };
            match raft.send(Propose(cmd)).await {
                Ok(Ok(())) => tracing::debug!(%node, "node description stored"),
                // The node sends it again on its next session.
                Ok(Err(e)) => tracing::warn!(%node, error = %e, "node description not stored"),
                Err(e) => tracing::error!(error = %e, "raft log unreachable"),
            }
        });
    }
}

/// What every node reported it cannot serve.
#[derive(Message)]
#[rtype(result = "BTreeMap<NodeId, Vec<MeshFailure>>")]
pub struct GetMeshFailures;

impl Handler<GetMeshFailures> for Dispatcher {
    type Result = MessageResult<GetMeshFailures>;
    fn handle(&mut self, _: GetMeshFailures, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.mesh_failures.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_cannot_keep_up_ends_and_gets_nothing_more() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut s = SessionTx::new(tx);
        assert_eq!(s.send(Frame::Heartbeat), Ok(()));
        assert_eq!(s.send(Frame::Heartbeat), Ok(()));
        assert_eq!(s.send(Frame::Heartbeat), Err(Ended::Lagging), "full");
        assert!(rx.try_recv().is_ok());
        assert_eq!(s.send(Frame::Heartbeat), Err(Ended::Lagging), "room again, but it is to resync from scratch");
        assert_eq!(s.ended, Some(Ended::Lagging));

        let (tx, rx) = mpsc::channel(2);
        let mut s = SessionTx::new(tx);
        drop(rx);
        assert_eq!(s.send(Frame::Heartbeat), Err(Ended::Closed));
    }
}
