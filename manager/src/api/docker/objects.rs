//! shoal's services, tasks and nodes as the Engine API's objects (what
//! `docker service inspect`, `docker node ls`, the SDKs and dashboards
//! read). Pure: each function renders from a store view.

use std::time::{Duration, UNIX_EPOCH};

use common::api::{NodeInfo, ServiceInfo};
use common::node::{Availability, NodeStatus, Role};
use common::spec::{ServiceMode, UpdateState, UpdateStatus};
use common::task::Task;
use common::time::Millis;
use serde_json::{json, Map, Value};

use super::spec::{engine_view, engine_view_with_defaults, ports_to_engine, task_to_engine};
use crate::store::{ClusterInfo, Service};

/// RFC 3339 with nanoseconds, as Docker writes times.
pub fn timestamp(ms: Millis) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Go's name for this machine's architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn update_state(s: UpdateState) -> &'static str {
    match s {
        UpdateState::Updating => "updating",
        UpdateState::Paused => "paused",
        UpdateState::Completed => "completed",
        UpdateState::RollbackStarted => "rollback_started",
        UpdateState::RollbackPaused => "rollback_paused",
        UpdateState::RollbackCompleted => "rollback_completed",
    }
}

fn update_status(u: &UpdateStatus) -> Value {
    let mut v = json!({"State": update_state(u.state), "StartedAt": timestamp(u.started_at), "Message": u.message});
    if let Some(done) = u.completed_at {
        v["CompletedAt"] = json!(timestamp(done));
    }
    v
}

/// What a service's rendering includes beyond the basics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceView {
    /// `ServiceStatus` (`GET /services?status=true`).
    pub status: bool,
    /// The settings the spec left out (`?insertDefaults=true`).
    pub defaults: bool,
}

/// A service as `inspect` and `ls` show it.
pub fn service(svc: &Service, info: &ServiceInfo, view: ServiceView) -> Value {
    let spec = |s| if view.defaults { engine_view_with_defaults(s) } else { engine_view(s) };
    let mut v = json!({
        "ID": svc.id,
        "Version": {"Index": svc.version},
        "CreatedAt": timestamp(svc.created_at),
        "UpdatedAt": timestamp(svc.updated_at),
        "Spec": spec(&svc.spec),
        "Endpoint": {
            "Spec": {"Mode": "vip", "Ports": ports_to_engine(&svc.spec.task.ports)},
            "Ports": ports_to_engine(&svc.spec.task.ports),
        },
    });
    if let Some(prev) = &svc.previous_spec {
        v["PreviousSpec"] = spec(prev);
    }
    if let Some(u) = &svc.update_status {
        v["UpdateStatus"] = update_status(u);
    }
    if view.status {
        v["ServiceStatus"] =
            json!({"RunningTasks": info.running, "DesiredTasks": info.desired, "CompletedTasks": info.completed});
    }
    if let Some(iteration) = info.job_iteration {
        v["JobStatus"] = json!({"JobIteration": {"Index": iteration}, "LastExecution": timestamp(svc.updated_at)});
    }
    v
}

/// A task; its `Spec` is the service's document when the task runs the
/// service's current template, else its own template rendered.
pub fn task(t: &Task, svc: Option<&Service>) -> Value {
    let spec = match svc {
        Some(s) if s.spec.task == t.spec && s.spec.engine_spec.is_some() => {
            engine_view(&s.spec).get("TaskTemplate").cloned().unwrap_or_else(|| task_to_engine(&t.spec))
        }
        _ => task_to_engine(&t.spec),
    };
    let mut status = json!({
        "Timestamp": timestamp(t.status.timestamp),
        "State": t.status.state.as_str(),
        "Message": t.status.message,
        // Dashboards read this without a guard: always there.
        "ContainerStatus": {
            "ContainerID": t.status.container_id.clone().unwrap_or_default(),
            "PID": 0,
            "ExitCode": t.status.exit_code.unwrap_or(0),
        },
        "PortStatus": {},
    });
    if let Some(err) = &t.status.err {
        status["Err"] = json!(err);
    }
    let host_ports: Vec<Value> = t
        .spec
        .ports
        .iter()
        .filter(|p| p.mode == common::mesh::PublishMode::Host)
        .map(|p| json!({"Protocol": p.protocol.to_string(), "TargetPort": p.target, "PublishedPort": p.published, "PublishMode": "host"}))
        .collect();
    if !host_ports.is_empty() {
        status["PortStatus"] = json!({"Ports": host_ports});
    }
    let mut v = json!({
        "ID": t.id,
        "Version": {"Index": t.status.timestamp},
        "CreatedAt": timestamp(t.created_at),
        "UpdatedAt": timestamp(t.status.timestamp.max(t.created_at)),
        "Labels": {},
        "Spec": spec,
        "ServiceID": t.service_id,
        "Slot": engine_slot(t, svc),
        "Status": status,
        "DesiredState": t.shown_desired_state().as_str(),
    });
    if let Some(iteration) = t.job_iteration {
        v["JobIteration"] = json!({"Index": iteration});
    }
    if let Some(n) = &t.node_id {
        v["NodeID"] = json!(n);
    }
    v
}

/// Swarm numbers a replicated job's slots from 0 (the docker CLI's job
/// progress display counts on it); shoal numbers every slot from 1.
fn engine_slot(t: &Task, svc: Option<&Service>) -> u64 {
    match svc.map(|s| &s.spec.mode) {
        Some(ServiceMode::ReplicatedJob { .. }) => t.slot.saturating_sub(1),
        _ => t.slot,
    }
}

