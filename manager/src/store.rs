//! The replicated store: the state machine every manager builds by applying
//! the committed raft log, and the commands that change it.
//!
//! Layout: this file holds the commands, how they are written into log
//! entries, and [`Store::apply`]; `tasks` holds the task table with its
//! indexes by service and by node.
//!
//! # Rules for applying
//!
//! Apply is deterministic: a command that cannot apply (a name already
//! taken) fails the same way on every manager, changes nothing, and the
//! proposer gets that error back. Every manager must apply every entry, so
//! managers of two versions never disagree about the store:
//!
//! - **Entries.** A log entry is the [`Command`] in MessagePack
//!   ([`encode_command`]), whose variant list only ever grows. An entry that
//!   may be skipped by a manager that cannot read it starts with an envelope
//!   (see [`decode_command`]): the byte `0xc1`, which MessagePack never
//!   uses, so no bare command starts with it, then a flags byte whose bit 0
//!   is [`IGNORABLE`] (nomad's `IgnoreUnknownTypeFlag`). The flag sits
//!   outside the command, so a manager that does not know the command can
//!   still read it. Every other entry is the bare command, exactly as
//!   entries were written before the envelope existed, so old logs and
//!   snapshots load unchanged and managers from before the envelope still
//!   read every entry that must not be skipped.
//! - **An entry this version cannot read** (a command from a newer version):
//!   if it is marked ignorable, the manager skips it with a warning and
//!   counts it (`shoal_raft_skipped_entries`); otherwise the raft log stops
//!   applying and the manager exits with the entry's index and the reason,
//!   rather than go on with a store that differs from the other managers'.
//!   Upgrade it and it picks up where it stopped.
//! - **Which commands are ignorable** ([`Command::ignorable`], one arm per
//!   command, so a new command has to choose; the answer for a new one is
//!   no): only a command whose loss cannot change what any later command
//!   does, nor what the leader's loops decide from the store. Today that is
//!   [`Command::SetNoSession`] (only followers read it, to show the
//!   leader's view of liveness; the next leader writes its own) and
//!   [`Command::MarkUnplaceable`]: it only moves an unassigned task
//!   from NEW to PENDING with the scheduler's explanation, no apply rule
//!   tells NEW from PENDING apart (both may be assigned, no worker reports
//!   on an unassigned task, and the assignment replaces the whole status),
//!   and a scheduler that finds the explanation missing proposes it again. A [`Command::Batch`] is ignorable when all
//!   its commands are. Not ignorable, for instance: `SetUpdateStatus` (the
//!   orchestrator pauses or rolls back from it), `RotateJoinToken` (a
//!   manager that missed it would still admit the old token) and
//!   `RotateGossipKey` (its nodes would seal with a key the others retire).
//! - **A new field on an existing command** is dropped without a word by
//!   an older manager (serde ignores unknown fields), so it must be
//!   `#[serde(default)]` and harmless to lose; anything else is a new
//!   command.
//! - **Batches are all or nothing**: a [`Command::Batch`] whose commands do
//!   not all apply changes nothing (see [`Store::apply_recording`]).
//! - **Indexes** of tasks by service and by node live in [`Tasks`]; they
//!   are never serialised and are rebuilt whenever a store is decoded, so
//!   snapshots keep their format.

pub mod feed;
mod files;
mod networks;
mod tasks;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use common::mesh::{PortConfig, Protocol, PublishMode, DYNAMIC_PORTS};
use common::network::{Network, NetworkSpec, Vip};
use common::node::{Availability, Node, Role};
use common::sched::NodeDescription;
use common::secret::{Config, Kind, Secret};
use common::spec::{ServiceSpec, UpdateState, UpdateStatus};
use common::task::{Task, TaskState, TaskStatus, TaskStatusUpdate};
use common::time::Millis;
use common::wire::PeerInfo;
use common::{ConfigId, NetworkId, NodeId, SecretId, ServiceId, TaskId};
use serde::{Deserialize, Serialize};

pub use files::LabelsUpdate;
pub use tasks::{TaskMut, Tasks};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub worker_token: String,
    pub manager_token: String,
    pub created_at: Millis,
    /// The cluster CA: every manager signs joining nodes' certificates.
    #[serde(default)]
    pub ca: crate::ca::ClusterCa,
    /// The keys that seal gossip (empty in a cluster made before gossip
    /// was sealed, until `shoal gossip-key rotate`).
    #[serde(default, skip_serializing_if = "common::gossip_key::GossipKeyRing::is_empty")]
    pub gossip_keys: common::gossip_key::GossipKeyRing,
    /// The nodes removed from the cluster: their certificates stay valid
    /// for the CA until they expire, so every node refuses them by id.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub revoked: std::collections::BTreeSet<NodeId>,
    /// Where networks without `--subnet` get their range (chosen at `--init`).
    #[serde(default, skip_serializing_if = "common::network::AddrPool::is_default")]
    pub addr_pool: common::network::AddrPool,
    /// How long the node certificates the CA signs are valid, in ms
    /// (`shoal daemon --init --cert-expiry`); none in a cluster made before
    /// the setting, which gets the default, 90 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_ms: Option<Millis>,
}

