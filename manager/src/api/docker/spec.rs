//! Docker's ServiceSpec and shoal's, both ways: [`from_engine`] reads what
//! an Engine API client sent (after [`super::json::canonical`]) into shoal's
//! typed spec, keeping the document itself in `engine_spec`; [`to_engine`]
//! renders a shoal spec as Docker's, and [`engine_view`] answers `inspect`
//! with the document a client sent whenever shoal's spec is still the one
//! it made (else the document with the fields shoal owns brought up to
//! date). [`ignored`] names what a document asks for that shoal does not do
//! yet, for the `Warnings` of the answer.
//!
//! Pure: no I/O, no store.

use std::collections::BTreeMap;

use common::constraint::Constraint;
use common::container::{CredentialSpec, HealthCheck, Isolation, LogDriver, Ulimit};
use common::mesh::{PortConfig, Protocol, PublishMode};
use common::sched::{Resources, Scheduling, Spread};
use common::secret::{self, FileRef, Kind};
use common::spec::{
    ContainerOptions, FailureAction, Limits, Mount, MountType, Ratio, RestartCondition, RestartPolicy, ServiceMode,
    ServiceSpec, TaskTemplate, TmpfsOptions, UpdateConfig, UpdateOrder, VolumeOptions,
};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use super::json::FREE_MAPS;

/// Why a document is not a spec shoal can run; the text is what the docker
/// CLI prints after "Error response from daemon:".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineSpecError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is not supported by shoal yet")]
    Unsupported(String),
}

