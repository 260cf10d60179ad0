//! The replicated store: the state machine every manager builds by applying
//! the committed raft log, and the commands that change it.
//!
//! Commands are a MessagePack-tagged enum whose variant list only ever grows;
//! a node that meets a variant it does not know skips that entry with a
//! warning (see [`decode_command`]). Apply is deterministic: a command that
//! cannot apply (a name already taken) fails the same way on every manager,
//! and the proposer gets that error back.

use std::collections::{BTreeMap, HashSet, VecDeque};

use common::mesh::{PortConfig, Protocol, PublishMode, DYNAMIC_PORTS};
use common::node::{Availability, Node, Role};
use common::spec::{ServiceSpec, UpdateState, UpdateStatus};
use common::task::{Task, TaskState, TaskStatus, TaskStatusUpdate};
use common::time::Millis;
use common::wire::PeerInfo;
use common::{NodeId, ServiceId, TaskId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub worker_token: String,
    pub manager_token: String,
    pub created_at: Millis,
    /// The cluster CA: every manager signs joining nodes' certificates.
    #[serde(default)]
    pub ca: worker::tls::ClusterCa,
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
}

impl Service {
    pub fn new(id: ServiceId, spec: ServiceSpec, at: Millis) -> Self {
        Service { id, spec, version: 1, created_at: at, updated_at: at, previous_spec: None, update_status: None }
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
    /// Several commands in one entry, applied in order; stops at the first error.
    Batch(Vec<Command>),
    /// Replaces one role's join token; nodes already joined are unaffected.
    RotateJoinToken {
        role: Role,
        token: String,
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
    #[error("service {0} was changed by someone else (version {1}, expected {2})")]
    Conflict(ServiceId, u64, u64),
    #[error("port {port}/{protocol} is already published by service {service}")]
    PortInUse { port: u16, protocol: Protocol, service: String },
    #[error("port {port}/{protocol} is published twice")]
    PortTwice { port: u16, protocol: Protocol },
    #[error("service {0} has no previous spec to roll back to")]
    NoPreviousSpec(String),
    #[error("no free port left in {}-{} to publish", DYNAMIC_PORTS.start(), DYNAMIC_PORTS.end())]
    NoFreePort,
}

pub fn encode_command(cmd: &Command) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    rmp_serde::to_vec_named(cmd).expect("commands always encode")
}

pub fn decode_command(bytes: &[u8]) -> Result<Command, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

/// What one applied command changed, for the events stream. Removals carry
/// the names, which the store no longer has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Service { id: ServiceId, action: &'static str },
    ServiceRemoved { id: ServiceId, name: String },
    Task { id: TaskId },
    TaskRemoved { id: TaskId, name: String, node: Option<NodeId> },
    Node { id: NodeId, action: &'static str },
    NodeRemoved { id: NodeId, hostname: String },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    pub cluster: ClusterInfo,
    pub nodes: BTreeMap<NodeId, Node>,
    pub services: BTreeMap<ServiceId, Service>,
    pub tasks: BTreeMap<TaskId, Task>,
    /// Which proposals were applied lately (see [`Store::apply_once`]).
    #[serde(default)]
    pub applied_proposals: RecentProposals,
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
    pub fn apply_recording(&mut self, cmd: Command, changes: &mut Vec<Change>) -> Result<(), StoreError> {
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
                if let Some(n) = self.nodes.remove(&id) {
                    changes.push(Change::NodeRemoved { id, hostname: n.hostname });
                }
            }
            Command::CreateService(svc) => {
                if let Some(other) = self.service_by_name(&svc.spec.name) {
                    return Err(StoreError::NameInUse(svc.spec.name.clone(), other.id.clone()));
                }
                self.check_ports(&svc.id, &svc.spec.task.ports)?;
                changes.push(Change::Service { id: svc.id.clone(), action: "create" });
                self.services.insert(svc.id.clone(), svc);
            }
            Command::UpdateService { id, spec, at } => {
                if let Some(other) = self.service_by_name(&spec.name) {
                    if other.id != id {
                        return Err(StoreError::NameInUse(spec.name.clone(), other.id.clone()));
                    }
                }
                if !self.services.contains_key(&id) {
                    return Err(StoreError::NoSuchService(id.to_string()));
                }
                self.check_ports(&id, &spec.task.ports)?;
                let svc = self.services.get_mut(&id).ok_or_else(|| StoreError::NoSuchService(id.to_string()))?;
                // A new task template rolls over the tasks; other changes
                // (replicas, labels) do not.
                if spec.task != svc.spec.task {
                    svc.update_status = Some(UpdateStatus {
                        state: UpdateState::Updating,
                        started_at: at,
                        completed_at: None,
                        message: "update in progress".into(),
                    });
                }
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
                svc.version += 1;
                svc.updated_at = at;
                changes.push(Change::Service { id, action: "update" });
            }
            Command::RollbackService { id, at, reason } => {
                let svc = self.services.get_mut(&id).ok_or_else(|| StoreError::NoSuchService(id.to_string()))?;
                let previous =
                    svc.previous_spec.take().ok_or_else(|| StoreError::NoPreviousSpec(svc.spec.name.clone()))?;
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
            Command::SetUpdateStatus { id, status } => {
                if let Some(svc) = self.services.get_mut(&id) {
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
                self.tasks.retain(|_, t| {
                    let keep = t.service_id != id;
                    if !keep {
                        changes.push(Change::TaskRemoved { id: t.id.clone(), name: t.name(), node: t.node_id.clone() });
                    }
                    keep
                });
                changes.push(Change::ServiceRemoved { id, name: svc.spec.name });
            }
            Command::CreateTasks(tasks) => {
                for t in tasks {
                    // A task for a service removed meanwhile is dropped.
                    if self.services.contains_key(&t.service_id) {
                        changes.push(Change::Task { id: t.id.clone() });
                        self.tasks.insert(t.id.clone(), t);
                    }
                }
            }
            Command::AssignTasks(assignments) => {
                for a in assignments {
                    let Some(t) = self.tasks.get_mut(&a.task) else { continue };
                    // A task that names its node (a global one) is admitted
                    // only there.
                    if t.node_id.as_ref().is_some_and(|n| *n != a.node)
                        || t.desired_state != TaskState::Running
                        || !t.status.state.can_advance_to(TaskState::Assigned)
                        || !self.nodes.contains_key(&a.node)
                    {
                        continue;
                    }
                    t.node_id = Some(a.node);
                    t.status = TaskStatus::new(TaskState::Assigned, a.at, "assigned");
                    changes.push(Change::Task { id: a.task });
                }
            }
            Command::MarkUnplaceable(list) => {
                for u in list {
                    let Some(t) = self.tasks.get_mut(&u.task) else { continue };
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
                    if let Some(t) = self.tasks.get_mut(&id) {
                        // Desired state only moves forward too.
                        if state > t.desired_state {
                            t.desired_state = state;
                        }
                    }
                }
            }
            Command::UpdateTaskStatus(updates) => {
                for u in updates {
                    let Some(t) = self.tasks.get_mut(&u.task_id) else { continue };
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
            Command::Batch(cmds) => {
                for c in cmds {
                    self.apply_recording(c, changes)?;
                }
            }
            Command::RotateJoinToken { role, token } => match role {
                Role::Worker => self.cluster.worker_token = token,
                Role::Manager => self.cluster.manager_token = token,
            },
        }
        Ok(())
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

    pub fn tasks_of<'a>(&'a self, service: &'a ServiceId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| &t.service_id == service)
    }

    pub fn tasks_on<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.node_id.as_ref() == Some(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::spec::TaskTemplate;

    pub(crate) fn spec(name: &str, replicas: u64) -> ServiceSpec {
        ServiceSpec::new(name, replicas, TaskTemplate::new("img"))
    }

    fn service(name: &str) -> Service {
        Service::new(ServiceId::random(), spec(name, 1), 0)
    }

    #[test]
    fn names_are_unique_and_errors_are_deterministic() {
        let mut s = Store::default();
        s.apply(Command::CreateService(service("web"))).unwrap();
        let err = s.apply(Command::CreateService(service("web"))).unwrap_err();
        assert!(matches!(err, StoreError::NameInUse(ref n, _) if n == "web"));
        assert_eq!(s.services.len(), 1);
    }

    #[test]
    fn task_status_only_moves_forward() {
        let mut s = Store::default();
        let svc = service("web");
        let sid = svc.id.clone();
        s.apply(Command::CreateService(svc)).unwrap();
        let t = Task {
            id: TaskId::random(),
            service_id: sid,
            service_name: "web".into(),
            slot: 1,
            node_id: None,
            spec: spec("web", 1).task,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::New, 0, "created"),
            created_at: 0,
            attempt: 0,
        };
        let id = t.id.clone();
        s.apply(Command::CreateTasks(vec![t])).unwrap();
        let up = |state| {
            Command::UpdateTaskStatus(vec![TaskStatusUpdate {
                task_id: id.clone(),
                status: TaskStatus::new(state, 1, ""),
            }])
        };
        s.apply(up(TaskState::Running)).unwrap();
        s.apply(up(TaskState::Starting)).unwrap();
        assert_eq!(s.tasks[&id].status.state, TaskState::Running);
        s.apply(up(TaskState::Failed)).unwrap();
        s.apply(up(TaskState::Running)).unwrap();
        assert_eq!(s.tasks[&id].status.state, TaskState::Failed);
    }

    #[test]
    fn snapshot_round_trip_and_unknown_commands() {
        let mut s = Store::default();
        s.apply(Command::CreateService(service("a"))).unwrap();
        let back = Store::from_snapshot(&s.to_snapshot()).unwrap();
        assert_eq!(back, s);
        assert!(decode_command(b"\x81\xa9NotAThing\xc0").is_err());
        let c = Command::RemoveNode("n".into());
        assert_eq!(decode_command(&encode_command(&c)).unwrap(), c);
    }

    #[test]
    fn published_ports_are_allocated_and_checked() {
        let mut s = Store::default();
        let mut a = service("a");
        a.spec.task.ports = vec!["8080:80".parse().unwrap(), "80".parse().unwrap(), "80/udp".parse().unwrap()];
        s.allocate_ports(&a.id, &mut a.spec.task.ports).unwrap();
        let published: Vec<Option<u16>> = a.spec.task.ports.iter().map(|p| p.published).collect();
        assert_eq!(published, [Some(8080), Some(30000), Some(30000)]);
        s.apply(Command::CreateService(a)).unwrap();

        let mut b = service("b");
        b.spec.task.ports = vec!["8080:81".parse().unwrap()];
        let err = s.apply(Command::CreateService(b.clone())).unwrap_err();
        assert_eq!(err.to_string(), "port 8080/tcp is already published by service a");
        b.spec.task.ports = vec!["81".parse().unwrap()];
        s.allocate_ports(&b.id, &mut b.spec.task.ports).unwrap();
        assert_eq!(b.spec.task.ports[0].published, Some(30001));
        b.spec.task.ports.push("30001:90".parse().unwrap());
        assert!(matches!(s.apply(Command::CreateService(b.clone())), Err(StoreError::PortTwice { port: 30001, .. })));

        // Host-mode publishes may share a port.
        let mut h1 = service("h1");
        h1.spec.task.ports = vec!["published=9000,target=80,mode=host".parse().unwrap()];
        let mut h2 = service("h2");
        h2.spec.task.ports = h1.spec.task.ports.clone();
        s.apply(Command::CreateService(h1)).unwrap();
        s.apply(Command::CreateService(h2)).unwrap();
    }

    #[test]
    fn rotating_a_join_token_replaces_that_role_only() {
        let mut s = Store::default();
        let info =
            ClusterInfo { id: "c".into(), worker_token: "w1".into(), manager_token: "m1".into(), ..Default::default() };
        s.apply(Command::InitCluster(Box::new(info))).unwrap();
        s.apply(Command::RotateJoinToken { role: Role::Worker, token: "w2".into() }).unwrap();
        assert_eq!((s.cluster.worker_token.as_str(), s.cluster.manager_token.as_str()), ("w2", "m1"));
        s.apply(Command::RotateJoinToken { role: Role::Manager, token: "m2".into() }).unwrap();
        assert_eq!((s.cluster.worker_token.as_str(), s.cluster.manager_token.as_str()), ("w2", "m2"));
        let c = Command::RotateJoinToken { role: Role::Worker, token: "w3".into() };
        assert_eq!(decode_command(&encode_command(&c)).unwrap(), c);
        assert_eq!(Store::from_snapshot(&s.to_snapshot()).unwrap(), s);
    }

    #[test]
    fn cluster_info_from_before_the_ca_still_decodes() {
        #[derive(Serialize)]
        struct Before {
            id: String,
            worker_token: String,
            manager_token: String,
            created_at: Millis,
        }
        let old = Before { id: "c".into(), worker_token: "w".into(), manager_token: "m".into(), created_at: 1 };
        let info: ClusterInfo = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(info.id, "c");
        assert!(info.ca.is_empty());
    }

    #[test]
    fn removing_a_service_removes_its_tasks() {
        let mut s = Store::default();
        let svc = service("a");
        let sid = svc.id.clone();
        s.apply(Command::CreateService(svc)).unwrap();
        s.apply(Command::RemoveService(sid.clone())).unwrap();
        assert!(s.tasks_of(&sid).next().is_none());
        assert!(matches!(s.apply(Command::RemoveService(sid)), Err(StoreError::NoSuchService(_))));
    }
}