fn availability(a: Availability) -> &'static str {
    match a {
        Availability::Active => "active",
        Availability::Pause => "pause",
        Availability::Drain => "drain",
    }
}

/// A node. Description's Resources, Platform and Engine.Labels are what the
/// node reported; `fallback` stands in for the resources of a node that has
/// not reported yet.
pub fn node(n: &NodeInfo, fallback: &Resources) -> Value {
    let role = match n.node.role {
        Role::Manager => "manager",
        Role::Worker => "worker",
    };
    let state = match n.status {
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
        NodeStatus::Unknown => "unknown",
    };
    let described = n.resources.as_ref().map(|r| &r.description);
    let (platform, resources, engine_labels) = match described {
        Some(d) => {
            let mut res = json!({"NanoCPUs": d.resources.nano_cpus, "MemoryBytes": d.resources.memory_bytes});
            if !d.resources.generic.is_empty() {
                res["GenericResources"] = Value::Array(
                    d.resources
                        .generic
                        .iter()
                        .map(|(kind, n)| json!({"DiscreteResourceSpec": {"Kind": kind, "Value": n}}))
                        .collect(),
                );
            }
            (json!({"Architecture": d.arch, "OS": d.os}), res, json!(d.engine_labels))
        }
        None => (
            json!({"Architecture": std::env::consts::ARCH, "OS": std::env::consts::OS}),
            json!({"NanoCPUs": fallback.nano_cpus, "MemoryBytes": fallback.memory_bytes}),
            json!({}),
        ),
    };
    let mut v = json!({
        "ID": n.node.id,
        "Version": {"Index": n.node.updated_at.max(n.node.created_at)},
        "CreatedAt": timestamp(n.node.created_at),
        "UpdatedAt": timestamp(n.node.updated_at.max(n.node.created_at)),
        "Spec": {"Labels": n.node.labels, "Role": role, "Availability": availability(n.node.availability)},
        "Description": {
            "Hostname": n.node.hostname,
            "Platform": platform,
            "Resources": resources,
            "Engine": {"EngineVersion": engine_version(), "Labels": engine_labels, "Plugins": []},
            "TLSInfo": {},
        },
        "Status": {"State": state, "Addr": n.node.addr.ip().to_string()},
    });
    if n.node.role == Role::Manager {
        v["ManagerStatus"] = json!({
            "Leader": n.manager_status == "Leader",
            "Reachability": if n.manager_status == "Unreachable" { "unreachable" } else { "reachable" },
            "Addr": n.node.addr.to_string(),
        });
    }
    v
}

/// shoal's version where Docker puts the engine's.
pub fn engine_version() -> String {
    format!("{}-shoal", env!("CARGO_PKG_VERSION"))
}

/// CPUs and memory of this machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resources {
    pub ncpu: u64,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub fn of_this_machine() -> Self {
        let ncpu = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0);
        Resources { ncpu, nano_cpus: ncpu * 1_000_000_000, memory_bytes }
    }
}

/// The swarm's spec: shoal's settings in Docker's shape (most are fixed;
/// `CAConfig.NodeCertExpiry` is `--init --cert-expiry`, in nanoseconds).
fn swarm_spec(c: &ClusterInfo) -> Value {
    let node_cert_expiry = i64::try_from(c.cert_expiry().as_nanos()).unwrap_or(i64::MAX);
    json!({
        "Name": "default",
        "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                 "ElectionTick": 10, "HeartbeatTick": 1},
        "Dispatcher": {"HeartbeatPeriod": 5_000_000_000i64},
        "CAConfig": {"NodeCertExpiry": node_cert_expiry},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": false},
    })
}

/// `GET /swarm`: the cluster, with its join tokens.
pub fn swarm(c: &ClusterInfo) -> Value {
    json!({
        "ID": c.id,
        "Version": {"Index": 1},
        "CreatedAt": timestamp(c.created_at),
        "UpdatedAt": timestamp(c.created_at),
        "Spec": swarm_spec(c),
        "TLSInfo": {},
        "RootRotationInProgress": false,
        "DataPathPort": 4789,
        "DefaultAddrPool": c.addr_pool.pools.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "SubnetSize": c.addr_pool.mask_length,
        "JoinTokens": {"Worker": c.worker_token, "Manager": c.manager_token},
    })
}

/// The `Swarm` part of `GET /info`. `cluster` is there on managers only.
pub fn swarm_info(node_id: &str, node_addr: &str, nodes: &[NodeInfo], cluster: Option<&ClusterInfo>) -> Value {
    let managers: Vec<Value> = nodes
        .iter()
        .filter(|n| n.node.role == Role::Manager)
        .map(|n| json!({"NodeID": n.node.id, "Addr": n.node.addr.to_string()}))
        .collect();
    let mut v = json!({
        "NodeID": node_id,
        "NodeAddr": node_addr,
        "LocalNodeState": "active",
        "ControlAvailable": cluster.is_some(),
        "Error": "",
        "RemoteManagers": managers,
        "Nodes": nodes.len(),
        "Managers": managers.len(),
    });
    if let Some(c) = cluster {
        let mut cluster = Map::new();
        let keys = ["ID", "Version", "CreatedAt", "UpdatedAt", "Spec", "TLSInfo", "RootRotationInProgress"];
        for key in keys.into_iter().chain(["DataPathPort", "DefaultAddrPool", "SubnetSize"]) {
            cluster.insert(key.into(), swarm(c)[key].clone());
        }
        v["Cluster"] = Value::Object(cluster);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_nanos_in_utc() {
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123000000Z");
    }
}