impl ClusterInfo {
    /// The lifetime of the certificates this cluster's CA signs.
    pub fn cert_expiry(&self) -> std::time::Duration {
        match self.cert_expiry_ms {
            Some(ms) if ms > 0 => std::time::Duration::from_millis(ms),
            _ => worker::node::tls::DEFAULT_CERT_EXPIRY,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: ServiceId,
    pub spec: ServiceSpec,
    pub version: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The spec before the last update; `service rollback` restores it.
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// The service's virtual IP on each of its networks (none in dnsrr
    /// mode), given out when the service is written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<Vip>,
    /// A job's run: bumped by every update of a job, which runs it again
    /// (Swarm's `JobStatus.JobIteration`). Always 0 for other services.
    #[serde(default, skip_serializing_if = "is_first_run")]
    pub job_iteration: u64,
    /// Tasks a `--rebalance` moves: the rolling update replaces them as if
    /// they ran an old template. Emptied when the rollout ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebalance: Vec<TaskId>,
}

/// Other services (and a job's first run) encode as before jobs existed.
fn is_first_run(n: &u64) -> bool {
    *n == 0
}

impl Service {
    pub fn new(id: ServiceId, spec: ServiceSpec, at: Millis) -> Self {
        Service {
            id,
            spec,
            version: 1,
            created_at: at,
            updated_at: at,
            previous_spec: None,
            update_status: None,
            vips: vec![],
            job_iteration: 0,
            rebalance: vec![],
        }
    }

    /// The rollout settings in force: the rollback's during a rollback.
    pub fn rollout_config(&self) -> &common::spec::UpdateConfig {
        match &self.update_status {
            Some(u) if u.state.is_rollback() => &self.spec.rollback,
            _ => &self.spec.update,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: TaskId,
    pub node: NodeId,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaceable {
    pub task: TaskId,
    pub reason: String,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // a command lives only from its proposal to its apply
pub enum Command {
    /// Boxed: it carries the cluster CA, far larger than the other commands.
    InitCluster(Box<ClusterInfo>),
    AddNode(Node),
    SetNodeAvailability {
        id: NodeId,
        availability: Availability,
        at: Millis,
    },
    RemoveNode(NodeId),
    CreateService(Service),
    UpdateService {
        id: ServiceId,
        spec: ServiceSpec,
        at: Millis,
        /// Apply only if the service is still at this version (the Engine
        /// API's `?version=N`); `None`: whatever it is at.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_version: Option<u64>,
    },
    RemoveService(ServiceId),
    /// Restore the previous spec; `reason` is shown in the update status.
    RollbackService {
        id: ServiceId,
        at: Millis,
        reason: String,
    },
    SetUpdateStatus {
        id: ServiceId,
        status: UpdateStatus,
    },
    /// `service update --rebalance`: replace these tasks of the service,
    /// as a rolling update ([`crate::orchestrator::rebalance`]).
    RebalanceService {
        id: ServiceId,
        tasks: Vec<TaskId>,
        at: Millis,
    },
    UpdateNodeLabels {
        id: NodeId,
        add: BTreeMap<String, String>,
        rm: Vec<String>,
        at: Millis,
    },
    /// Promote or demote; the raft membership change is a separate entry.
    SetNodeRole {
        id: NodeId,
        role: Role,
        at: Millis,
    },
    CreateTasks(Vec<Task>),
    AssignTasks(Vec<Assignment>),
    MarkUnplaceable(Vec<Unplaceable>),
    SetDesiredState {
        tasks: Vec<TaskId>,
        state: TaskState,
    },
    UpdateTaskStatus(Vec<TaskStatusUpdate>),
    DeleteTasks(Vec<TaskId>),
    /// Several commands in one entry, applied in order, all or none: if one
    /// fails, the store is left as it was before the batch.
    Batch(Vec<Command>),
    /// Replaces one role's join token; nodes already joined are unaffected.
    RotateJoinToken {
        role: Role,
        token: String,
    },
    /// The leader's list of the nodes gossip shows alive that hold no
    /// session with it (see [`Store::no_session`]); replaces the last one.
    SetNoSession(BTreeSet<NodeId>),
    /// Secrets and configs (see `store::files` for their rules).
    CreateSecret(Secret),
    UpdateSecret(LabelsUpdate<SecretId>),
    RemoveSecret(SecretId),
    CreateConfig(Config),
    UpdateConfig(LabelsUpdate<ConfigId>),
    RemoveConfig(ConfigId),
    /// What a node reports about itself on its session (capacity, platform,
    /// engine labels); the scheduler places by it.
    SetNodeDescription {
        id: NodeId,
        description: NodeDescription,
    },
    /// A network; its range (unless the spec gives one) and VXLAN id are
    /// given out as it applies (`store::networks`).
    CreateNetwork {
        id: NetworkId,
        spec: NetworkSpec,
        at: Millis,
    },
    /// Refused while a service uses the network.
    RemoveNetwork(NetworkId),
    /// A new gossip key, given the next id of the ring as it applies; the
    /// switch to it and the retirement of the old one are timed from `at`
    /// (see `common::gossip_key`). `node rm` sends one with its removal.
    RotateGossipKey {
        #[serde(with = "serde_bytes")]
        key: [u8; common::gossip_key::KEY_LEN],
        at: Millis,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("service name {0:?} is already in use by service {1}")]
    NameInUse(String, ServiceId),
    #[error("service {0} not found")]
    NoSuchService(String),
    #[error("node {0} not found")]
    NoSuchNode(String),
    #[error("the cluster is already initialised")]
    AlreadyInitialised,
    /// Docker's clients (the Python SDK) retry on this message's last words.
    #[error("service {0} is at version {1}, not {2}: update out of sequence")]
    Conflict(ServiceId, u64, u64),
    #[error("port {port}/{protocol} is already published by service {service}")]
    PortInUse { port: u16, protocol: Protocol, service: String },
    #[error("port {port}/{protocol} is published twice")]
    PortTwice { port: u16, protocol: Protocol },
    #[error("service {0} has no previous spec to roll back to")]
    NoPreviousSpec(String),
    #[error("no free port left in {}-{} to publish", DYNAMIC_PORTS.start(), DYNAMIC_PORTS.end())]
    NoFreePort,
    /// swarmkit's wording for secrets and configs.
    #[error("{0} {1} already exists")]
    FileNameInUse(Kind, String),
    #[error("{0} not found: {1}")]
    NoSuchFile(Kind, String),
    #[error("{kind} '{name}' is in use by the following service{}: {}", if services.len() > 1 { "s" } else { "" }, services.join(", "))]
    FileInUse { kind: Kind, name: String, services: Vec<String> },
    #[error("{0} {1} is at version {2}, not {3}: update out of sequence")]
    FileConflict(Kind, String, u64, u64),
    #[error("network {0} not found")]
    NoSuchNetwork(String),
    #[error("network name {0:?} is already in use by network {1}")]
    NetworkNameInUse(String, NetworkId),
    #[error("network {network} is in use by service {service}")]
    NetworkInUse { network: String, service: String },
    #[error(transparent)]
    Alloc(#[from] crate::network::AllocError),
}

impl Command {
    /// Whether a manager that cannot read this command may skip it; the
    /// rules are in the module doc. Stated for every command so that a new
    /// one has to choose, and the answer for a new command is false.
    pub fn ignorable(&self) -> bool {
        match self {
            // Only followers read it (to show what the leader shows); the
            // leader's loops decide from the leader's own sessions.
            Command::MarkUnplaceable(_) | Command::SetNoSession(_) => true,
            Command::Batch(cmds) => cmds.iter().all(Command::ignorable),
            Command::InitCluster(_)
            | Command::AddNode(_)
            | Command::SetNodeAvailability { .. }
            | Command::RemoveNode(_)
            | Command::CreateService(_)
            | Command::UpdateService { .. }
            | Command::RemoveService(_)
            | Command::RollbackService { .. }
            | Command::SetUpdateStatus { .. }
            | Command::RebalanceService { .. }
            | Command::UpdateNodeLabels { .. }
            | Command::SetNodeRole { .. }
            | Command::CreateTasks(_)
            | Command::AssignTasks(_)
            | Command::SetDesiredState { .. }
            | Command::UpdateTaskStatus(_)
            | Command::DeleteTasks(_)
            | Command::RotateJoinToken { .. }
            | Command::RotateGossipKey { .. }
            | Command::CreateSecret(_)
            | Command::UpdateSecret(_)
            | Command::RemoveSecret(_)
            | Command::CreateConfig(_)
            | Command::UpdateConfig(_)
            | Command::RemoveConfig(_)
            | Command::SetNodeDescription { .. }
            | Command::CreateNetwork { .. }
            | Command::RemoveNetwork(_) => false,
        }
    }
}

/// The first byte of an entry with an envelope: MessagePack never uses it.
const ENVELOPE: u8 = 0xc1;
/// Envelope flag: a manager that cannot read the command may skip the entry.
pub const IGNORABLE: u8 = 0x01;
/// The flags this version knows; an entry with others is unreadable.
const KNOWN_FLAGS: u8 = IGNORABLE;

/// A log entry's bytes: the bare command, or for an ignorable command the
/// envelope `[0xc1, flags]` followed by the command.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    let body = rmp_serde::to_vec_named(cmd).expect("commands always encode");
    if !cmd.ignorable() {
        return body;
    }
    let mut entry = Vec::with_capacity(body.len() + 2);
    entry.extend_from_slice(&[ENVELOPE, IGNORABLE]);
    entry.extend_from_slice(&body);
    entry
}

/// A log entry this version cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unreadable {
    /// The entry is marked as one a manager may skip.
    pub ignorable: bool,
    pub reason: String,
}

/// Reads a log entry written by [`encode_command`], or by any version
/// before the envelope (a bare command).
pub fn decode_command(entry: &[u8]) -> Result<Command, Unreadable> {
    let (flags, body) = match entry {
        [ENVELOPE, flags, body @ ..] => (*flags, body),
        [ENVELOPE] => return Err(Unreadable { ignorable: false, reason: "entry envelope cut short".into() }),
        bare => (0, bare),
    };
    let ignorable = flags & IGNORABLE != 0;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Unreadable { ignorable, reason: format!("unknown entry flags {flags:#04x}") });
    }
    rmp_serde::from_slice(body).map_err(|e| Unreadable { ignorable, reason: e.to_string() })
}

/// What one applied command changed, for the events stream. Removals carry
/// the names, which the store no longer has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Service {
        id: ServiceId,
        action: &'static str,
    },
    ServiceRemoved {
        id: ServiceId,
        name: String,
    },
    Task {
        id: TaskId,
    },
    TaskRemoved {
        id: TaskId,
        name: String,
        node: Option<NodeId>,
    },
    Node {
        id: NodeId,
        action: &'static str,
    },
    NodeRemoved {
        id: NodeId,
        hostname: String,
    },
    /// A secret or config created, updated or removed.
    File {
        kind: Kind,
        id: String,
        name: String,
        action: &'static str,
    },
    /// A network created or removed.
    Network {
        id: NetworkId,
        name: String,
        action: &'static str,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    pub cluster: ClusterInfo,
    pub nodes: BTreeMap<NodeId, Node>,
    pub services: BTreeMap<ServiceId, Service>,
    /// Changed only through [`Tasks`]' methods, which keep its indexes.
    pub tasks: Tasks,
    /// Which proposals were applied lately (see [`Store::apply_once`]).
    #[serde(default)]
    pub applied_proposals: RecentProposals,
    /// Nodes that gossip shows alive but that hold no session with the
    /// leader, as the leader last wrote them: a follower counts them down
    /// (`crate::liveness`). May name nodes removed since. Not written when
    /// empty, so snapshots without it keep their bytes.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub no_session: BTreeSet<NodeId>,
    /// Not written when empty, so snapshots without any keep their bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: files::Table<SecretId>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: files::Table<ConfigId>,
    /// What each node reported about itself (Swarm's node description),
    /// beside the nodes so that `Node` keeps its shape. Not written when
    /// empty, so snapshots without it keep their bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub descriptions: BTreeMap<NodeId, NodeDescription>,
    /// Overlay networks. Not written when empty, as `no_session`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<NetworkId, Network>,
    /// What each apply changed, for the leader's loops (never serialised;
    /// a store decoded from a snapshot starts a feed of its own).
    #[serde(skip)]
    pub feed: feed::Feed,
}

/// Who proposed an entry: (raft id, process start nonce, counter). A
/// proposal re-sent after a leader change carries the same id.
pub type ProposalId = (u64, u64, u64);

/// The last [`RecentProposals::KEEP`] proposal ids applied, oldest first.
/// Part of the store (and its snapshots) so that every manager, including
/// one restored from a snapshot, skips the same duplicates.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecentProposals {
    order: VecDeque<ProposalId>,
    #[serde(skip)]
    index: HashSet<ProposalId>,
}

impl PartialEq for RecentProposals {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl RecentProposals {
    /// Far more than can be in flight: proposals time out after seconds.
    pub const KEEP: usize = 16_384;

