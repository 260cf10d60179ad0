//! The container runtime as the task supervisor sees it: a small async trait,
//! with Docker (through bollard) in [`docker`] and an in-memory double for
//! tests in [`fake`].
//!
//! Every container a node runs carries labels ([`LABEL_NODE`], [`LABEL_TASK`],
//! …), so listing by node label is how a (re)started worker finds its own
//! containers, and how several nodes share one Docker engine in tests.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::stream::BoxStream;

use common::container::{Health, RegistryAuth};
use common::ids::{NodeId, ServiceId, TaskId};
use common::mesh::HostPort;
use common::task::Task;
use common::time::Millis;
use common::wire::LogLine;

pub mod docker;
/// Test double only: built for this crate's tests and, through the
/// `test-util` feature, for other crates' tests (and, later, the scale
/// simulation); a node built without it cannot use it.
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod files;

pub const LABEL_NODE: &str = "shoal.node.id";
pub const LABEL_SERVICE_ID: &str = "shoal.service.id";
pub const LABEL_SERVICE_NAME: &str = "shoal.service.name";
pub const LABEL_TASK: &str = "shoal.task.id";
pub const LABEL_SLOT: &str = "shoal.task.slot";
/// The task's stop grace, so a container whose task is no longer assigned
/// (its spec gone with it) is still stopped the way its service asked.
pub const LABEL_STOP_GRACE: &str = "shoal.task.stop_grace_ms";

/// How long the container of a task no longer assigned is kept (stopped)
/// so that `service logs` can still read it; from the task's template.
pub const LABEL_LOG_RETENTION: &str = "shoal.task.log_retention_ms";

/// Grace used when a container carries no [`LABEL_STOP_GRACE`].
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

/// `<service_name>.<slot>.<task_id>`, as Swarm names task containers.
pub fn container_name(task: &Task) -> String {
    format!("{}.{}.{}", task.service_name, task.slot, task.id)
}

/// The labels every task container carries.
pub fn task_labels(node: &NodeId, task: &Task) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_NODE.to_string(), node.to_string()),
        (LABEL_SERVICE_ID.to_string(), task.service_id.to_string()),
        (LABEL_SERVICE_NAME.to_string(), task.service_name.clone()),
        (LABEL_TASK.to_string(), task.id.to_string()),
        (LABEL_SLOT.to_string(), task.slot.to_string()),
        (LABEL_STOP_GRACE.to_string(), task.spec.stop_grace_ms.to_string()),
        (LABEL_LOG_RETENTION.to_string(), task.spec.log_retention_ms().to_string()),
    ])
}

/// What a container's labels say beyond its task id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labelled {
    pub stop_grace_ms: Option<u64>,
    pub service_id: Option<ServiceId>,
    pub slot: Option<u64>,
    pub log_retention_ms: Option<u64>,
}

impl Labelled {
    pub fn read(labels: &HashMap<String, String>) -> Self {
        let num = |k: &str| labels.get(k).and_then(|v| v.parse().ok());
        Labelled {
            stop_grace_ms: num(LABEL_STOP_GRACE),
            service_id: labels.get(LABEL_SERVICE_ID).map(|s| ServiceId::from(s.as_str())),
            slot: num(LABEL_SLOT),
            log_retention_ms: num(LABEL_LOG_RETENTION),
        }
    }
}

/// A container's lifecycle state, as Docker names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Unknown,
}

impl ContainerState {
    pub fn parse(s: &str) -> ContainerState {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            _ => ContainerState::Unknown,
        }
    }

    /// A process exists (or is about to again): stopping it means something.
    pub fn is_live(self) -> bool {
        matches!(self, ContainerState::Running | ContainerState::Paused | ContainerState::Restarting)
    }

    /// Ran and ended.
    pub fn has_exited(self) -> bool {
        matches!(self, ContainerState::Exited | ContainerState::Dead)
    }
}

/// One container labelled with this node, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub container_id: String,
    pub task_id: TaskId,
    pub state: ContainerState,
    /// Set once the container has exited.
    pub exit_code: Option<i64>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// From [`LABEL_STOP_GRACE`].
    pub stop_grace_ms: Option<u64>,
    /// From the service, slot and log retention labels.
    pub service_id: Option<ServiceId>,
    pub slot: Option<u64>,
    pub log_retention_ms: Option<u64>,
    /// Where the container's published target ports are reachable on this
    /// node, as the engine reports them (empty until it runs).
    pub ports: Vec<HostPort>,
    /// The container's address when it is on exactly one network (while it
    /// runs): where its published target ports can be reached directly.
    pub address: Option<std::net::IpAddr>,
    /// Docker's health verdict while the container runs, if it has a
    /// health check (its own or its image's).
    pub health: Option<Health>,
    /// The last probe's output, for the error of an unhealthy task.
    pub health_output: Option<String>,
}

pub type LogStream = BoxStream<'static, Result<LogLine, RuntimeError>>;
/// One item per change to this node's containers (create, start, die, …):
/// a hint to list again, nothing more.
pub type EventStream = BoxStream<'static, Result<(), RuntimeError>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The image is missing and could not be pulled; `message` is Docker's.
    #[error("No such image: {image}: {message}")]
    Image { image: String, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// A host port the task asked for is taken on this node.
    #[error("{0}")]
    PortInUse(String),
    /// Docker refused or failed the request.
    #[error("docker: {message} (status {status})")]
    Docker { status: u16, message: String },
    /// Docker could not be reached or did not answer in time.
    #[error("docker unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    /// Worth trying again later: the engine was unreachable or failed
    /// internally, or the request raced another one. A bad image, spec or
    /// mount is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            RuntimeError::Unavailable(_) | RuntimeError::Conflict(_) => true,
            RuntimeError::Docker { status, .. } => *status >= 500,
            RuntimeError::Image { .. }
            | RuntimeError::NotFound(_)
            | RuntimeError::PortInUse(_)
            | RuntimeError::Other(_) => false,
        }
    }

    /// Docker's own words, without our prefix: what a task's `err` shows.
    pub fn message(&self) -> String {
        match self {
            // Docker's pull error alone does not say which image.
            RuntimeError::Image { image, message } => format!("No such image: {image}: {message}"),
            RuntimeError::Docker { message, .. } => message.clone(),
            RuntimeError::NotFound(m)
            | RuntimeError::Conflict(m)
            | RuntimeError::PortInUse(m)
            | RuntimeError::Unavailable(m)
            | RuntimeError::Other(m) => m.clone(),
        }
    }
}

