//! What a user asks for: a service spec, and the checks that turn bad input
//! into a clear error before anything is committed.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::constraint::{Constraint, ConstraintError};
use crate::container::{CredentialSpec, HealthCheck, Isolation, LogDriver, RegistryAuth, Ulimit};
pub use crate::container::{Mount, MountType, TmpfsOptions, VolumeOptions};
use crate::mesh::PortConfig;
use crate::network::{EndpointMode, NetworkAttachment};
use crate::sched::Scheduling;
use crate::secret::{ConfigRef, SecretRef};
use crate::time::Millis;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task: TaskTemplate,
    /// How a change of the task template rolls over the tasks.
    #[serde(default)]
    pub update: UpdateConfig,
    /// How a rollback rolls over the tasks.
    #[serde(default)]
    pub rollback: UpdateConfig,
    /// The Docker Engine API's ServiceSpec as a client of that API sent it
    /// (JSON, keys in Docker's casing), kept so that inspecting the service
    /// there returns what was sent, fields shoal does not act on included.
    /// shoal acts only on the typed fields above; `None` for services made
    /// through shoal's own API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_spec: Option<String>,
    /// How the service's name resolves on its networks (`--endpoint-mode`).
    #[serde(default, skip_serializing_if = "EndpointMode::is_default")]
    pub endpoint_mode: EndpointMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