    /// Records `id`; false when it was already there.
    fn insert(&mut self, id: ProposalId) -> bool {
        if self.index.len() != self.order.len() {
            // Freshly decoded from a snapshot: the index is not serialised.
            self.index = self.order.iter().copied().collect();
        }
        if !self.index.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.index.remove(&old);
            }
        }
        true
    }
}

impl Store {
    /// Applies a proposed command unless a copy with the same id already
    /// was (a proposal re-sent after a leader change can commit twice).
    /// `None` means skipped as a duplicate.
    pub fn apply_once(
        &mut self,
        id: Option<ProposalId>,
        cmd: Command,
        changes: &mut Vec<Change>,
    ) -> Option<Result<(), StoreError>> {
        if let Some(id) = id {
            if !self.applied_proposals.insert(id) {
                return None;
            }
        }
        Some(self.apply_recording(cmd, changes))
    }

    pub fn to_snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("the store always encodes")
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<Store, String> {
        if bytes.is_empty() {
            return Ok(Store::default());
        }
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }

    pub fn apply(&mut self, cmd: Command) -> Result<(), StoreError> {
        self.apply_recording(cmd, &mut Vec::new())
    }

    /// [`Store::apply`], noting in `changes` what changed (for the events
    /// stream): the same on every manager, since apply is deterministic.
    ///
    /// Every command other than a batch checks everything before it changes
    /// anything, so a failing one leaves the store as it was. A batch is made
    /// all or nothing with an undo log: before each of its commands, the
    /// entries that command may write (named by the command, see
    /// `Undo::save`) are copied, and if a later one fails they are put back,
    /// newest first. That costs a copy of what the batch touches, never of
    /// the store. A separate check phase would have to restate every failure
    /// rule of apply while tracking the effect of the batch's earlier
    /// commands (a service created, then updated, in one batch): a second
    /// copy of apply that could drift from the first. Single commands skip
    /// the log: the dispatcher's status reports are large and never batched.
    ///
    /// What the command may have written goes to the change feed
    /// ([`feed`]), failed or not.
    pub fn apply_recording(&mut self, cmd: Command, changes: &mut Vec<Change>) -> Result<(), StoreError> {
        let mut delta = feed::Delta::default();
        feed::note_keys(&cmd, &mut delta);
        let result = self.apply_recorded(cmd, changes);
        delta.tasks = self.tasks.take_touched();
        self.feed.push(delta);
        result
    }

