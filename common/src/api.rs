//! Bodies of the HTTP JSON API, shared by the daemon (which serves them) and
//! the CLI (which reads them).
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/v1/info` | → [`Info`] |
//! | GET | `/v1/nodes` | → `[NodeInfo]` |
//! | GET | `/v1/nodes/{id-or-hostname}` | → [`NodeInfo`] |
//! | POST | `/v1/nodes/{id-or-hostname}/update` | [`NodeUpdate`] → [`NodeInfo`] |
//! | DELETE | `/v1/nodes/{id-or-hostname}?force=true` | → [`NodeInfo`] |
//! | GET | `/v1/join-tokens` | → [`JoinTokens`] |
//! | POST | `/v1/join-tokens/rotate?role=worker\|manager` | → [`JoinTokens`] (that role's token replaced) |
//! | GET | `/v1/networks` | → `[Network]` |
//! | POST | `/v1/networks` | [`NetworkSpec`](crate::network::NetworkSpec) → [`Network`](crate::network::Network) |
//! | GET | `/v1/networks/{id-or-name}` | → `Network` |
//! | DELETE | `/v1/networks/{id-or-name}` | → `Network` (refused while a service uses it) |
//! | GET | `/v1/services` | → `[ServiceInfo]` |
//! | POST | `/v1/services` | [`ServiceSpec`] → [`ServiceInfo`] |
//! | GET | `/v1/services/{id-or-name}` | → [`ServiceInfo`] |
//! | POST | `/v1/services/{id-or-name}/update` | [`ServiceUpdate`] → [`ServiceInfo`] |
//! | POST | `/v1/services/{id-or-name}/rollback` | → [`ServiceInfo`] |
//! | DELETE | `/v1/services/{id-or-name}` | → [`ServiceInfo`] |
//! | GET | `/v1/services/{id-or-name}/tasks` | → `[TaskInfo]` |
//! | GET | `/v1/services/{id-or-name}/logs?follow&tail=N` | → NDJSON of [`LogEntry`] |
//! | GET | `/v1/events?since=MS&type=service,task,node` | → NDJSON of [`Event`], kept then live |
//! | GET | `/v1/secrets`, `/v1/configs` | → `[FileInfo]` |
//! | POST | `/v1/secrets`, `/v1/configs` | [`FileCreate`] → [`FileInfo`] |
//! | GET | `/v1/secrets/{id-or-name}`, `/v1/configs/…` | → [`FileInfo`] (a secret's value never) |
//! | DELETE | `/v1/secrets/{id-or-name}`, `/v1/configs/…` | → [`FileInfo`] |
//! | GET | `/v1/ui/state` | → [`UiState`] |
//! | GET | `/v1/ui/stream` | → server-sent events: `snapshot` ([`UiState`]), then `patch` ([`UiPatch`]) |
//! | GET | `/ui` (`/` redirects there) | → the web view (page, `/ui/app.js`, `/ui/style.css`) |
//! | GET | `/metrics` | → Prometheus text |
//!
//! Errors come back with a 4xx/5xx status and an [`ApiError`] body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::container::{ContainerUpdate, RegistryAuth};
use crate::ids::{NodeId, ServiceId, TaskId};
use crate::mesh::PortConfig;
use crate::node::{Availability, Node, NodeStatus};
use crate::secret::{ConfigRef, FileRef, SecretRef};
use crate::spec::{
    update_env, FailureAction, Ratio, RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, SpecError,
    UpdateConfig, UpdateOrder, UpdateStatus,
};
use crate::task::{Task, TaskState};
use crate::time::Millis;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub node_id: NodeId,
    pub hostname: String,
    pub is_manager: bool,
    pub is_leader: bool,
    pub cluster_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    #[serde(flatten)]
    pub node: Node,
    pub status: NodeStatus,
    /// "Leader", "Reachable", "Unreachable" for managers; empty for workers.
    pub manager_status: String,
    /// The node answering this request.
    pub is_self: bool,
    /// Set while the node's disk alarm is raised (a manager whose raft
    /// files cannot be written): why. From gossip, as this manager sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_alarm: Option<String>,
    /// What the node reported it offers and what its tasks reserve;
    /// `None` until it has reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::sched::NodeResources>,
}

/// `node update` flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdate {
    #[serde(default)]
    pub availability: Option<Availability>,
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    #[serde(default)]
    pub label_rm: Vec<String>,
}

/// `POST /v1/certs` (`shoal cert issue`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRequest {
    /// The client's name (the certificate's CN).
    pub name: String,
    /// `admin` or `readonly`.
    pub role: String,
    /// The client's certificate request (PEM): its key stays with it.
    pub csr: String,
}

/// `POST /v1/certs`: a client certificate and the CA that signed it (PEM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertIssued {
    pub certificate: String,
    pub ca_certificate: String,
}

/// The answer to `POST /v1/gossip-key/rotate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKeyRotated {
    /// The new key's id (datagrams name it).
    pub key_id: u32,
    /// When nodes start sealing with it (ms since the epoch).
    pub switch_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub id: ServiceId,
    pub version: u64,
    pub spec: ServiceSpec,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Tasks running now.
    pub running: u64,
    /// Tasks the spec asks for (for a global service: eligible nodes; for
    /// a job: the tasks still to run now, as Swarm counts them).
    pub desired: u64,
    /// A job's tasks of its current run that completed.
    #[serde(default)]
    pub completed: u64,
    /// A job's current run (`None` for other services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_iteration: Option<u64>,
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// The spec before the last update (what `service rollback` restores).
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    /// Published ports some node cannot serve: `node2: published port …`.
    /// Known to the leader only; empty elsewhere.
    #[serde(default)]
    pub mesh_errors: Vec<String>,
    /// The service's virtual IP on each network (`network` is its id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<crate::network::Vip>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    #[serde(flatten)]
    pub task: Task,
    pub node_hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub task_id: TaskId,
    pub service_name: String,
    pub slot: u64,
    /// `name.slot` (`name.node-id` for a global task).
    #[serde(default)]
    pub task_name: String,
    pub node: String,
    /// The node's id (the Engine API's log details carry it).
    #[serde(default)]
    pub node_id: Option<NodeId>,
    pub timestamp: String,
    pub line: String,
    /// stdout or stderr (stdout from a manager that does not say).
    #[serde(default, skip_serializing_if = "crate::wire::OutputStream::is_stdout")]
    pub stream: crate::wire::OutputStream,
}