impl FromStr for UpdateOrder {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "stop-first" => Ok(UpdateOrder::StopFirst),
            "start-first" => Ok(UpdateOrder::StartFirst),
            _ => Err(SpecError::Invalid(format!("invalid update order {s:?}: expected stop-first or start-first"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

impl FromStr for FailureAction {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "pause" => Ok(FailureAction::Pause),
            "continue" => Ok(FailureAction::Continue),
            "rollback" => Ok(FailureAction::Rollback),
            _ => Err(SpecError::Invalid(format!("invalid failure action {s:?}: expected pause, continue or rollback"))),
        }
    }
}

/// A fraction 0..=1 (failures tolerated during an update), compared by bits
/// so that specs stay `Eq`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl PartialEq for Ratio {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Ratio {}

impl FromStr for Ratio {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(Ratio(r)),
            _ => Err(SpecError::Invalid(format!("invalid failure ratio {s:?}: expected a number from 0 to 1"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks updated at once; 0 means all.
    pub parallelism: u64,
    pub delay_ms: u64,
    #[serde(default)]
    pub order: UpdateOrder,
    #[serde(default)]
    pub failure_action: FailureAction,
    /// How long a new task must run to count as a success.
    pub monitor_ms: u64,
    #[serde(default)]
    pub max_failure_ratio: Ratio,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio: Ratio(0.0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    Replicated {
        replicas: u64,
    },
    /// One task per eligible node.
    Global,
    /// Tasks that run to completion: `total_completions` of them must exit
    /// 0, at most `max_concurrent` at a time (`--mode replicated-job`).
    #[serde(rename = "replicated-job")]
    ReplicatedJob {
        total_completions: u64,
        max_concurrent: u64,
    },
    /// One task to completion on every eligible node (`--mode global-job`).
    #[serde(rename = "global-job")]
    GlobalJob,
}

impl ServiceMode {
    /// Replicas asked for; a global service has no fixed number (0); a
    /// replicated job, its total completions.
    pub fn replicas(&self) -> u64 {
        match self {
            ServiceMode::Replicated { replicas } => *replicas,
            ServiceMode::ReplicatedJob { total_completions, .. } => *total_completions,
            ServiceMode::Global | ServiceMode::GlobalJob => 0,
        }
    }

    /// One task per node (a global service or a global job).
    pub fn is_global(&self) -> bool {
        matches!(self, ServiceMode::Global | ServiceMode::GlobalJob)
    }

    /// Its tasks run to completion and are not replaced when they exit 0.
    pub fn is_job(&self) -> bool {
        matches!(self, ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob)
    }

    /// docker's name for the mode, as `--mode` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        }
    }

    /// `--mode` with `--replicas` and `--max-concurrent` as given (None:
    /// not given), checked as docker checks them, with docker's words.
    pub fn from_flags(mode: &str, replicas: Option<u64>, max_concurrent: Option<u64>) -> Result<Self, SpecError> {
        let invalid = |m: &str| Err(SpecError::Invalid(m.to_string()));
        match mode {
            "replicated" | "global" | "global-job" if max_concurrent.is_some() => {
                invalid("max-concurrent can only be used with replicated-job mode")
            }
            "global" | "global-job" if replicas.is_some() => {
                invalid("replicas can only be used with replicated or replicated-job mode")
            }
            "replicated" => Ok(ServiceMode::Replicated { replicas: replicas.unwrap_or(1) }),
            "global" => Ok(ServiceMode::Global),
            "global-job" => Ok(ServiceMode::GlobalJob),
            "replicated-job" => {
                // docker: max-concurrent defaults to --replicas; swarmkit:
                // both default to 1.
                let total = replicas.unwrap_or(1);
                let max_concurrent = max_concurrent.unwrap_or(total);
                if max_concurrent == 0 && total > 0 {
                    return invalid("max-concurrent must be at least 1");
                }
                Ok(ServiceMode::ReplicatedJob { total_completions: total, max_concurrent })
            }
            other => invalid(&format!("unknown mode: {other}, only replicated and global supported")),
        }
    }
}

impl FromStr for ServiceMode {
    type Err = SpecError;
    /// `replicated` (1 replica until `--replicas` says), `global`,
    /// `replicated-job` (1 completion) or `global-job`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        ServiceMode::from_flags(s, None, None)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTemplate {
    pub image: String,
    /// Replaces the image's entrypoint (Docker's `ContainerSpec.Command`,
    /// `--entrypoint`); empty keeps the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Command and arguments; empty means the image's default.
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, in order.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Grace period between SIGTERM and SIGKILL when a task is stopped.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
    /// Published ports; each task exposes the targets on its node.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// Bumped by `service update --force`: a new template, so every task
    /// rolls although nothing else changed.
    #[serde(default)]
    pub force_update: u64,
    /// The container's own settings, passed to Docker as they are.
    #[serde(default, skip_serializing_if = "ContainerOptions::is_default")]
    pub container: ContainerOptions,
    /// Resource limits, enforced by Docker (cgroups).
    #[serde(default, skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    /// Secrets mounted into each task as files (see [`crate::secret`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
    /// Configs mounted into each task as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigRef>,
    /// Reservations, placement preferences, max replicas per node.
    #[serde(default, skip_serializing_if = "Scheduling::is_default")]
    pub scheduling: Scheduling,
    /// The networks the tasks join (`--network`), in order; `host` alone
    /// shares the node's network stack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// How long a task's stopped container (and so its logs) is kept on its
    /// node after the task is removed or replaced (`--log-retention`;
    /// `None`: [`DEFAULT_LOG_RETENTION_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_retention_ms: Option<u64>,
    /// The credentials the node pulls the image with (`--with-registry-auth`);
    /// never in an API answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
}

/// `--log-retention`'s default: 15 minutes.
pub const DEFAULT_LOG_RETENTION_MS: u64 = 15 * 60 * 1000;

/// Swarm's ContainerSpec settings beyond image, command, env and mounts:
/// Docker applies them to each task's container. `hostname` may use
/// Swarm's templates (`{{.Service.Name}}`, `{{.Task.Slot}}`,
/// `{{.Node.Hostname}}`, …), expanded on the node (see [`expand_template`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `user`, `user:group`, `uid` or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Extra groups (`--group`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// `Some(true)`: an init process as PID 1; `None`: Docker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// DNS servers, search domains and resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// Extra `/etc/hosts` lines, Swarm's way: `IP HOSTNAME [ALIAS…]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Labels on the container (`--container-label`); shoal's own
    /// `shoal.*` labels take precedence.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `None`: the image's HEALTHCHECK, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// `None`: the engine's default log driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<LogDriver>,
    /// `None`: Docker's default (on Linux the only one it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Windows only; a Linux node's Docker refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_spec: Option<CredentialSpec>,
}

impl ContainerOptions {
    pub fn is_default(&self) -> bool {
        *self == ContainerOptions::default()
    }
}

/// Limits on a task's container; 0 means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs in units of 10⁻⁹ (`--limit-cpu 0.5` is 500,000,000).
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub pids: u64,
}

impl Limits {
    pub fn is_default(&self) -> bool {
        *self == Limits::default()
    }
}

/// What a template may name about the task it is expanded for.
#[derive(Clone, Debug, Default)]
pub struct TemplateContext<'a> {
    pub service_id: &'a str,
    pub service_name: &'a str,
    pub task_id: &'a str,
    /// `name.slot.id` (`name.node.id` for a global task), as Swarm names containers.
    pub task_name: &'a str,
    pub slot: u64,
    pub node_id: &'a str,
    pub node_hostname: &'a str,
}

/// Expands Swarm's templates (`{{.Service.ID}}`, `{{.Service.Name}}`,
/// `{{.Task.ID}}`, `{{.Task.Name}}`, `{{.Task.Slot}}`, `{{.Node.ID}}`,
/// `{{.Node.Hostname}}`, spaces inside the braces allowed) in `s`; anything
/// else between braces is left as it is.
pub fn expand_template(s: &str, cx: &TemplateContext) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let value = match after[..end].trim() {
            ".Service.ID" => Some(cx.service_id.to_string()),
            ".Service.Name" => Some(cx.service_name.to_string()),
            ".Task.ID" => Some(cx.task_id.to_string()),
            ".Task.Name" => Some(cx.task_name.to_string()),
            ".Task.Slot" => Some(cx.slot.to_string()),
            ".Node.ID" => Some(cx.node_id.to_string()),
            ".Node.Hostname" => Some(cx.node_hostname.to_string()),
            _ => None,
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn default_stop_grace_ms() -> u64 {
    10_000
}

impl TaskTemplate {
    /// The image's default command, no env, mounts or constraints, the
    /// default restart policy and stop grace period.
    pub fn new(image: &str) -> Self {
        TaskTemplate {
            image: image.to_string(),
            entrypoint: vec![],
            args: vec![],
            env: vec![],
            mounts: vec![],
            constraints: vec![],
            restart: RestartPolicy::default(),
            stop_grace_ms: default_stop_grace_ms(),
            ports: vec![],
            force_update: 0,
            container: ContainerOptions::default(),
            limits: Limits::default(),
            secrets: vec![],
            configs: vec![],
            scheduling: Scheduling::default(),
            networks: vec![],
            log_retention_ms: None,
            registry_auth: None,
        }
    }

    /// The template as an API may show it: without the registry login.
    pub fn redacted(mut self) -> Self {
        self.registry_auth = None;
        self
    }

    /// How long the task's container outlives the task ([`Self::log_retention_ms`]).
    pub fn log_retention_ms(&self) -> u64 {
        self.log_retention_ms.unwrap_or(DEFAULT_LOG_RETENTION_MS)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

impl FromStr for RestartCondition {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "none" => Ok(RestartCondition::None),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "any" => Ok(RestartCondition::Any),
            _ => Err(SpecError::RestartCondition(s.to_string())),
        }
    }
}

impl fmt::Display for RestartCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// `None`: unlimited.
    pub max_attempts: Option<u64>,
    /// With `max_attempts`: only restarts within this window count.
    #[serde(default)]
    pub window_ms: Option<u64>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 5_000, max_attempts: None, window_ms: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid name {0:?}: names must be 1-63 characters of [a-zA-Z0-9-_.] starting with a letter or digit")]
    Name(String),
    #[error("invalid image: the image name must not be empty")]
    EmptyImage,
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
    #[error("invalid mount {0:?}: {1}")]
    Mount(String, String),
    #[error("invalid environment variable {0:?}: expected KEY=VALUE")]
    Env(String),
    #[error("invalid label {0:?}: expected KEY=VALUE")]
    Label(String),
    #[error("invalid restart condition {0:?}: expected none, on-failure or any")]
    RestartCondition(String),
    #[error("invalid replicas {0:?}: expected a number of replicas, 0 or more")]
    Replicas(String),
    #[error(transparent)]
    File(#[from] crate::secret::SecretError),
    #[error("{0}")]
    Invalid(String),
}

pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::Name(name.to_string()))
    }
}