/// Go's `null` for an empty slice or map: the empty value.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerServiceSpec {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    task_template: Option<DockerTaskSpec>,
    #[serde(default)]
    mode: Option<DockerMode>,
    #[serde(default)]
    update_config: Option<DockerUpdateConfig>,
    #[serde(default)]
    rollback_config: Option<DockerUpdateConfig>,
    #[serde(default)]
    endpoint_spec: Option<DockerEndpointSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerMode {
    #[serde(default)]
    replicated: Option<DockerReplicated>,
    #[serde(default)]
    global: Option<Value>,
    #[serde(default)]
    replicated_job: Option<DockerReplicatedJob>,
    #[serde(default)]
    global_job: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerReplicatedJob {
    #[serde(default)]
    max_concurrent: Option<u64>,
    #[serde(default)]
    total_completions: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerReplicated {
    #[serde(default)]
    replicas: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerTaskSpec {
    #[serde(default)]
    container_spec: Option<DockerContainerSpec>,
    #[serde(default)]
    restart_policy: Option<DockerRestartPolicy>,
    #[serde(default)]
    placement: Option<DockerPlacement>,
    #[serde(default)]
    resources: Option<DockerResources>,
    #[serde(default, deserialize_with = "nullable")]
    force_update: u64,
    #[serde(default)]
    log_driver: Option<DockerDriver>,
    #[serde(default, deserialize_with = "nullable")]
    networks: Vec<DockerNetworkAttachment>,
}

/// `TaskTemplate.Networks[]`: `Target` is a network's name or id.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerNetworkAttachment {
    #[serde(default, deserialize_with = "nullable")]
    target: String,
    #[serde(default, deserialize_with = "nullable")]
    aliases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerContainerSpec {
    #[serde(default, deserialize_with = "nullable")]
    image: String,
    #[serde(default, deserialize_with = "nullable")]
    command: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    args: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    env: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    mounts: Vec<DockerMount>,
    /// Nanoseconds.
    #[serde(default)]
    stop_grace_period: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    hostname: String,
    #[serde(default, deserialize_with = "nullable")]
    user: String,
    #[serde(default, deserialize_with = "nullable")]
    groups: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    dir: String,
    #[serde(default, rename = "TTY", deserialize_with = "nullable")]
    tty: bool,
    #[serde(default)]
    init: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    read_only: bool,
    #[serde(default, deserialize_with = "nullable")]
    stop_signal: String,
    #[serde(default, deserialize_with = "nullable")]
    capability_add: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    capability_drop: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    sysctls: BTreeMap<String, String>,
    #[serde(default, rename = "DNSConfig")]
    dns_config: Option<DockerDnsConfig>,
    #[serde(default, deserialize_with = "nullable")]
    hosts: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    secrets: Vec<DockerFileRef>,
    #[serde(default, deserialize_with = "nullable")]
    configs: Vec<DockerFileRef>,
    #[serde(default, rename = "HealthCheck")]
    health_check: Option<DockerHealthCheck>,
    #[serde(default, deserialize_with = "nullable")]
    ulimits: Vec<DockerUlimit>,
    #[serde(default, deserialize_with = "nullable")]
    isolation: String,
    #[serde(default)]
    privileges: Option<DockerPrivileges>,
}

/// Privileges: shoal reads the CredentialSpec (SELinux and the rest are
/// kept in the document only).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerPrivileges {
    #[serde(default)]
    credential_spec: Option<DockerCredentialSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerCredentialSpec {
    #[serde(default, deserialize_with = "nullable")]
    config: String,
    #[serde(default, deserialize_with = "nullable")]
    file: String,
    #[serde(default, deserialize_with = "nullable")]
    registry: String,
}

/// moby's `credentialSpecToGRPC`: exactly one source, with its words.
fn credential_spec(c: DockerCredentialSpec) -> Result<CredentialSpec, EngineSpecError> {
    let given: Vec<(&str, String)> = [("config", c.config), ("file", c.file), ("registry", c.registry)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    match &given[..] {
        [] => Err(invalid(
            "invalid CredentialSpec: must either provide \"file\", \"registry\", or \"config\" for credential spec",
        )),
        [(kind, v)] => Ok(match *kind {
            "config" => CredentialSpec::Config(v.clone()),
            "file" => CredentialSpec::File(v.clone()),
            _ => CredentialSpec::Registry(v.clone()),
        }),
        [(a, _), (b, _)] => {
            Err(invalid(format!("invalid CredentialSpec: cannot specify both {a} and {b} credential specs")))
        }
        _ => Err(invalid("invalid CredentialSpec: cannot specify both config, file, and registry credential specs")),
    }
}

/// moby's `isolationToGRPC`: a word it does not know is the default.
fn isolation(s: &str) -> Option<Isolation> {
    match s.to_ascii_lowercase().as_str() {
        "" => None,
        "process" => Some(Isolation::Process),
        "hyperv" => Some(Isolation::Hyperv),
        _ => Some(Isolation::Default),
    }
}

/// A SecretReference or ConfigReference.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerFileRef {
    #[serde(default)]
    file: Option<DockerFileTarget>,
    #[serde(default, rename = "SecretID", alias = "ConfigID", deserialize_with = "nullable")]
    id: String,
    #[serde(default, rename = "SecretName", alias = "ConfigName", deserialize_with = "nullable")]
    name: String,
    #[serde(default)]
    runtime: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerFileTarget {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, rename = "UID", deserialize_with = "nullable")]
    uid: String,
    #[serde(default, rename = "GID", deserialize_with = "nullable")]
    gid: String,
    #[serde(default)]
    mode: Option<u32>,
}

/// A reference from the document; one with an empty id is looked up by
/// name when the spec is proposed.
fn file_ref<Id: From<String>>(kind: Kind, r: DockerFileRef) -> Result<FileRef<Id>, EngineSpecError> {
    if r.runtime.is_some() && r.file.is_none() {
        return Err(EngineSpecError::Unsupported(format!("a {kind} reference with a Runtime target")));
    }
    let f = r.file.ok_or_else(|| invalid(format!("{kind} reference {:?} has no File target", r.name)))?;
    if r.id.is_empty() && r.name.is_empty() {
        return Err(invalid(format!("a {kind} reference needs a {kind} ID or name")));
    }
    let target = if f.name.is_empty() { r.name.clone() } else { f.name };
    secret::validate_target(kind, &target).map_err(|e| invalid(e.to_string()))?;
    Ok(FileRef {
        id: Id::from(r.id),
        name: r.name,
        target,
        uid: if f.uid.is_empty() { "0".into() } else { f.uid },
        gid: if f.gid.is_empty() { "0".into() } else { f.gid },
        mode: f.mode.unwrap_or(secret::DEFAULT_MODE),
    })
}

fn file_refs_to_engine<Id: std::fmt::Display>(kind: Kind, refs: &[FileRef<Id>]) -> Value {
    let (id_key, name_key) = match kind {
        Kind::Secret => ("SecretID", "SecretName"),
        Kind::Config => ("ConfigID", "ConfigName"),
    };
    Value::Array(
        refs.iter()
            .map(|r| {
                json!({
                    "File": {"Name": r.target, "UID": r.uid, "GID": r.gid, "Mode": r.mode},
                    id_key: r.id.to_string(),
                    name_key: r.name,
                })
            })
            .collect(),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerUlimit {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    soft: i64,
    #[serde(default, deserialize_with = "nullable")]
    hard: i64,
}

/// Docker's HealthConfig; durations in nanoseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerHealthCheck {
    #[serde(default, deserialize_with = "nullable")]
    test: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    interval: i64,
    #[serde(default, deserialize_with = "nullable")]
    timeout: i64,
    #[serde(default, deserialize_with = "nullable")]
    retries: i64,
    #[serde(default, deserialize_with = "nullable")]
    start_period: i64,
    #[serde(default, deserialize_with = "nullable")]
    start_interval: i64,
}

fn health_check(h: DockerHealthCheck) -> Result<HealthCheck, EngineSpecError> {
    let ns = |n: i64, what: &str| {
        u64::try_from(n).map_err(|_| invalid(format!("ContainerSpec.HealthCheck.{what} must not be negative")))
    };
    Ok(HealthCheck {
        test: h.test,
        interval_ns: ns(h.interval, "Interval")?,
        timeout_ns: ns(h.timeout, "Timeout")?,
        retries: ns(h.retries, "Retries")?,
        start_period_ns: ns(h.start_period, "StartPeriod")?,
        start_interval_ns: ns(h.start_interval, "StartInterval")?,
    })
}

fn health_doc(h: &HealthCheck) -> Value {
    let mut v = Map::new();
    if !h.test.is_empty() {
        v.insert("Test".into(), json!(h.test));
    }
    for (k, n) in [
        ("Interval", h.interval_ns),
        ("Timeout", h.timeout_ns),
        ("Retries", h.retries),
        ("StartPeriod", h.start_period_ns),
        ("StartInterval", h.start_interval_ns),
    ] {
        if n > 0 {
            v.insert(k.into(), json!(n));
        }
    }
    Value::Object(v)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerDnsConfig {
    #[serde(default, deserialize_with = "nullable")]
    nameservers: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    search: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerResources {
    #[serde(default)]
    limits: Option<DockerLimits>,
    #[serde(default)]
    reservations: Option<DockerReservations>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerReservations {
    #[serde(default, rename = "NanoCPUs", deserialize_with = "nullable")]
    nano_cpus: i64,
    #[serde(default, deserialize_with = "nullable")]
    memory_bytes: i64,
    #[serde(default, deserialize_with = "nullable")]
    generic_resources: Vec<DockerGenericResource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerGenericResource {
    #[serde(default)]
    discrete_resource_spec: Option<DockerDiscrete>,
    #[serde(default)]
    named_resource_spec: Option<DockerNamed>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerDiscrete {
    #[serde(default, deserialize_with = "nullable")]
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    value: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerNamed {
    #[serde(default, deserialize_with = "nullable")]
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerLimits {
    #[serde(default, rename = "NanoCPUs", deserialize_with = "nullable")]
    nano_cpus: i64,
    #[serde(default, deserialize_with = "nullable")]
    memory_bytes: i64,
    #[serde(default, deserialize_with = "nullable")]
    pids: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerMount {
    #[serde(default, deserialize_with = "nullable")]
    r#type: String,
    #[serde(default, deserialize_with = "nullable")]
    source: String,
    #[serde(default, deserialize_with = "nullable")]
    target: String,
    #[serde(default, deserialize_with = "nullable")]
    read_only: bool,
    #[serde(default)]
    bind_options: Option<DockerBindOptions>,
    #[serde(default)]
    volume_options: Option<DockerVolumeOptions>,
    #[serde(default)]
    tmpfs_options: Option<DockerTmpfsOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerBindOptions {
    #[serde(default, deserialize_with = "nullable")]
    propagation: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerVolumeOptions {
    #[serde(default, deserialize_with = "nullable")]
    no_copy: bool,
    #[serde(default, deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    driver_config: Option<DockerDriver>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerDriver {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerTmpfsOptions {
    #[serde(default, deserialize_with = "nullable")]
    size_bytes: i64,
    #[serde(default, deserialize_with = "nullable")]
    mode: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerRestartPolicy {
    #[serde(default, deserialize_with = "nullable")]
    condition: String,
    #[serde(default)]
    delay: Option<i64>,
    #[serde(default)]
    max_attempts: Option<u64>,
    #[serde(default)]
    window: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerPlacement {
    #[serde(default, deserialize_with = "nullable")]
    constraints: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    preferences: Vec<DockerPreference>,
    #[serde(default, deserialize_with = "nullable")]
    max_replicas: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerPreference {
    #[serde(default)]
    spread: Option<DockerSpread>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSpread {
    #[serde(default, deserialize_with = "nullable")]
    spread_descriptor: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerUpdateConfig {
    #[serde(default, deserialize_with = "nullable")]
    parallelism: u64,
    #[serde(default, deserialize_with = "nullable")]
    delay: i64,
    #[serde(default, deserialize_with = "nullable")]
    failure_action: String,
    #[serde(default, deserialize_with = "nullable")]
    monitor: i64,
    #[serde(default, deserialize_with = "nullable")]
    max_failure_ratio: f64,
    #[serde(default, deserialize_with = "nullable")]
    order: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEndpointSpec {
    #[serde(default, deserialize_with = "nullable")]
    mode: String,
    #[serde(default, deserialize_with = "nullable")]
    ports: Vec<DockerPort>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerPort {
    #[serde(default, deserialize_with = "nullable")]
    protocol: String,
    #[serde(default, deserialize_with = "nullable")]
    target_port: u32,
    #[serde(default, deserialize_with = "nullable")]
    published_port: u32,
    #[serde(default, deserialize_with = "nullable")]
    publish_mode: String,
}

fn invalid(msg: impl Into<String>) -> EngineSpecError {
    EngineSpecError::Invalid(msg.into())
}

/// Nanoseconds (Go's `time.Duration`) as milliseconds; negative is refused.
fn ns_to_ms(ns: i64, what: &str) -> Result<u64, EngineSpecError> {
    u64::try_from(ns).map(|n| n / 1_000_000).map_err(|_| invalid(format!("{what} must not be negative")))
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// Swarm's default when a service sends no update or rollback config.
fn swarm_update_default() -> UpdateConfig {
    UpdateConfig::default()
}

fn update_config(c: Option<DockerUpdateConfig>, what: &str) -> Result<UpdateConfig, EngineSpecError> {
    let Some(c) = c else { return Ok(swarm_update_default()) };
    let failure_action = match c.failure_action.as_str() {
        "" | "pause" => FailureAction::Pause,
        "continue" => FailureAction::Continue,
        "rollback" => FailureAction::Rollback,
        other => {
            return Err(invalid(format!(
                "invalid {what}.FailureAction {other:?}: expected pause, continue or rollback"
            )))
        }
    };
    let order = match c.order.as_str() {
        "" | "stop-first" => UpdateOrder::StopFirst,
        "start-first" => UpdateOrder::StartFirst,
        other => return Err(invalid(format!("invalid {what}.Order {other:?}: expected stop-first or start-first"))),
    };
    if !(0.0..=1.0).contains(&c.max_failure_ratio) {
        return Err(invalid(format!("{what}.MaxFailureRatio must be between 0 and 1")));
    }
    Ok(UpdateConfig {
        parallelism: c.parallelism,
        delay_ms: ns_to_ms(c.delay, &format!("{what}.Delay"))?,
        order,
        failure_action,
        monitor_ms: ns_to_ms(c.monitor, &format!("{what}.Monitor"))?,
        max_failure_ratio: Ratio(c.max_failure_ratio),
    })
}

fn restart_policy(p: Option<DockerRestartPolicy>) -> Result<RestartPolicy, EngineSpecError> {
    let Some(p) = p else { return Ok(RestartPolicy::default()) };
    let condition = match p.condition.as_str() {
        "" | "any" => RestartCondition::Any,
        "on-failure" => RestartCondition::OnFailure,
        "none" => RestartCondition::None,
        other => {
            return Err(invalid(format!("invalid RestartPolicy.Condition {other:?}: expected none, on-failure or any")))
        }
    };
    let default = RestartPolicy::default();
    Ok(RestartPolicy {
        condition,
        delay_ms: match p.delay {
            Some(ns) => ns_to_ms(ns, "RestartPolicy.Delay")?,
            None => default.delay_ms,
        },
        // Swarm: 0 attempts means no limit.
        max_attempts: p.max_attempts.filter(|n| *n > 0),
        window_ms: match p.window {
            Some(ns) if ns != 0 => Some(ns_to_ms(ns, "RestartPolicy.Window")?),
            _ => None,
        },
    })
}

fn mount(m: DockerMount) -> Result<Mount, EngineSpecError> {
    let kind = match m.r#type.as_str() {
        "bind" => MountType::Bind,
        "volume" => MountType::Volume,
        "tmpfs" => MountType::Tmpfs,
        "" => return Err(invalid("mount type is missing")),
        other => return Err(EngineSpecError::Unsupported(format!("mount type {other:?}"))),
    };
    let volume = m.volume_options.map(|v| {
        let driver = v.driver_config.unwrap_or_default();
        VolumeOptions {
            nocopy: v.no_copy,
            labels: v.labels,
            driver: (!driver.name.is_empty()).then_some(driver.name),
            driver_opts: driver.options,
        }
    });
    let tmpfs = match m.tmpfs_options {
        Some(t) => Some(TmpfsOptions {
            size_bytes: u64::try_from(t.size_bytes).map_err(|_| {
                invalid("invalid mount config for type \"tmpfs\": TmpfsOptions.SizeBytes must not be negative")
            })?,
            mode: (t.mode != 0).then_some(t.mode),
        }),
        None => None,
    };
    let propagation = m.bind_options.map(|b| b.propagation).filter(|p| !p.is_empty());
    let out = Mount {
        kind,
        source: m.source,
        target: m.target,
        readonly: m.read_only,
        bind_propagation: propagation,
        // Docker keeps option blocks of other types out; an empty one means nothing.
        volume: volume.filter(|v| kind == MountType::Volume || *v != VolumeOptions::default()),
        tmpfs: tmpfs.filter(|t| kind == MountType::Tmpfs || *t != TmpfsOptions::default()),
    };
    out.validate().map_err(invalid)?;
    Ok(out)
}

fn mount_doc(m: &Mount) -> Value {
    let mut v = json!({"Type": m.kind.as_str(), "Target": m.target});
    if !m.source.is_empty() {
        v["Source"] = json!(m.source);
    }
    if m.readonly {
        v["ReadOnly"] = json!(true);
    }
    if let Some(p) = &m.bind_propagation {
        v["BindOptions"] = json!({"Propagation": p});
    }
    if let Some(o) = &m.volume {
        let mut vo = Map::new();
        if o.nocopy {
            vo.insert("NoCopy".into(), json!(true));
        }
        if !o.labels.is_empty() {
            vo.insert("Labels".into(), json!(o.labels));
        }
        if o.driver.is_some() || !o.driver_opts.is_empty() {
            let mut d = Map::new();
            if let Some(n) = &o.driver {
                d.insert("Name".into(), json!(n));
            }
            if !o.driver_opts.is_empty() {
                d.insert("Options".into(), json!(o.driver_opts));
            }
            vo.insert("DriverConfig".into(), Value::Object(d));
        }
        v["VolumeOptions"] = Value::Object(vo);
    }
    if let Some(t) = &m.tmpfs {
        let mut to = Map::new();
        if t.size_bytes > 0 {
            to.insert("SizeBytes".into(), json!(t.size_bytes));
        }
        if let Some(mode) = t.mode {
            to.insert("Mode".into(), json!(mode));
        }
        v["TmpfsOptions"] = Value::Object(to);
    }
    v
}

fn port(p: DockerPort) -> Result<PortConfig, EngineSpecError> {
    let protocol = match p.protocol.as_str() {
        "" | "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(EngineSpecError::Unsupported(format!("protocol {other:?}"))),
    };
    let mode = match p.publish_mode.as_str() {
        "" | "ingress" => PublishMode::Ingress,
        "host" => PublishMode::Host,
        other => return Err(invalid(format!("invalid PublishMode {other:?}: expected ingress or host"))),
    };
    let target = u16::try_from(p.target_port)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| invalid(format!("invalid TargetPort {}: expected 1-65535", p.target_port)))?;
    let published = match p.published_port {
        0 => None,
        n => Some(u16::try_from(n).map_err(|_| invalid(format!("invalid PublishedPort {n}: expected 1-65535")))?),
    };
    Ok(PortConfig::new(protocol, target, published, mode))
}

/// Reservations and placement beyond constraints.
fn scheduling(r: DockerReservations, p: &DockerPlacement) -> Result<Scheduling, EngineSpecError> {
    let non_negative = |n: i64, what: &str| {
        u64::try_from(n).map_err(|_| invalid(format!("Resources.Reservations.{what} must not be negative")))
    };
    let mut generic = BTreeMap::new();
    for g in r.generic_resources {
        if let Some(n) = g.named_resource_spec {
            return Err(invalid(format!(
                "invalid generic-resource request `{}={}`, Named Generic Resources is not supported for service create or update",
                n.kind, n.value
            )));
        }
        let Some(d) = g.discrete_resource_spec else { continue };
        if d.kind.is_empty() {
            return Err(invalid("Resources.Reservations.GenericResources: a resource needs a Kind"));
        }
        *generic.entry(d.kind).or_default() += non_negative(d.value, "GenericResources.Value")?;
    }
    let preferences = p
        .preferences
        .iter()
        .map(|pref| match &pref.spread {
            Some(s) if !s.spread_descriptor.is_empty() => Ok(Spread(s.spread_descriptor.clone())),
            _ => Err(invalid("Placement.Preferences: only spread preferences with a SpreadDescriptor are supported")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Scheduling {
        reservations: Resources {
            nano_cpus: non_negative(r.nano_cpus, "NanoCPUs")?,
            memory_bytes: non_negative(r.memory_bytes, "MemoryBytes")?,
            generic,
        },
        preferences,
        max_replicas_per_node: p.max_replicas,
    })
}

/// The shoal spec a Docker ServiceSpec (already [`canonical`](super::json::canonical)) asks
/// for, with the document kept in `engine_spec`.
pub fn from_engine(doc: &Value) -> Result<ServiceSpec, EngineSpecError> {
    if !doc.is_object() {
        return Err(EngineSpecError::Json("a ServiceSpec must be a JSON object".into()));
    }
    let d: DockerServiceSpec = serde_json::from_value(doc.clone()).map_err(|e| EngineSpecError::Json(e.to_string()))?;
    let task = d.task_template.unwrap_or_default();
    let container = task.container_spec.unwrap_or_default();
    let mode = match d.mode {
        None => ServiceMode::Replicated { replicas: 1 },
        Some(m)
            if [m.replicated.is_some(), m.global.is_some(), m.replicated_job.is_some(), m.global_job.is_some()]
                .iter()
                .filter(|x| **x)
                .count()
                > 1 =>
        {
            return Err(invalid("a service can be replicated, global, replicated-job or global-job, not several"))
        }
        Some(DockerMode { replicated_job: Some(j), .. }) => {
            // moby: MaxConcurrent defaults to 1, TotalCompletions to MaxConcurrent.
            let max_concurrent = j.max_concurrent.unwrap_or(1);
            ServiceMode::ReplicatedJob {
                total_completions: j.total_completions.unwrap_or(max_concurrent),
                max_concurrent,
            }
        }
        Some(DockerMode { global_job: Some(_), .. }) => ServiceMode::GlobalJob,
        Some(DockerMode { global: Some(_), .. }) => ServiceMode::Global,
        Some(DockerMode { replicated, .. }) => {
            ServiceMode::Replicated { replicas: replicated.and_then(|r| r.replicas).unwrap_or(1) }
        }
    };
    let placement = task.placement.unwrap_or_default();
    let constraints = placement
        .constraints
        .iter()
        .map(|c| Constraint::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let endpoint = d.endpoint_spec.unwrap_or_default();
    if !matches!(endpoint.mode.as_str(), "" | "vip" | "dnsrr") {
        return Err(invalid(format!("invalid EndpointSpec.Mode {:?}: expected vip or dnsrr", endpoint.mode)));
    }
    let ports = endpoint.ports.into_iter().map(port).collect::<Result<Vec<_>, _>>()?;
    let resources = task.resources.unwrap_or_default();
    let scheduling = scheduling(resources.reservations.unwrap_or_default(), &placement)?;
    let limits = resources.limits.unwrap_or_default();
    let non_negative = |n: i64, what: &str| {
        u64::try_from(n).map_err(|_| invalid(format!("Resources.Limits.{what} must not be negative")))
    };
    let limits = Limits {
        nano_cpus: non_negative(limits.nano_cpus, "NanoCPUs")?,
        memory_bytes: non_negative(limits.memory_bytes, "MemoryBytes")?,
        pids: non_negative(limits.pids, "Pids")?,
    };
    let dns = container.dns_config.unwrap_or_default();
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    let options = ContainerOptions {
        isolation: isolation(&container.isolation),
        credential_spec: container.privileges.and_then(|p| p.credential_spec).map(credential_spec).transpose()?,
        hostname: nonempty(container.hostname),
        user: nonempty(container.user),
        groups: container.groups,
        workdir: nonempty(container.dir),
        tty: container.tty,
        init: container.init,
        read_only: container.read_only,
        stop_signal: nonempty(container.stop_signal),
        cap_add: container.capability_add,
        cap_drop: container.capability_drop,
        sysctls: container.sysctls,
        dns: dns.nameservers,
        dns_search: dns.search,
        dns_options: dns.options,
        hosts: container.hosts,
        labels: container.labels,
        healthcheck: container.health_check.map(health_check).transpose()?,
        ulimits: container
            .ulimits
            .into_iter()
            .map(|u| {
                if u.name.is_empty() {
                    Err(invalid("ContainerSpec.Ulimits: a limit needs a Name"))
                } else {
                    Ok(Ulimit { name: u.name, soft: u.soft, hard: u.hard })
                }
            })
            .collect::<Result<_, _>>()?,
        log_driver: task
            .log_driver
            .filter(|d| !d.name.is_empty())
            .map(|d| LogDriver { name: d.name, options: d.options }),
    };
    let spec = ServiceSpec {
        name: d.name,
        labels: d.labels,
        mode,
        task: TaskTemplate {
            image: container.image,
            entrypoint: container.command,
            args: container.args,
            env: container.env,
            mounts: container.mounts.into_iter().map(mount).collect::<Result<_, _>>()?,
            constraints,
            restart: restart_policy(task.restart_policy)?,
            stop_grace_ms: match container.stop_grace_period {
                Some(ns) => ns_to_ms(ns, "StopGracePeriod")?,
                None => TaskTemplate::new("").stop_grace_ms,
            },
            ports,
            force_update: task.force_update,
            container: options,
            limits,
            secrets: container.secrets.into_iter().map(|r| file_ref(Kind::Secret, r)).collect::<Result<_, _>>()?,
            configs: container.configs.into_iter().map(|r| file_ref(Kind::Config, r)).collect::<Result<_, _>>()?,
            scheduling,
            networks: task
                .networks
                .into_iter()
                .map(|n| common::network::NetworkAttachment { network: n.target, aliases: n.aliases })
                .collect(),
            // Not in Docker's spec: the default.
            log_retention_ms: None,
            // From the request's X-Registry-Auth header, not the document.
            registry_auth: None,
        },
        update: update_config(d.update_config, "UpdateConfig")?,
        rollback: update_config(d.rollback_config, "RollbackConfig")?,
        engine_spec: Some(doc.to_string()),
        endpoint_mode: if endpoint.mode == "dnsrr" {
            common::network::EndpointMode::Dnsrr
        } else {
            common::network::EndpointMode::Vip
        },
    };
    spec.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(spec)
}

fn update_doc(c: &UpdateConfig) -> Value {
    json!({
        "Parallelism": c.parallelism,
        "Delay": ms_to_ns(c.delay_ms),
        "FailureAction": match c.failure_action {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        },
        "Monitor": ms_to_ns(c.monitor_ms),
        "MaxFailureRatio": c.max_failure_ratio.0,
        "Order": match c.order {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        },
    })
}

/// Docker's TaskSpec for a shoal task template.
pub fn task_to_engine(t: &TaskTemplate) -> Value {
    let mut container = Map::new();
    container.insert("Image".into(), json!(t.image));
    if !t.entrypoint.is_empty() {
        container.insert("Command".into(), json!(t.entrypoint));
    }
    if !t.args.is_empty() {
        container.insert("Args".into(), json!(t.args));
    }
    if !t.env.is_empty() {
        container.insert("Env".into(), json!(t.env));
    }
    if !t.mounts.is_empty() {
        container.insert("Mounts".into(), Value::Array(t.mounts.iter().map(mount_doc).collect()));
    }
    container.insert("StopGracePeriod".into(), json!(ms_to_ns(t.stop_grace_ms)));
    let c = &t.container;
    let mut put = |k: &str, v: Value| {
        if !is_zero(&v) {
            container.insert(k.into(), v);
        }
    };
    put("Hostname", json!(c.hostname));
    put("User", json!(c.user));
    put("Groups", json!(c.groups));
    put("Dir", json!(c.workdir));
    put("TTY", json!(c.tty));
    put("ReadOnly", json!(c.read_only));
    put("StopSignal", json!(c.stop_signal));
    put("CapabilityAdd", json!(c.cap_add));
    put("CapabilityDrop", json!(c.cap_drop));
    put("Sysctls", json!(c.sysctls));
    put("Hosts", json!(c.hosts));
    put("Labels", json!(c.labels));
    put("DNSConfig", json!({"Nameservers": c.dns, "Search": c.dns_search, "Options": c.dns_options}));
    put("Secrets", file_refs_to_engine(Kind::Secret, &t.secrets));
    put("Configs", file_refs_to_engine(Kind::Config, &t.configs));
    if let Some(init) = c.init {
        container.insert("Init".into(), json!(init));
    }
    if let Some(i) = c.isolation {
        container.insert("Isolation".into(), json!(i.as_str()));
    }
    if let Some(cs) = &c.credential_spec {
        let (k, v) = match cs {
            CredentialSpec::Config(v) => ("Config", v),
            CredentialSpec::File(v) => ("File", v),
            CredentialSpec::Registry(v) => ("Registry", v),
        };
        container.insert("Privileges".into(), json!({"CredentialSpec": {k: v}}));
    }
    if let Some(h) = &c.healthcheck {
        container.insert("HealthCheck".into(), health_doc(h));
    }
    if !c.ulimits.is_empty() {
        let ulimits: Vec<Value> =
            c.ulimits.iter().map(|u| json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard})).collect();
        container.insert("Ulimits".into(), Value::Array(ulimits));
    }
    let l = &t.limits;
    let mut limits = Map::new();
    for (k, n) in [("NanoCPUs", l.nano_cpus), ("MemoryBytes", l.memory_bytes), ("Pids", l.pids)] {
        if n > 0 {
            limits.insert(k.into(), json!(n));
        }
    }
    let mut restart = json!({
        "Condition": t.restart.condition.to_string(),
        "Delay": ms_to_ns(t.restart.delay_ms),
        "MaxAttempts": t.restart.max_attempts.unwrap_or(0),
    });
    if let Some(w) = t.restart.window_ms {
        restart["Window"] = json!(ms_to_ns(w));
    }
    let mut placement = Map::new();
    if !t.constraints.is_empty() {
        placement.insert("Constraints".into(), json!(t.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>()));
    }
    let sched = &t.scheduling;
    if !sched.preferences.is_empty() {
        let prefs: Vec<Value> =
            sched.preferences.iter().map(|p| json!({"Spread": {"SpreadDescriptor": p.0}})).collect();
        placement.insert("Preferences".into(), Value::Array(prefs));
    }
    if sched.max_replicas_per_node > 0 {
        placement.insert("MaxReplicas".into(), json!(sched.max_replicas_per_node));
    }
    let r = &sched.reservations;
    let mut reservations = Map::new();
    for (k, n) in [("NanoCPUs", r.nano_cpus), ("MemoryBytes", r.memory_bytes)] {
        if n > 0 {
            reservations.insert(k.into(), json!(n));
        }
    }
    if !r.generic.is_empty() {
        let generic: Vec<Value> =
            r.generic.iter().map(|(kind, n)| json!({"DiscreteResourceSpec": {"Kind": kind, "Value": n}})).collect();
        reservations.insert("GenericResources".into(), Value::Array(generic));
    }
    let mut task = json!({
        "ContainerSpec": container,
        "RestartPolicy": restart,
        "Placement": placement,
        "ForceUpdate": t.force_update,
        "Runtime": "container",
    });
    if !limits.is_empty() {
        task["Resources"]["Limits"] = Value::Object(limits);
    }
    if !reservations.is_empty() {
        task["Resources"]["Reservations"] = Value::Object(reservations);
    }
    if let Some(d) = &c.log_driver {
        let mut v = json!({"Name": d.name});
        if !d.options.is_empty() {
            v["Options"] = json!(d.options);
        }
        task["LogDriver"] = v;
    }
    if !t.networks.is_empty() {
        let nets: Vec<Value> = t
            .networks
            .iter()
            .map(|n| match n.aliases.is_empty() {
                true => json!({"Target": n.network}),
                false => json!({"Target": n.network, "Aliases": n.aliases}),
            })
            .collect();
        task["Networks"] = Value::Array(nets);
    }
    task
}

/// Docker's `Ports` of an EndpointSpec (and of a service's Endpoint).
pub fn ports_to_engine(ports: &[PortConfig]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|p| {
                let mut v = json!({
                    "Protocol": p.protocol.to_string(),
                    "TargetPort": p.target,
                    "PublishMode": p.mode.to_string(),
                });
                if let Some(n) = p.published {
                    v["PublishedPort"] = json!(n);
                }
                v
            })
            .collect(),
    )
}

/// Docker's ServiceSpec for a shoal spec (what shoal acts on, nothing more).
pub fn to_engine(spec: &ServiceSpec) -> Value {
    let mode = match spec.mode {
        ServiceMode::Replicated { replicas } => json!({"Replicated": {"Replicas": replicas}}),
        ServiceMode::Global => json!({"Global": {}}),
        ServiceMode::ReplicatedJob { total_completions, max_concurrent } => {
            json!({"ReplicatedJob": {"MaxConcurrent": max_concurrent, "TotalCompletions": total_completions}})
        }
        ServiceMode::GlobalJob => json!({"GlobalJob": {}}),
    };
    let mode_name = match spec.endpoint_mode {
        common::network::EndpointMode::Vip => "vip",
        common::network::EndpointMode::Dnsrr => "dnsrr",
    };
    let mut endpoint = json!({"Mode": mode_name});
    if !spec.task.ports.is_empty() {
        endpoint["Ports"] = ports_to_engine(&spec.task.ports);
    }
    json!({
        "Name": spec.name,
        "Labels": spec.labels,
        "TaskTemplate": task_to_engine(&spec.task),
        "Mode": mode,
        "UpdateConfig": update_doc(&spec.update),
        "RollbackConfig": update_doc(&spec.rollback),
        "EndpointSpec": endpoint,
    })
}

/// What shoal owns in a document: on a change made through shoal's own
/// API, these paths of the kept document are brought up to date.
const OWNED: &[&[&str]] = &[
    &["Name"],
    &["Labels"],
    &["Mode"],
    &["TaskTemplate", "ContainerSpec", "Image"],
    &["TaskTemplate", "ContainerSpec", "Command"],
    &["TaskTemplate", "ContainerSpec", "Args"],
    &["TaskTemplate", "ContainerSpec", "Env"],
    &["TaskTemplate", "ContainerSpec", "Mounts"],
    &["TaskTemplate", "ContainerSpec", "StopGracePeriod"],
    &["TaskTemplate", "ContainerSpec", "Hostname"],
    &["TaskTemplate", "ContainerSpec", "User"],
    &["TaskTemplate", "ContainerSpec", "Groups"],
    &["TaskTemplate", "ContainerSpec", "Dir"],
    &["TaskTemplate", "ContainerSpec", "TTY"],
    &["TaskTemplate", "ContainerSpec", "Init"],
    &["TaskTemplate", "ContainerSpec", "ReadOnly"],
    &["TaskTemplate", "ContainerSpec", "StopSignal"],
    &["TaskTemplate", "ContainerSpec", "CapabilityAdd"],
    &["TaskTemplate", "ContainerSpec", "CapabilityDrop"],
    &["TaskTemplate", "ContainerSpec", "Sysctls"],
    &["TaskTemplate", "ContainerSpec", "Secrets"],
    &["TaskTemplate", "ContainerSpec", "Configs"],
    &["TaskTemplate", "ContainerSpec", "DNSConfig"],
    &["TaskTemplate", "ContainerSpec", "Hosts"],
    &["TaskTemplate", "ContainerSpec", "Labels"],
    &["TaskTemplate", "ContainerSpec", "HealthCheck"],
    &["TaskTemplate", "ContainerSpec", "Ulimits"],
    &["TaskTemplate", "ContainerSpec", "Isolation"],
    &["TaskTemplate", "ContainerSpec", "Privileges", "CredentialSpec"],
    &["TaskTemplate", "LogDriver"],
    &["TaskTemplate", "Resources", "Limits"],
    &["TaskTemplate", "Resources", "Reservations"],
    &["TaskTemplate", "Placement", "Preferences"],
    &["TaskTemplate", "Placement", "MaxReplicas"],
    &["TaskTemplate", "RestartPolicy"],
    &["TaskTemplate", "Placement", "Constraints"],
    &["TaskTemplate", "ForceUpdate"],
    &["TaskTemplate", "Networks"],
    &["UpdateConfig"],
    &["RollbackConfig"],
    &["EndpointSpec", "Ports"],
];

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// Sets (or, with `None`, removes) `path` in `v`, making objects on the way.
fn set(v: &mut Value, path: &[&str], new: Option<Value>) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = v;
    for k in parents {
        if !cur.get(*k).is_some_and(Value::is_object) {
            if new.is_none() {
                return;
            }
            cur[*k] = json!({});
        }
        cur = &mut cur[*k];
    }
    if let Some(obj) = cur.as_object_mut() {
        match new {
            Some(n) => {
                obj.insert(last.to_string(), n);
            }
            None => {
                obj.remove(*last);
            }
        }
    }
}

/// Is `spec` still what `doc` asked for? Ports the managers numbered (the
/// document left `PublishedPort` out) count as asked for.
fn still_matches(doc: &Value, spec: &ServiceSpec) -> bool {
    let Ok(mut asked) = from_engine(doc) else { return false };
    if asked.task.ports.len() == spec.task.ports.len() {
        for (a, s) in asked.task.ports.iter_mut().zip(&spec.task.ports) {
            if a.published.is_none() && (a.target, a.protocol, a.mode) == (s.target, s.protocol, s.mode) {
                a.published = s.published;
            }
        }
    }
    asked.engine_spec = None;
    let mut ours = spec.clone();
    ours.engine_spec = None;
    asked == ours
}

/// The ServiceSpec `inspect` answers through the Engine API.
pub fn engine_view(spec: &ServiceSpec) -> Value {
    let ours = to_engine(spec);
    let Some(doc) = spec.engine_spec.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return ours;
    };
    if still_matches(&doc, spec) {
        return doc;
    }
    let mut doc = doc;
    for path in OWNED {
        match get(&ours, path) {
            Some(v) => set(&mut doc, path, Some(v.clone())),
            // What shoal renders as absent is its zero: a zero the client
            // wrote (`"Limits": {}`) stays as written.
            None if get(&doc, path).is_some_and(is_zero) => {}
            None => set(&mut doc, path, None),
        }
    }
    doc
}

/// What Docker fills in for `inspect --insertDefaults` (what the CLI's
/// `service inspect` asks for): the settings a document left out, as shoal
/// runs them.
const DEFAULTS: &[&[&str]] = &[
    &["UpdateConfig"],
    &["RollbackConfig"],
    &["TaskTemplate", "RestartPolicy"],
    &["TaskTemplate", "ContainerSpec", "StopGracePeriod"],
    &["EndpointSpec", "Mode"],
];

/// [`engine_view`] with the left-out settings filled in.
pub fn engine_view_with_defaults(spec: &ServiceSpec) -> Value {
    let ours = to_engine(spec);
    let mut doc = engine_view(spec);
    for path in DEFAULTS {
        if get(&doc, path).is_none() {
            set(&mut doc, path, get(&ours, path).cloned());
        }
    }
    doc
}

/// Is this value Go's zero (what a client sends for "not set")?
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

/// Values clients send that ask for nothing beyond what shoal does.
fn harmless(path: &str, v: &Value) -> bool {
    matches!(
        (path, v.as_str()),
        ("TaskTemplate.Runtime", Some("container"))
            | ("TaskTemplate.ContainerSpec.Isolation", Some("default"))
            | ("EndpointSpec.Mode", Some("vip"))
    )
}

/// The set fields of `doc` that shoal does not act on (yet), as dotted paths.
pub fn ignored(doc: &Value) -> Vec<String> {
    let Ok(spec) = from_engine(doc) else { return vec![] };
    let ours = to_engine(&spec);
    let mut out = Vec::new();
    walk_ignored(doc, &ours, &mut Vec::new(), &mut out);
    out
}

fn walk_ignored(v: &Value, ours: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    let dotted = path.join(".");
    match v {
        Value::Object(map) if !map.is_empty() && !path.last().is_some_and(|k| FREE_MAPS.contains(&k.as_str())) => {
            for (k, child) in map {
                path.push(k.clone());
                walk_ignored(child, ours, path, out);
                path.pop();
            }
        }
        _ => {
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            if !is_zero(v) && !harmless(&dotted, v) && get(ours, &keys).is_none() {
                out.push(dotted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::json::canonical;
    use super::*;

    fn doc(v: Value) -> Value {
        canonical(v)
    }

    /// What docker 28's `service create --name web --replicas 3 -p 8080:80 img sh -c x` sends.
    fn cli_create() -> Value {
        doc(json!({
            "Name": "web", "Labels": {},
            "TaskTemplate": {
                "ContainerSpec": {"Image": "img", "Args": ["sh", "-c", "x"], "Init": false,
                                  "StopGracePeriod": 10_000_000_000i64, "DNSConfig": {}, "Isolation": "default"},
                "Resources": {"Limits": {}, "Reservations": {}},
                "RestartPolicy": {"Condition": "any", "Delay": 5_000_000_000i64, "MaxAttempts": 0},
                "Placement": {}, "ForceUpdate": 0, "Runtime": "container"
            },
            "Mode": {"Replicated": {"Replicas": 3}},
            "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000i64,
                             "MaxFailureRatio": 0, "Order": "stop-first"},
            "RollbackConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000i64,
                               "MaxFailureRatio": 0, "Order": "stop-first"},
            "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                                       "PublishMode": "ingress"}]}
        }))
    }

    #[test]
    fn a_cli_create_becomes_the_spec_shoal_runs() {
        let spec = from_engine(&cli_create()).unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(spec.task.image, "img");
        assert_eq!(spec.task.args, ["sh", "-c", "x"]);
        assert_eq!(spec.task.stop_grace_ms, 10_000);
        assert_eq!(spec.task.restart, RestartPolicy::default());
        assert_eq!(spec.task.ports, vec!["8080:80".parse::<PortConfig>().unwrap()]);
        assert_eq!(spec.update, UpdateConfig::default());
        assert_eq!(ignored(&cli_create()), Vec::<String>::new());
    }

    #[test]
    fn inspect_returns_the_document_sent_until_shoal_changes_the_spec() {
        let sent = cli_create();
        let spec = from_engine(&sent).unwrap();
        assert_eq!(engine_view(&spec), sent);
        let mut scaled = spec.clone();
        scaled.mode = ServiceMode::Replicated { replicas: 5 };
        let view = engine_view(&scaled);
        assert_eq!(view["Mode"], json!({"Replicated": {"Replicas": 5}}));
        assert_eq!(view["TaskTemplate"]["Resources"], sent["TaskTemplate"]["Resources"], "kept");
        assert_eq!(from_engine(&view).unwrap().mode, scaled.mode);
        let minimal = doc(json!({"Name": "m", "TaskTemplate": {"ContainerSpec": {"Image": "i"}}}));
        let full = engine_view_with_defaults(&from_engine(&minimal).unwrap());
        assert_eq!(full["RollbackConfig"]["Order"], "stop-first");
        assert_eq!(full["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"], 10_000_000_000i64);
        assert_eq!(from_engine(&full).unwrap().task, from_engine(&minimal).unwrap().task);
    }

    #[test]
    fn numbered_ports_still_match_the_document() {
        let sent = doc(json!({"Name": "w", "TaskTemplate": {"ContainerSpec": {"Image": "i"}},
                              "EndpointSpec": {"Ports": [{"TargetPort": 80}]}}));
        let mut spec = from_engine(&sent).unwrap();
        spec.task.ports[0].published = Some(30000);
        assert_eq!(engine_view(&spec), sent);
    }

    #[test]
    fn the_python_sdks_casing_and_shoal_rendering_round_trip() {
        let sent = doc(json!({"Name": "p", "TaskTemplate": {"ContainerSpec": {"Image": "i", "Env": ["A=1"]}},
                              "Mode": {"global": {}}}));
        let spec = from_engine(&sent).unwrap();
        assert_eq!(spec.mode, ServiceMode::Global);
        assert!(sent["Mode"].get("Global").is_some());
        let mut plain = spec.clone();
        plain.engine_spec = None;
        let mut back = from_engine(&to_engine(&plain)).unwrap();
        back.engine_spec = None;
        assert_eq!(back, plain);
    }

    #[test]
    fn job_modes_round_trip_with_moby_defaults() {
        let spec = |mode: Value| {
            from_engine(&doc(json!({"Name": "j", "TaskTemplate": {"ContainerSpec": {"Image": "i"}}, "Mode": mode})))
                .unwrap()
        };
        let j = spec(json!({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 6}}));
        assert_eq!(j.mode, ServiceMode::ReplicatedJob { total_completions: 6, max_concurrent: 2 });
        assert_eq!(to_engine(&j)["Mode"], json!({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 6}}));
        // moby: MaxConcurrent defaults to 1, TotalCompletions to MaxConcurrent.
        assert_eq!(
            spec(json!({"ReplicatedJob": {}})).mode,
            ServiceMode::ReplicatedJob { total_completions: 1, max_concurrent: 1 }
        );
        assert_eq!(
            spec(json!({"ReplicatedJob": {"MaxConcurrent": 3}})).mode,
            ServiceMode::ReplicatedJob { total_completions: 3, max_concurrent: 3 }
        );
        let g = spec(json!({"GlobalJob": {}}));
        assert_eq!(g.mode, ServiceMode::GlobalJob);
        assert_eq!(to_engine(&g)["Mode"], json!({"GlobalJob": {}}));
    }

    #[test]
    fn what_shoal_does_not_do_is_named_and_bad_specs_refused() {
        let sent = doc(json!({"Name": "w", "TaskTemplate": {"ContainerSpec": {"Image": "i", "OpenStdin": true,
            "Command": ["/bin/sh"]}, "Placement": {"Platforms": [{"OS": "linux"}]}}}));
        assert_eq!(ignored(&sent), ["TaskTemplate.ContainerSpec.OpenStdin", "TaskTemplate.Placement.Platforms"]);
        assert_eq!(from_engine(&sent).unwrap().task.entrypoint, ["/bin/sh"]);
        let bad = |v: Value| from_engine(&doc(v)).unwrap_err().to_string();
        assert_eq!(
            bad(json!({"Name": "w", "TaskTemplate": {"ContainerSpec": {"Image": ""}}})),
            "invalid image: the image name must not be empty"
        );
        assert_eq!(
            bad(json!({"Name": "w", "TaskTemplate": {"ContainerSpec": {"Image": "i"}},
                "Mode": {"ReplicatedJob": {}, "Global": {}}})),
            "a service can be replicated, global, replicated-job or global-job, not several"
        );
        assert!(bad(json!({"Name": "w", "TaskTemplate": {"ContainerSpec": {"Image": "i", "Mounts": [
            {"Type": "npipe", "Source": "v", "Target": "/d"}]}}}))
        .contains("mount type \"npipe\""));
        assert_eq!(
            bad(json!({"Name": "w", "TaskTemplate": {"ContainerSpec": {"Image": "i", "Mounts": [
                {"Type": "tmpfs", "Source": "v", "Target": "/d"}]}}})),
            "invalid mount config for type \"tmpfs\": field Source must not be specified"
        );
        assert!(bad(json!({"Name": "w", "Mode": {"Replicated": {"Replicas": -1}}})).starts_with("invalid JSON"));
        assert!(bad(json!({"Name": "w", "TaskTemplate": {"ContainerSpec": {"Image": "i"}},
            "EndpointSpec": {"Ports": [{"TargetPort": 70000}]}}))
        .contains("TargetPort 70000"));
    }

    #[test]
    fn container_options_and_limits_are_acted_on_and_round_trip() {
        let sent = doc(json!({"Name": "c", "TaskTemplate": {
            "ContainerSpec": {"Image": "i", "Hostname": "{{.Service.Name}}-{{.Task.Slot}}", "User": "1000:1000",
                "Groups": ["audio"], "Dir": "/bin", "TTY": true, "Init": true, "ReadOnly": true, "StopSignal": "SIGINT",
                "CapabilityAdd": ["NET_ADMIN"], "CapabilityDrop": ["MKNOD"], "Sysctls": {"net.core.somaxconn": "1024"},
                "DNSConfig": {"Nameservers": ["10.0.0.2"], "Search": ["example.org"], "Options": ["ndots:2"]},
                "Hosts": ["10.0.0.9 db"], "Labels": {"team": "a"},
                "Healthcheck": {"Test": ["CMD-SHELL", "test -f /ok"], "Interval": 1_000_000_000i64, "Retries": 2},
                "Mounts": [
                    {"Type": "bind", "Source": "/srv", "Target": "/srv", "ReadOnly": true,
                     "BindOptions": {"Propagation": "rslave"}},
                    {"Type": "volume", "Source": "data-{{.Task.Slot}}", "Target": "/data",
                     "VolumeOptions": {"NoCopy": true, "Labels": {"k": "v"},
                                       "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs", "device": "tmpfs"}}}},
                    {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1_048_576, "Mode": 1023}}],
                "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]},
            "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m"}},
            "Resources": {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 67_108_864, "Pids": 50}}}}));
        let spec = from_engine(&sent).unwrap();
        let c = &spec.task.container;
        assert_eq!(c.hostname.as_deref(), Some("{{.Service.Name}}-{{.Task.Slot}}"));
        assert_eq!((c.tty, c.init, c.read_only), (true, Some(true), true));
        assert_eq!(c.dns_options, ["ndots:2"]);
        assert_eq!(spec.task.limits, Limits { nano_cpus: 500_000_000, memory_bytes: 67_108_864, pids: 50 });
        assert_eq!(c.ulimits, [Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }]);
        assert_eq!(c.log_driver.as_ref().map(|d| d.name.as_str()), Some("json-file"));
        let kinds: Vec<MountType> = spec.task.mounts.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, [MountType::Bind, MountType::Volume, MountType::Tmpfs]);
        assert_eq!(spec.task.mounts[2].tmpfs, Some(TmpfsOptions { size_bytes: 1_048_576, mode: Some(0o1777) }));
        assert_eq!(
            c.healthcheck,
            Some(HealthCheck {
                test: vec!["CMD-SHELL".into(), "test -f /ok".into()],
                interval_ns: 1_000_000_000,
                retries: 2,
                ..Default::default()
            })
        );
        assert_eq!(ignored(&sent), Vec::<String>::new(), "all acted on");
        assert_eq!(engine_view(&spec), sent);
        let mut plain = spec.clone();
        plain.engine_spec = None;
        let mut back = from_engine(&to_engine(&plain)).unwrap();
        back.engine_spec = None;
        assert_eq!(back, plain, "shoal's rendering reads back the same");
        let platforms = doc(json!({"Name": "c", "TaskTemplate": {"ContainerSpec": {"Image": "i"},
            "Placement": {"Platforms": [{"Architecture": "amd64"}]}}}));
        assert_eq!(ignored(&platforms), ["TaskTemplate.Placement.Platforms"]);
    }

    #[test]
    fn reservations_and_placement_are_acted_on_and_round_trip() {
        let sent = doc(json!({"Name": "r", "TaskTemplate": {"ContainerSpec": {"Image": "i"},
            "Resources": {"Reservations": {"NanoCPUs": 1_500_000_000, "MemoryBytes": 67_108_864,
                "GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]}},
            "Placement": {"Constraints": ["node.platform.os==linux"],
                "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}},
                                {"Spread": {"SpreadDescriptor": "engine.labels.rack"}}],
                "MaxReplicas": 2}}}));
        let spec = from_engine(&sent).unwrap();
        let s = &spec.task.scheduling;
        assert_eq!(s.reservations.nano_cpus, 1_500_000_000);
        assert_eq!(s.reservations.memory_bytes, 67_108_864);
        assert_eq!(s.reservations.generic.get("gpu"), Some(&2));
        assert_eq!(s.preferences, [Spread("node.labels.zone".into()), Spread("engine.labels.rack".into())]);
        assert_eq!(s.max_replicas_per_node, 2);
        assert_eq!(ignored(&sent), Vec::<String>::new(), "all acted on");
        assert_eq!(engine_view(&spec), sent);
        let mut plain = spec.clone();
        plain.engine_spec = None;
        let mut back = from_engine(&to_engine(&plain)).unwrap();
        back.engine_spec = None;
        assert_eq!(back, plain, "shoal's rendering reads back the same");
        assert_eq!(to_engine(&plain)["TaskTemplate"]["Placement"]["MaxReplicas"], 2);

        let bad = |v: Value| from_engine(&doc(v)).unwrap_err().to_string();
        assert_eq!(
            bad(json!({"Name": "r", "TaskTemplate": {"ContainerSpec": {"Image": "i"}, "Resources": {"Reservations":
                {"GenericResources": [{"NamedResourceSpec": {"Kind": "gpu", "Value": "UUID1"}}]}}}})),
            "invalid generic-resource request `gpu=UUID1`, Named Generic Resources is not supported for service create or update"
        );
        assert_eq!(
            bad(json!({"Name": "r", "TaskTemplate": {"ContainerSpec": {"Image": "i"},
                "Resources": {"Reservations": {"NanoCPUs": -1}}}})),
            "Resources.Reservations.NanoCPUs must not be negative"
        );
        assert_eq!(
            bad(json!({"Name": "r", "Mode": {"Global": {}}, "TaskTemplate": {"ContainerSpec": {"Image": "i"},
                "Placement": {"MaxReplicas": 1}}})),
            "replicas-max-per-node can only be used with replicated or replicated-job mode"
        );
    }
}