/// One cluster event, as `shoal events` and the web view receive them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event on the manager that serves the stream.
    pub seq: u64,
    pub time: Millis,
    /// `service`, `task`, `node`, `secret`, `config` or `network`.
    #[serde(rename = "type")]
    pub kind: String,
    /// service: create/update/rollback/remove; node: create/update/remove/up/down;
    /// task: its new state (`running`, `failed`, …) or `remove`.
    pub action: String,
    pub id: String,
    /// Service name, task name (`web.1`), node hostname.
    pub name: String,
    /// For a task: the hostname of its node.
    #[serde(default)]
    pub node: Option<String>,
    /// Extra words: a task's error, a node's availability, an update's state.
    #[serde(default)]
    pub message: String,
}

/// `service update` flags; absent fields leave the spec as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    #[serde(default)]
    pub replicas: Option<u64>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env_add: Vec<String>,
    #[serde(default)]
    pub env_rm: Vec<String>,
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    #[serde(default)]
    pub label_rm: Vec<String>,
    #[serde(default)]
    pub constraint_add: Vec<Constraint>,
    #[serde(default)]
    pub constraint_rm: Vec<Constraint>,
    #[serde(default)]
    pub publish_add: Vec<PortConfig>,
    /// Removes publishes with this target (and protocol, and published port if given).
    #[serde(default)]
    pub publish_rm: Vec<PortConfig>,
    #[serde(default)]
    pub update_config: UpdateConfigPatch,
    #[serde(default)]
    pub rollback_config: UpdateConfigPatch,
    #[serde(default)]
    pub restart: RestartPatch,
    /// Roll every task even if nothing else changed.
    #[serde(default)]
    pub force: bool,
    /// Move the fewest tasks needed to spread a replicated service evenly
    /// over the nodes that may take them again, as a rolling update.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebalance: bool,
    /// `--log-retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_retention_ms: Option<u64>,
    /// References to add (ids left empty: looked up by name); one with the
    /// target of an existing one replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_add: Vec<SecretRef>,
    /// Secret names (or ids) whose references go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_rm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_add: Vec<ConfigRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_rm: Vec<String>,
    /// Reservations, placement preferences, max replicas per node.
    #[serde(default, skip_serializing_if = "crate::sched::SchedulingPatch::is_default")]
    pub scheduling: crate::sched::SchedulingPatch,
    /// Changes to the container's settings (health check, mounts, …).
    #[serde(default, skip_serializing_if = "ContainerUpdate::is_empty")]
    pub container: ContainerUpdate,
    /// `--network-add`, `--network-rm`, `--endpoint-mode`.
    #[serde(default, skip_serializing_if = "NetworkPatch::is_empty")]
    pub network: NetworkPatch,
    /// `--max-concurrent`: a replicated job's tasks at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// `--with-registry-auth`: the login the tasks pull with from now on
    /// (without it, the service keeps the one it has, as in Swarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
}