pub fn parse_replicas(s: &str) -> Result<u64, SpecError> {
    s.trim().parse::<u64>().map_err(|_| SpecError::Replicas(s.to_string()))
}

/// `KEY=VALUE` (env entries and labels). An env entry without `=` is refused
/// rather than guessed at.
pub fn parse_key_value(s: &str) -> Option<(String, String)> {
    let (k, v) = s.split_once('=')?;
    if k.is_empty() {
        return None;
    }
    Some((k.to_string(), v.to_string()))
}

pub fn validate_env(entry: &str) -> Result<(), SpecError> {
    parse_key_value(entry).map(|_| ()).ok_or_else(|| SpecError::Env(entry.to_string()))
}

pub fn parse_label(s: &str) -> Result<(String, String), SpecError> {
    // docker allows `-l key` meaning an empty value.
    if !s.contains('=') && !s.is_empty() {
        return Ok((s.to_string(), String::new()));
    }
    parse_key_value(s).ok_or_else(|| SpecError::Label(s.to_string()))
}

impl ServiceSpec {
    /// A replicated service with default update and rollback settings.
    pub fn new(name: &str, replicas: u64, task: TaskTemplate) -> Self {
        ServiceSpec {
            name: name.to_string(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas },
            task,
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            engine_spec: None,
            endpoint_mode: EndpointMode::Vip,
        }
    }