    fn apply_recorded(&mut self, cmd: Command, changes: &mut Vec<Change>) -> Result<(), StoreError> {
        let Command::Batch(cmds) = cmd else {
            return self.apply_one(cmd, changes);
        };
        let mut undo = Undo::default();
        let reported = changes.len();
        let result = self.apply_batch(cmds, changes, &mut undo);
        if result.is_err() {
            undo.restore(self);
            changes.truncate(reported);
        }
        result
    }

    /// A batch's commands in order, nested batches flattened into the same
    /// undo log; stops at the first error.
    fn apply_batch(
        &mut self,
        cmds: Vec<Command>,
        changes: &mut Vec<Change>,
        undo: &mut Undo,
    ) -> Result<(), StoreError> {
        for c in cmds {
            match c {
                Command::Batch(inner) => self.apply_batch(inner, changes, undo)?,
                c => {
                    undo.save(self, &c);
                    self.apply_one(c, changes)?;
                }
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, cmd: Command, changes: &mut Vec<Change>) -> Result<(), StoreError> {
        match cmd {
            Command::InitCluster(info) => {
                let info = *info;
                if !self.cluster.id.is_empty() {
                    return Err(StoreError::AlreadyInitialised);
                }
                self.cluster = info;
            }
            Command::AddNode(node) => {
                changes.push(Change::Node { id: node.id.clone(), action: "create" });
                self.nodes.insert(node.id.clone(), node);
            }
            Command::SetNodeAvailability { id, availability, at } => {
                let node = self.nodes.get_mut(&id).ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
                node.availability = availability;
                node.updated_at = at;
                changes.push(Change::Node { id, action: "update" });
            }
            Command::RemoveNode(id) => {
                if self.nodes.contains_key(&id) {
                    self.cluster.revoked.insert(id.clone());
                }
                self.descriptions.remove(&id);
                self.release_node_blocks(&id);
                if let Some(n) = self.nodes.remove(&id) {
                    changes.push(Change::NodeRemoved { id, hostname: n.hostname });
                }
            }
            Command::CreateService(mut svc) => {
                if let Some(other) = self.service_by_name(&svc.spec.name) {
                    return Err(StoreError::NameInUse(svc.spec.name.clone(), other.id.clone()));
                }
                self.check_ports(&svc.id, &svc.spec.task.ports)?;
                self.check_files(&svc.spec)?;
                svc.vips = self.attach_networks(&svc.id, &mut svc.spec, &[])?;
                changes.push(Change::Service { id: svc.id.clone(), action: "create" });
                self.services.insert(svc.id.clone(), svc);
            }
            Command::UpdateService { id, mut spec, at, expect_version } => {
                if let Some(other) = self.service_by_name(&spec.name) {
                    if other.id != id {
                        return Err(StoreError::NameInUse(spec.name.clone(), other.id.clone()));
                    }
                }
                let current = self.services.get(&id).ok_or_else(|| StoreError::NoSuchService(id.to_string()))?;
                if let Some(v) = expect_version.filter(|v| *v != current.version) {
                    return Err(StoreError::Conflict(id, current.version, v));
                }
                self.check_ports(&id, &spec.task.ports)?;
                self.check_files(&spec)?;
                let vips = self.attach_networks(&id, &mut spec, &current.vips.clone())?;
                let svc = self.services.get_mut(&id).ok_or_else(|| StoreError::NoSuchService(id.to_string()))?;
                svc.vips = vips;
                // A new task template rolls over the tasks; other changes
                // (replicas, labels) do not.
                if spec.task != svc.spec.task && !spec.mode.is_job() {
                    svc.update_status = Some(UpdateStatus {
                        state: UpdateState::Updating,
                        started_at: at,
                        completed_at: None,
                        message: "update in progress".into(),
                    });
                }
                if spec.mode.is_job() {
                    svc.job_iteration += 1;
                }
                if spec.task != svc.spec.task {
                    // The new template replaces every task anyway.
                    svc.rebalance.clear();
                }
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
                svc.version += 1;
                svc.updated_at = at;
                changes.push(Change::Service { id, action: "update" });
            }
            Command::RollbackService { id, at, reason } => {
                let svc = self.services.get(&id).ok_or_else(|| StoreError::NoSuchService(id.to_string()))?;
                let mut previous =
                    svc.previous_spec.clone().ok_or_else(|| StoreError::NoPreviousSpec(svc.spec.name.clone()))?;
                let vips = self.attach_networks(&id, &mut previous, &svc.vips.clone())?;
                let svc = self.services.get_mut(&id).ok_or_else(|| StoreError::NoSuchService(id.to_string()))?;
                svc.vips = vips;
                if previous.mode.is_job() {
                    svc.job_iteration += 1;
                }
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, previous));
                svc.update_status = Some(UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_at: at,
                    completed_at: None,
                    message: reason,
                });
                svc.version += 1;
                svc.updated_at = at;
                changes.push(Change::Service { id, action: "rollback" });
            }
            Command::RebalanceService { id, tasks, at } => {
                let svc = self.services.get_mut(&id).ok_or_else(|| StoreError::NoSuchService(id.to_string()))?;
                svc.rebalance = tasks;
                svc.update_status = Some(UpdateStatus {
                    state: UpdateState::Updating,
                    started_at: at,
                    completed_at: None,
                    message: "rebalance in progress".into(),
                });
                svc.version += 1;
                svc.updated_at = at;
                changes.push(Change::Service { id, action: "update" });
            }
            Command::SetUpdateStatus { id, status } => {
                if let Some(svc) = self.services.get_mut(&id) {
                    if !status.state.is_active() {
                        svc.rebalance.clear();
                    }
                    svc.update_status = Some(status);
                    changes.push(Change::Service { id, action: "update" });
                }
            }
            Command::UpdateNodeLabels { id, add, rm, at } => {
                let node = self.nodes.get_mut(&id).ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
                for k in rm {
                    node.labels.remove(&k);
                }
                node.labels.extend(add);
                node.updated_at = at;
                changes.push(Change::Node { id, action: "update" });
            }
            Command::SetNodeRole { id, role, at } => {
                let node = self.nodes.get_mut(&id).ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
                if node.role != role {
                    node.role = role;
                    node.updated_at = at;
                    changes.push(Change::Node { id, action: "update" });
                }
            }
            Command::RemoveService(id) => {
                let Some(svc) = self.services.remove(&id) else {
                    return Err(StoreError::NoSuchService(id.to_string()));
                };
                // The tasks go with it; workers stop and remove the containers
                // that drop out of their assignment sets.
                let ids: Vec<TaskId> = self.tasks.of_service(&id).map(|t| t.id.clone()).collect();
                for tid in ids {
                    if let Some(t) = self.tasks.remove(&tid) {
                        changes.push(Change::TaskRemoved { id: tid, name: t.name(), node: t.node_id });
                    }
                }
                changes.push(Change::ServiceRemoved { id, name: svc.spec.name });
            }
            Command::CreateTasks(tasks) => {
                for t in tasks {
                    // A task for a service removed meanwhile is dropped.
                    if self.services.contains_key(&t.service_id) {
                        changes.push(Change::Task { id: t.id.clone() });
                        self.tasks.insert(t);
                    }
                }
            }
            Command::AssignTasks(assignments) => {
                for a in assignments {
                    let Some(t) = self.tasks.get(&a.task) else { continue };
                    // A task that names its node (a global one) is admitted
                    // only there.
                    if t.node_id.as_ref().is_some_and(|n| *n != a.node)
                        || t.desired_state != TaskState::Running
                        || !t.status.state.can_advance_to(TaskState::Assigned)
                        || !self.nodes.contains_key(&a.node)
                    {
                        continue;
                    }
                    // Its address on each network, from the node's block.
                    match self.assign_addresses(&a.task, &a.node) {
                        Ok(addresses) => {
                            let Some(mut t) = self.tasks.get_mut(&a.task) else { continue };
                            t.addresses = addresses;
                            t.node_id = Some(a.node);
                            t.status = TaskStatus::new(TaskState::Assigned, a.at, "assigned");
                        }
                        Err(e) => {
                            let Some(mut t) = self.tasks.get_mut(&a.task) else { continue };
                            let mut st = TaskStatus::new(TaskState::Pending, a.at, "pending task scheduling");
                            st.err = Some(e.to_string());
                            t.status = st;
                        }
                    }
                    changes.push(Change::Task { id: a.task });
                }
            }
            Command::MarkUnplaceable(list) => {
                for u in list {
                    let Some(mut t) = self.tasks.get_mut(&u.task) else { continue };
                    if t.status.state > TaskState::Pending {
                        continue;
                    }
                    let mut st = TaskStatus::new(TaskState::Pending, u.at, "pending task scheduling");
                    st.err = Some(u.reason);
                    t.status = st;
                    changes.push(Change::Task { id: u.task });
                }
            }
            Command::SetDesiredState { tasks, state } => {
                for id in tasks {
                    if let Some(mut t) = self.tasks.get_mut(&id) {
                        // Desired state only moves forward too.
                        if state > t.desired_state {
                            t.desired_state = state;
                        }
                    }
                }
            }
            Command::UpdateTaskStatus(updates) => {
                for u in updates {
                    let Some(mut t) = self.tasks.get_mut(&u.task_id) else { continue };
                    if t.status.state.can_advance_to(u.status.state) {
                        t.status = u.status;
                        changes.push(Change::Task { id: u.task_id });
                    }
                }
            }
            Command::DeleteTasks(ids) => {
                for id in ids {
                    if let Some(t) = self.tasks.remove(&id) {
                        changes.push(Change::TaskRemoved { id, name: t.name(), node: t.node_id });
                    }
                }
            }
            // Not reached from apply_recording, which takes batches apart.
            batch @ Command::Batch(_) => return self.apply_recorded(batch, changes),
            Command::RotateJoinToken { role, token } => match role {
                Role::Worker => self.cluster.worker_token = token,
                Role::Manager => self.cluster.manager_token = token,
            },
            Command::RotateGossipKey { key, at } => {
                let ring = &self.cluster.gossip_keys;
                let key = common::gossip_key::GossipKey { id: ring.next_id(), key };
                self.cluster.gossip_keys = ring.rotate(key, at);
            }
            Command::SetNoSession(nodes) => self.no_session = nodes,
            Command::CreateSecret(item) => {
                let (id, name) = (item.id.to_string(), item.name.clone());
                files::create(&mut self.secrets, Kind::Secret, item)?;
                changes.push(Change::File { kind: Kind::Secret, id, name, action: "create" });
            }
            Command::UpdateSecret(u) => {
                let name =
                    files::update_labels(&mut self.secrets, Kind::Secret, &u.id, u.labels, u.at, u.expect_version)?;
                changes.push(Change::File { kind: Kind::Secret, id: u.id.to_string(), name, action: "update" });
            }
            Command::RemoveSecret(id) => {
                let name = files::remove(&mut self.secrets, Kind::Secret, &id, self.services.values(), |s| {
                    &s.spec.task.secrets
                })?;
                changes.push(Change::File { kind: Kind::Secret, id: id.to_string(), name, action: "remove" });
            }
            Command::CreateConfig(item) => {
                let (id, name) = (item.id.to_string(), item.name.clone());
                files::create(&mut self.configs, Kind::Config, item)?;
                changes.push(Change::File { kind: Kind::Config, id, name, action: "create" });
            }
            Command::UpdateConfig(u) => {
                let name =
                    files::update_labels(&mut self.configs, Kind::Config, &u.id, u.labels, u.at, u.expect_version)?;
                changes.push(Change::File { kind: Kind::Config, id: u.id.to_string(), name, action: "update" });
            }
            Command::RemoveConfig(id) => {
                let name = files::remove(&mut self.configs, Kind::Config, &id, self.services.values(), |s| {
                    &s.spec.task.configs
                })?;
                changes.push(Change::File { kind: Kind::Config, id: id.to_string(), name, action: "remove" });
            }
            Command::SetNodeDescription { id, description } => {
                if !self.nodes.contains_key(&id) {
                    return Err(StoreError::NoSuchNode(id.to_string()));
                }
                self.descriptions.insert(id.clone(), description);
                changes.push(Change::Node { id, action: "update" });
            }
            Command::CreateNetwork { id, spec, at } => {
                let name = spec.name.clone();
                self.create_network(id.clone(), spec, at)?;
                changes.push(Change::Network { id, name, action: "create" });
            }
            Command::RemoveNetwork(id) => {
                let name = self.networks.get(&id).map(|n| n.spec.name.clone()).unwrap_or_default();
                self.remove_network(&id)?;
                changes.push(Change::Network { id, name, action: "remove" });
            }
        }
        Ok(())
    }

    /// The secrets and configs a spec names all exist.
    fn check_files(&self, spec: &ServiceSpec) -> Result<(), StoreError> {
        files::check_refs(&self.secrets, Kind::Secret, &spec.task.secrets)?;
        files::check_refs(&self.configs, Kind::Config, &spec.task.configs)
    }

    /// A secret by full id, name or unique id prefix.
    pub fn find_secret(&self, key: &str) -> Option<&Secret> {
        files::find(&self.secrets, key)
    }

    /// A config by full id, name or unique id prefix.
    pub fn find_config(&self, key: &str) -> Option<&Config> {
        files::find(&self.configs, key)
    }

    /// Published ports are unique per protocol across services, except that
    /// several host-mode publishes may share a port (the scheduler keeps
    /// them on different nodes). Ports not yet numbered are not checked.
    pub fn check_ports(&self, id: &ServiceId, ports: &[PortConfig]) -> Result<(), StoreError> {
        let mut seen = std::collections::BTreeSet::new();
        for p in ports {
            let Some(port) = p.published else { continue };
            if !seen.insert((port, p.protocol)) {
                return Err(StoreError::PortTwice { port, protocol: p.protocol });
            }
            for other in self.services.values().filter(|s| &s.id != id) {
                let clash = other.spec.task.ports.iter().any(|q| {
                    q.published == Some(port)
                        && q.protocol == p.protocol
                        && !(q.mode == PublishMode::Host && p.mode == PublishMode::Host)
                });
                if clash {
                    return Err(StoreError::PortInUse { port, protocol: p.protocol, service: other.spec.name.clone() });
                }
            }
        }
        Ok(())
    }

    /// Gives every publish without a number the lowest free port of
    /// [`DYNAMIC_PORTS`] (free: published by no service, this one included).
    pub fn allocate_ports(&self, id: &ServiceId, ports: &mut [PortConfig]) -> Result<(), StoreError> {
        let mut used: std::collections::BTreeSet<(u16, Protocol)> = self
            .services
            .values()
            .filter(|s| &s.id != id)
            .flat_map(|s| s.spec.task.ports.iter())
            .chain(ports.iter())
            .filter_map(|p| p.published.map(|n| (n, p.protocol)))
            .collect();
        for p in ports.iter_mut().filter(|p| p.published.is_none()) {
            let free =
                DYNAMIC_PORTS.clone().find(|n| !used.contains(&(*n, p.protocol))).ok_or(StoreError::NoFreePort)?;
            used.insert((free, p.protocol));
            p.published = Some(free);
        }
        Ok(())
    }

    /// The managers' raft ids and cluster addresses.
    pub fn manager_peers(&self) -> Vec<PeerInfo> {
        self.members_and_managers(&[])
    }

    /// The managers, plus the nodes whose raft ids are in `members` (a
    /// demoted manager stays one until raft has removed it).
    pub fn members_and_managers(&self, members: &[u64]) -> Vec<PeerInfo> {
        self.nodes
            .values()
            .filter(|n| n.role == Role::Manager || members.contains(&n.raft_id))
            .map(|n| PeerInfo { node_id: n.id.clone(), raft_id: n.raft_id, addr: n.addr })
            .collect()
    }

    /// A node's cluster address by its raft id.
    pub fn addr_of_raft_id(&self, raft_id: u64) -> Option<std::net::SocketAddr> {
        self.nodes.values().find(|n| n.raft_id == raft_id).map(|n| n.addr)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// Finds a service by full ID, name, or unique ID prefix — as docker does.
    pub fn find_service(&self, key: &str) -> Option<&Service> {
        if let Some(s) = self.services.get(&ServiceId::from(key)) {
            return Some(s);
        }
        if let Some(s) = self.service_by_name(key) {
            return Some(s);
        }
        let mut matches = self.services.values().filter(|s| s.id.as_str().starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(s), None) if !key.is_empty() => Some(s),
            _ => None,
        }
    }

    /// Finds a node by full ID, hostname, or unique ID prefix.
    pub fn find_node(&self, key: &str) -> Option<&Node> {
        if let Some(n) = self.nodes.get(&NodeId::from(key)) {
            return Some(n);
        }
        let by_host: Vec<_> = self.nodes.values().filter(|n| n.hostname == key).collect();
        if by_host.len() == 1 {
            return Some(by_host[0]);
        }
        let mut matches = self.nodes.values().filter(|n| n.id.as_str().starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(n), None) if !key.is_empty() => Some(n),
            _ => None,
        }
    }

    /// A service's tasks, in id order (from the index, not a scan).
    pub fn tasks_of<'a>(&'a self, service: &ServiceId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.of_service(service)
    }

    /// The tasks assigned to a node, in id order (from the index).
    /// What the active tasks on `node` reserve together (as the scheduler
    /// counts them: a task waiting to be admitted there holds nothing).
    pub fn reserved_on(&self, node: &NodeId) -> common::sched::Resources {
        let mut sum = common::sched::Resources::default();
        for t in self.tasks_on(node).filter(|t| t.is_active() && t.assigned_node().is_some()) {
            sum.add(&t.spec.scheduling.reservations);
        }
        sum
    }

    pub fn tasks_on<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.on_node(node)
    }
}