/// The networks a service update changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPatch {
    #[serde(default)]
    pub add: Vec<crate::network::NetworkAttachment>,
    /// Network names (or ids, as given) to leave.
    #[serde(default)]
    pub rm: Vec<String>,
    #[serde(default)]
    pub endpoint_mode: Option<crate::network::EndpointMode>,
}

impl NetworkPatch {
    pub fn is_empty(&self) -> bool {
        *self == NetworkPatch::default()
    }

    pub fn apply(&self, s: &mut ServiceSpec) {
        s.task.networks.retain(|n| !self.rm.contains(&n.network));
        for a in &self.add {
            match s.task.networks.iter_mut().find(|n| n.network == a.network) {
                Some(n) => n.aliases = a.aliases.clone(),
                None => s.task.networks.push(a.clone()),
            }
        }
        if let Some(m) = self.endpoint_mode {
            s.endpoint_mode = m;
        }
    }
}

/// `POST /v1/secrets` or `/v1/configs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCreate {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The value, base64 (standard alphabet, padded).
    pub data: String,
}

/// A secret or config as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub version: u64,
    /// Bytes of the value.
    pub size: usize,
    /// A config's value, base64; never a secret's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Names of the services that use it.
    #[serde(default)]
    pub services: Vec<String>,
}

/// Fields of an [`UpdateConfig`] to change; absent ones stay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfigPatch {
    pub parallelism: Option<u64>,
    pub delay_ms: Option<u64>,
    pub order: Option<UpdateOrder>,
    pub failure_action: Option<FailureAction>,
    pub monitor_ms: Option<u64>,
    pub max_failure_ratio: Option<Ratio>,
}

impl UpdateConfigPatch {
    pub fn apply(&self, c: &mut UpdateConfig) {
        if let Some(v) = self.parallelism {
            c.parallelism = v;
        }
        if let Some(v) = self.delay_ms {
            c.delay_ms = v;
        }
        if let Some(v) = self.order {
            c.order = v;
        }
        if let Some(v) = self.failure_action {
            c.failure_action = v;
        }
        if let Some(v) = self.monitor_ms {
            c.monitor_ms = v;
        }
        if let Some(v) = self.max_failure_ratio {
            c.max_failure_ratio = v;
        }
    }
}

/// Fields of a [`RestartPolicy`] to change; absent ones stay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPatch {
    pub condition: Option<RestartCondition>,
    pub delay_ms: Option<u64>,
    pub max_attempts: Option<u64>,
    pub window_ms: Option<u64>,
}

impl RestartPatch {
    pub fn apply(&self, r: &mut RestartPolicy) {
        if let Some(v) = self.condition {
            r.condition = v;
        }
        if let Some(v) = self.delay_ms {
            r.delay_ms = v;
        }
        if let Some(v) = self.max_attempts {
            r.max_attempts = Some(v);
        }
        if let Some(v) = self.window_ms {
            r.window_ms = Some(v);
        }
    }
}

/// docker's `--secret-rm NAME` / `--secret-add REF`: removes by name or id,
/// then adds, an added reference replacing one with the same target.
fn update_refs<Id: Clone + AsRef<str>>(refs: &mut Vec<FileRef<Id>>, add: &[FileRef<Id>], rm: &[String]) {
    refs.retain(|r| !rm.iter().any(|k| *k == r.name || k == r.id.as_ref()));
    for a in add {
        refs.retain(|r| r.target != a.target);
        refs.push(a.clone());
    }
}