    /// Checks everything that can be checked without the cluster.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        crate::secret::validate_refs(crate::secret::Kind::Secret, &self.task.secrets)?;
        crate::secret::validate_refs(crate::secret::Kind::Config, &self.task.configs)?;
        if self.task.image.trim().is_empty() {
            return Err(SpecError::EmptyImage);
        }
        for e in &self.task.env {
            validate_env(e)?;
        }
        if self.task.scheduling.max_replicas_per_node > 0
            && !matches!(self.mode, ServiceMode::Replicated { .. } | ServiceMode::ReplicatedJob { .. })
        {
            return Err(SpecError::Invalid(
                "replicas-max-per-node can only be used with replicated or replicated-job mode".into(),
            ));
        }
        for m in &self.task.mounts {
            m.validate().map_err(SpecError::Invalid)?;
        }
        self.validate_networks()
    }

    /// `host` alone and without published ports; no network twice.
    fn validate_networks(&self) -> Result<(), SpecError> {
        let nets = &self.task.networks;
        if nets.iter().any(|n| n.network == crate::network::HOST_NETWORK) {
            if nets.len() > 1 {
                return Err(SpecError::Invalid("--network host cannot be combined with other networks".into()));
            }
            if !self.task.ports.is_empty() {
                return Err(SpecError::Invalid(
                    "published ports mean nothing with --network host: the task listens on its node's own \
                     addresses; remove --publish"
                        .into(),
                ));
            }
        }
        for (i, n) in nets.iter().enumerate() {
            if nets[..i].iter().any(|m| m.network == n.network) {
                return Err(SpecError::Invalid(format!("network {:?} is given twice", n.network)));
            }
        }
        Ok(())
    }
}

/// Applies `--env-add` / `--env-rm`: an added `KEY=V` replaces any `KEY=…`.
pub fn update_env(env: &mut Vec<String>, add: &[String], rm: &[String]) {
    let key = |e: &str| e.split_once('=').map(|(k, _)| k.to_string()).unwrap_or_else(|| e.to_string());
    env.retain(|e| !rm.iter().any(|r| key(r) == key(e)));
    for a in add {
        let k = key(a);
        env.retain(|e| key(e) != k);
        env.push(a.clone());
    }
}

/// Where a rolling update (or rollback) of a service stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn is_rollback(self) -> bool {
        matches!(self, UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted)
    }
    pub fn is_active(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
    pub fn is_paused(self) -> bool {
        matches!(self, UpdateState::Paused | UpdateState::RollbackPaused)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: Millis,
    #[serde(default)]
    pub completed_at: Option<Millis>,
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_what_swarm_names_and_keep_the_rest() {
        let cx = TemplateContext {
            service_id: "s1",
            service_name: "web",
            task_id: "t1",
            task_name: "web.2.t1",
            slot: 2,
            node_id: "n1",
            node_hostname: "node1",
        };
        assert_eq!(expand_template("{{.Service.Name}}-{{ .Task.Slot }}@{{.Node.Hostname}}", &cx), "web-2@node1");
        assert_eq!(
            expand_template("{{.Node.ID}}/{{.Task.ID}}/{{.Service.ID}}/{{.Task.Name}}", &cx),
            "n1/t1/s1/web.2.t1"
        );
        assert_eq!(expand_template("{{.Other}} {{ open", &cx), "{{.Other}} {{ open");
        assert_eq!(expand_template("plain", &cx), "plain");
    }

    #[test]
    fn names_and_replicas() {
        assert!(validate_name("pingpong").is_ok());
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
        assert_eq!(parse_replicas("6").unwrap(), 6);
        assert!(parse_replicas("-1").is_err());
        assert!(parse_replicas("many").is_err());
    }

    #[test]
    fn env_updates_replace_by_key() {
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        update_env(&mut env, &["A=3".into(), "C=4".into()], &["B".into()]);
        assert_eq!(env, vec!["A=3", "C=4"]);
        assert!(validate_env("NOEQUALS").is_err());
        assert!(validate_env("=x").is_err());
        assert_eq!(parse_label("k").unwrap(), ("k".into(), "".into()));
    }
}