/// What the task supervisor needs from a container engine. Object safe: the
/// supervisor holds an `Arc<dyn Runtime>`.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Present locally, or pulled. A missing image that cannot be pulled is
    /// [`RuntimeError::Image`] carrying Docker's message. A pull uses
    /// `auth`, the service's registry login, when it has one.
    async fn ensure_image(&self, image: &str, auth: Option<&RegistryAuth>) -> Result<(), RuntimeError>;

    /// Creates the task's container (named by [`container_name`], labelled by
    /// [`task_labels`]) and starts it. Returns the container id.
    ///
    /// Every `task.spec.ports` target is published on the node's advertise
    /// address: an ingress port at an ephemeral host port (the mesh forwards
    /// there), a host-mode port at its published number. A host port that is
    /// taken is [`RuntimeError::PortInUse`]. The real host ports show in
    /// [`ContainerInfo::ports`] once the container runs.
    async fn create_and_start(&self, node: &NodeId, task: &Task) -> Result<String, RuntimeError>;

    /// Every container labelled with `node`, in any state.
    async fn list(&self, node: &NodeId) -> Result<Vec<ContainerInfo>, RuntimeError>;

    /// SIGTERM, then SIGKILL after `grace_ms`. Stopping a stopped container
    /// is not an error; a missing one is [`RuntimeError::NotFound`].
    async fn stop(&self, container_id: &str, grace_ms: u64) -> Result<(), RuntimeError>;

    /// Removes the container, killing it if it runs. A missing one is
    /// [`RuntimeError::NotFound`].
    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError>;

    /// stdout and stderr of one task's container, each line with Docker's
    /// timestamp split off. `tail`: the last N lines; `None` for all.
    fn logs(&self, task_id: &TaskId, container_id: &str, follow: bool, tail: Option<u64>) -> LogStream;

    /// Change notifications for containers labelled with `node`.
    fn events(&self, node: &NodeId) -> EventStream;
}

/// Splits Docker's `2024-05-01T12:00:00.123456789Z message` into its parts.
/// A line without a timestamp keeps all its text and an empty timestamp.
pub fn split_timestamp(line: &str) -> (&str, &str) {
    match line.split_once(' ') {
        Some((ts, rest)) if looks_like_rfc3339(ts) => (ts, rest),
        None if looks_like_rfc3339(line) => (line, ""),
        _ => ("", line),
    }
}

fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[..4].iter().all(u8::is_ascii_digit)
}

/// Parses an RFC 3339 time (`2024-05-01T12:00:00.123456789Z`, or with a
/// `+hh:mm` offset) to epoch milliseconds. Docker's zero time
/// (`0001-01-01T00:00:00Z`) and anything before 1970 are `None`.
pub fn parse_rfc3339_ms(s: &str) -> Option<Millis> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    // Time, then an optional fraction, then Z or an offset.
    let (time, zone) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (t, z) = rest.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':')?;
        (t, sign * (zh.parse::<i64>().ok()? * 60 + zm.parse::<i64>().ok()?))
    };
    let (hms, frac) = match time.split_once('.') {
        Some((hms, f)) => (hms, f),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.parse().ok()?;
    let mut ms = 0i64;
    for (i, c) in frac.chars().take(3).enumerate() {
        ms += c.to_digit(10)? as i64 * [100, 10, 1][i];
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let total = ((days * 24 + h) * 60 + m - zone) * 60 + sec;
    let total_ms = total.checked_mul(1000)? + ms;
    (total_ms > 0).then_some(total_ms as Millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_off_log_lines() {
        assert_eq!(
            split_timestamp("2024-05-01T12:00:00.123456789Z hello world"),
            ("2024-05-01T12:00:00.123456789Z", "hello world")
        );
        assert_eq!(split_timestamp("2024-05-01T12:00:00.1Z "), ("2024-05-01T12:00:00.1Z", ""));
        assert_eq!(split_timestamp("2024-05-01T12:00:00.1Z"), ("2024-05-01T12:00:00.1Z", ""));
        assert_eq!(split_timestamp("no stamp here"), ("", "no stamp here"));
    }

    #[test]
    fn rfc3339_parses_to_millis() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("2024-05-01T12:34:56.789123456Z"), Some(1_714_566_896_789));
        assert_eq!(parse_rfc3339_ms("2024-05-01T14:34:56.789+02:00"), Some(1_714_566_896_789));
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms(""), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn retryable_errors() {
        assert!(RuntimeError::Unavailable("eof".into()).is_retryable());
        assert!(RuntimeError::Docker { status: 500, message: "x".into() }.is_retryable());
        assert!(!RuntimeError::Docker { status: 400, message: "x".into() }.is_retryable());
        assert!(!RuntimeError::Image { image: "a".into(), message: "b".into() }.is_retryable());
        assert_eq!(RuntimeError::Image { image: "a".into(), message: "b".into() }.to_string(), "No such image: a: b");
    }
}