/// What a batch's commands wrote, to put back if a later one fails (see
/// [`Store::apply_recording`]).
#[derive(Default)]
struct Undo {
    /// Entries as they were before a command, oldest first.
    saved: Vec<Saved>,
}

enum Saved {
    Cluster(Box<ClusterInfo>),
    Node(NodeId, Option<Node>),
    Service(ServiceId, Option<Box<Service>>),
    Task(TaskId, Option<Box<Task>>),
    NoSession(BTreeSet<NodeId>),
    Secret(SecretId, Option<Box<Secret>>),
    Config(ConfigId, Option<Box<Config>>),
    Description(NodeId, Option<NodeDescription>),
    Networks(BTreeMap<NetworkId, Network>),
}

impl Undo {
    /// Copies every entry `cmd` may write, as it is now. One arm per
    /// command: a new command has to say what it writes.
    fn save(&mut self, store: &Store, cmd: &Command) {
        let node = |id: &NodeId| Saved::Node(id.clone(), store.nodes.get(id).cloned());
        let service = |id: &ServiceId| Saved::Service(id.clone(), store.services.get(id).cloned().map(Box::new));
        let task = |id: &TaskId| Saved::Task(id.clone(), store.tasks.get(id).cloned().map(Box::new));
        match cmd {
            Command::InitCluster(_) | Command::RotateJoinToken { .. } | Command::RotateGossipKey { .. } => {
                self.saved.push(Saved::Cluster(Box::new(store.cluster.clone())))
            }
            Command::AddNode(n) => self.saved.push(node(&n.id)),
            Command::RemoveNode(id) => {
                self.saved.push(Saved::Cluster(Box::new(store.cluster.clone())));
                self.saved.push(node(id));
                self.saved.push(Saved::Networks(store.networks.clone()));
                self.saved.push(Saved::Description(id.clone(), store.descriptions.get(id).cloned()));
            }
            Command::SetNodeAvailability { id, .. }
            | Command::UpdateNodeLabels { id, .. }
            | Command::SetNodeRole { id, .. } => self.saved.push(node(id)),
            Command::CreateService(svc) => self.saved.push(service(&svc.id)),
            Command::UpdateService { id, .. }
            | Command::RollbackService { id, .. }
            | Command::RebalanceService { id, .. }
            | Command::SetUpdateStatus { id, .. } => self.saved.push(service(id)),
            Command::RemoveService(id) => {
                self.saved.push(service(id));
                self.saved.extend(store.tasks_of(id).map(|t| Saved::Task(t.id.clone(), Some(Box::new(t.clone())))));
            }
            Command::CreateTasks(ts) => self.saved.extend(ts.iter().map(|t| task(&t.id))),
            Command::AssignTasks(list) => {
                // Node blocks may be given out too.
                self.saved.push(Saved::Networks(store.networks.clone()));
                self.saved.extend(list.iter().map(|a| task(&a.task)))
            }
            Command::CreateNetwork { .. } | Command::RemoveNetwork(_) => {
                self.saved.push(Saved::Networks(store.networks.clone()))
            }
            Command::MarkUnplaceable(list) => self.saved.extend(list.iter().map(|u| task(&u.task))),
            Command::SetDesiredState { tasks, .. } | Command::DeleteTasks(tasks) => {
                self.saved.extend(tasks.iter().map(task))
            }
            Command::UpdateTaskStatus(updates) => self.saved.extend(updates.iter().map(|u| task(&u.task_id))),
            Command::SetNoSession(_) => self.saved.push(Saved::NoSession(store.no_session.clone())),
            Command::CreateSecret(Secret { id, .. })
            | Command::UpdateSecret(LabelsUpdate { id, .. })
            | Command::RemoveSecret(id) => {
                self.saved.push(Saved::Secret(id.clone(), store.secrets.get(id).cloned().map(Box::new)))
            }
            Command::CreateConfig(Config { id, .. })
            | Command::UpdateConfig(LabelsUpdate { id, .. })
            | Command::RemoveConfig(id) => {
                self.saved.push(Saved::Config(id.clone(), store.configs.get(id).cloned().map(Box::new)))
            }
            Command::SetNodeDescription { id, .. } => {
                self.saved.push(Saved::Description(id.clone(), store.descriptions.get(id).cloned()))
            }
            // Its commands are saved one by one as they apply.
            Command::Batch(_) => {}
        }
    }

    fn restore(self, store: &mut Store) {
        for saved in self.saved.into_iter().rev() {
            match saved {
                Saved::Cluster(c) => store.cluster = *c,
                Saved::Node(id, Some(n)) => drop(store.nodes.insert(id, n)),
                Saved::Node(id, None) => drop(store.nodes.remove(&id)),
                Saved::Service(id, Some(s)) => drop(store.services.insert(id, *s)),
                Saved::Service(id, None) => drop(store.services.remove(&id)),
                Saved::Task(_, Some(t)) => drop(store.tasks.insert(*t)),
                Saved::Task(id, None) => drop(store.tasks.remove(&id)),
                Saved::NoSession(nodes) => store.no_session = nodes,
                Saved::Secret(id, Some(s)) => drop(store.secrets.insert(id, *s)),
                Saved::Secret(id, None) => drop(store.secrets.remove(&id)),
                Saved::Config(id, Some(c)) => drop(store.configs.insert(id, *c)),
                Saved::Config(id, None) => drop(store.configs.remove(&id)),
                Saved::Description(id, Some(d)) => drop(store.descriptions.insert(id, d)),
                Saved::Description(id, None) => drop(store.descriptions.remove(&id)),
                Saved::Networks(nets) => store.networks = nets,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