impl ServiceUpdate {
    /// The spec after this update, checked.
    pub fn apply(&self, spec: &ServiceSpec) -> Result<ServiceSpec, SpecError> {
        let mut s = spec.clone();
        if let Some(r) = self.replicas {
            s.mode = match s.mode {
                ServiceMode::Replicated { .. } => ServiceMode::Replicated { replicas: r },
                ServiceMode::ReplicatedJob { max_concurrent, .. } => {
                    ServiceMode::ReplicatedJob { total_completions: r, max_concurrent }
                }
                ServiceMode::Global | ServiceMode::GlobalJob => {
                    return Err(SpecError::Invalid("replicas can only be set on a replicated service".into()))
                }
            };
        }
        if let Some(m) = self.max_concurrent {
            let ServiceMode::ReplicatedJob { total_completions, .. } = s.mode else {
                return Err(SpecError::Invalid("max-concurrent can only be used with replicated-job mode".into()));
            };
            if m == 0 && total_completions > 0 {
                return Err(SpecError::Invalid("max-concurrent must be at least 1".into()));
            }
            s.mode = ServiceMode::ReplicatedJob { total_completions, max_concurrent: m };
        }
        if let Some(a) = &self.registry_auth {
            s.task.registry_auth = Some(a.clone());
        }
        self.update_config.apply(&mut s.update);
        self.rollback_config.apply(&mut s.rollback);
        self.restart.apply(&mut s.task.restart);
        self.scheduling.apply(&mut s.task.scheduling);
        if self.force {
            s.task.force_update += 1;
        }
        if let Some(r) = self.log_retention_ms {
            s.task.log_retention_ms = Some(r);
        }
        self.network.apply(&mut s);
        if let Some(img) = &self.image {
            s.task.image = img.clone();
        }
        if let Some(args) = &self.args {
            s.task.args = args.clone();
        }
        update_env(&mut s.task.env, &self.env_add, &self.env_rm);
        update_refs(&mut s.task.secrets, &self.secret_add, &self.secret_rm);
        update_refs(&mut s.task.configs, &self.config_add, &self.config_rm);
        self.container.apply(&mut s.task);
        for k in &self.label_rm {
            s.labels.remove(k);
        }
        for (k, v) in &self.label_add {
            s.labels.insert(k.clone(), v.clone());
        }
        s.task.constraints.retain(|c| !self.constraint_rm.contains(c));
        for c in &self.constraint_add {
            if !s.task.constraints.contains(c) {
                s.task.constraints.push(c.clone());
            }
        }
        let ports = &mut s.task.ports;
        ports.retain(|p| {
            !self.publish_rm.iter().any(|r| {
                r.target == p.target
                    && r.protocol == p.protocol
                    && (r.published.is_none() || r.published == p.published)
            })
        });
        for add in &self.publish_add {
            // A publish of the same target and protocol is replaced.
            ports.retain(|p| !(p.target == add.target && p.protocol == add.protocol && p.mode == add.mode));
            ports.push(*add);
        }
        s.validate()?;
        Ok(s)
    }
}

/// What the web view draws: every node, and the live tasks (not finished, or
/// the newest of a slot that is still meant to run) in a compact form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiState {
    /// The manager's clock, so that the page can show ages without trusting
    /// the browser's.
    pub now: Millis,
    /// Managers first, then by hostname: the page's column order.
    pub nodes: Vec<NodeInfo>,
    pub tasks: Vec<UiTask>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiTask {
    pub id: TaskId,
    pub service: String,
    pub service_id: ServiceId,
    pub slot: u64,
    /// `web.3` (`web.<node-id>` for a global service).
    pub name: String,
    pub node_id: Option<NodeId>,
    pub image: String,
    pub state: TaskState,
    pub desired: TaskState,
    /// When the task entered `state`.
    pub since: Millis,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Its addresses on its networks: `app 10.0.0.2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// The change from one [`UiState`] to the next: tasks new or changed,
/// tasks gone, and the whole node list when any node changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiPatch {
    pub now: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeInfo>>,
    #[serde(default)]
    pub upsert: Vec<UiTask>,
    #[serde(default)]
    pub remove: Vec<TaskId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TaskTemplate;

    #[test]
    fn max_concurrent_changes_only_a_replicated_job_and_a_login_is_kept_unless_replaced() {
        let mut spec = ServiceSpec::new("j", 1, TaskTemplate::new("img"));
        spec.mode = ServiceMode::ReplicatedJob { total_completions: 6, max_concurrent: 1 };
        let login = RegistryAuth { username: "a".into(), password: "p".into(), server_address: "r.io".into() };
        spec.task.registry_auth = Some(login.clone());
        let up = ServiceUpdate { max_concurrent: Some(3), ..Default::default() };
        let after = up.apply(&spec).unwrap();
        assert_eq!(after.mode, ServiceMode::ReplicatedJob { total_completions: 6, max_concurrent: 3 });
        assert_eq!(after.task.registry_auth, Some(login), "no new login: the old one stays");
        let zero = ServiceUpdate { max_concurrent: Some(0), ..Default::default() };
        assert_eq!(zero.apply(&spec).unwrap_err().to_string(), "max-concurrent must be at least 1");
        let web = ServiceSpec::new("w", 1, TaskTemplate::new("img"));
        assert_eq!(up.apply(&web).unwrap_err().to_string(), "max-concurrent can only be used with replicated-job mode");
    }
}
