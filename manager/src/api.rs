//! The HTTP JSON API (see `common::api` for the routes and bodies), served
//! by every node: a manager answers everything; a worker answers `/v1/info`
//! and `/metrics` and says clearly that it is not a manager otherwise.
//! Reads come from this manager's applied store; writes are proposed to the
//! raft log (a follower's proposal is forwarded to the leader by raft).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use common::api::{ApiError, Info, JoinTokens, LogEntry, NodeInfo, NodeUpdate, ServiceInfo, ServiceUpdate, TaskInfo};
use common::node::{NodeStatus, Role};
use common::spec::{ServiceMode, ServiceSpec, SpecError};
use common::task::{Task, TaskState};
use common::time::now_ms;
use common::wire::{Frame, Hello, LogRequest};
use common::{NodeId, ServiceId, TaskId};
use futures::StreamExt;
use tokio::sync::mpsc;
use worker::metrics::metrics;
use worker::net;
use worker::tls::TlsError;

use crate::control::LiveNodes;
use crate::dispatcher::GetMeshFailures;
use crate::raft::{Propose, ProposeError};
use crate::roles::{self, RoleError};
use crate::store::{Command, Service, Store, StoreError};
use crate::{ui, Manager};

pub struct ApiState {
    pub node_id: NodeId,
    pub hostname: String,
    pub manager: Option<Manager>,
    pub live: LiveNodes,
}

/// Why an API call failed. The variant decides the status code; the text is
/// the message users see (the CLI's tests pin it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused the change (or numbering its ports failed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Raft could not commit the change; never `Rejected` (that is `Store`).
    #[error(transparent)]
    Propose(ProposeError),
    #[error("raft log unreachable: {0}")]
    RaftUnreachable(#[from] actix::MailboxError),
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Ca(#[from] TlsError),
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("node {hostname} ({node_id}) is a worker, not a manager: point -H or SHOAL_HOST at a manager's API")]
    NotManager { hostname: String, node_id: NodeId },
    #[error("invalid role {0:?}: expected worker or manager")]
    InvalidRole(String),
    #[error("invalid event type {0:?}: expected service, task or node")]
    InvalidEventType(String),
    /// Committed, but raft's membership did not follow in time (hostname).
    #[error("{0} is a manager now, but raft has not added it yet; `shoal node ls` shows when it is Reachable")]
    PromotePending(String),
    #[error("{0} is a worker now, but raft has not removed it yet; `shoal node ls` shows when it is done")]
    DemotePending(String),
    #[error("a node cannot remove itself")]
    RemoveSelf,
    #[error("node {0} is a manager: demote it before removing it")]
    RemoveManager(String),
    #[error("node {0} is not down and can't be removed (use --force to remove it anyway)")]
    RemoveReady(String),
    #[error("malformed request body: {0}")]
    MalformedBody(JsonPayloadError),
    #[error("malformed query: {0}")]
    MalformedQuery(QueryPayloadError),
    #[error("no such endpoint")]
    NoSuchEndpoint,
}

impl Error {
    fn not_found(what: &'static str, key: &str) -> Self {
        Error::NotFound { what, key: key.to_string() }
    }
}

impl From<ProposeError> for Error {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Rejected(e) => Error::Store(e),
            e => Error::Propose(e),
        }
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::NameInUse(..)
        | StoreError::Conflict(..)
        | StoreError::PortInUse { .. }
        | StoreError::PortTwice { .. }
        | StoreError::NoFreePort => StatusCode::CONFLICT,
        StoreError::NoSuchService(_) | StoreError::NoSuchNode(_) => StatusCode::NOT_FOUND,
        StoreError::AlreadyInitialised | StoreError::NoPreviousSpec(_) => StatusCode::BAD_REQUEST,
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Store(e) | Error::Propose(ProposeError::Rejected(e)) => store_status(e),
            Error::Propose(
                ProposeError::NoLeader | ProposeError::Unconfirmed | ProposeError::Timeout | ProposeError::Stopped,
            )
            | Error::NotManager { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Propose(ProposeError::Storage(_)) | Error::RaftUnreachable(_) | Error::Ca(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::Role(RoleError::NoSuchNode(_)) | Error::NotFound { .. } | Error::NoSuchEndpoint => {
                StatusCode::NOT_FOUND
            }
            Error::Role(_)
            | Error::Spec(_)
            | Error::InvalidRole(_)
            | Error::InvalidEventType(_)
            | Error::RemoveSelf
            | Error::RemoveManager(_)
            | Error::MalformedBody(_)
            | Error::MalformedQuery(_) => StatusCode::BAD_REQUEST,
            Error::RemoveReady(_) => StatusCode::CONFLICT,
            Error::PromotePending(_) | Error::DemotePending(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ApiError { message: self.to_string() })
    }
}

type Result<T> = std::result::Result<T, Error>;

fn manager(state: &ApiState) -> Result<&Manager> {
    state
        .manager
        .as_ref()
        .ok_or_else(|| Error::NotManager { hostname: state.hostname.clone(), node_id: state.node_id.clone() })
}

async fn propose(m: &Manager, cmd: Command) -> Result<()> {
    Ok(m.raft.send(Propose(cmd)).await??)
}

pub fn service_info(store: &Store, svc: &Service) -> ServiceInfo {
    let running = store
        .tasks_of(&svc.id)
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .count() as u64;
    let desired = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => store.tasks_of(&svc.id).filter(|t| t.is_active()).count() as u64,
    };
    ServiceInfo {
        id: svc.id.clone(),
        version: svc.version,
        spec: svc.spec.clone(),
        created_at: svc.created_at,
        updated_at: svc.updated_at,
        running,
        desired,
        update_status: svc.update_status.clone(),
        previous_spec: svc.previous_spec.clone(),
        mesh_errors: vec![],
    }
}

/// Every node as the API reports it: `live` is what gossip sees, `leader_id`
/// the raft id of the leader, `self_id` the node answering.
pub fn node_list(store: &Store, live: &BTreeSet<NodeId>, leader_id: u64, self_id: &NodeId) -> Vec<NodeInfo> {
    store
        .nodes
        .values()
        .map(|n| {
            let ready = live.contains(&n.id);
            let manager_status = match n.role {
                Role::Worker => String::new(),
                Role::Manager if n.raft_id == leader_id => "Leader".into(),
                Role::Manager if ready => "Reachable".into(),
                Role::Manager => "Unreachable".into(),
            };
            NodeInfo {
                node: n.clone(),
                status: if ready { NodeStatus::Ready } else { NodeStatus::Down },
                manager_status,
                is_self: &n.id == self_id,
            }
        })
        .collect()
}

fn node_infos(state: &ApiState, m: &Manager) -> Vec<NodeInfo> {
    let leader = m.status.borrow().leader_id;
    node_list(&m.store.read(), &state.live.borrow(), leader, &state.node_id)
}

/// One node as `node_infos` shows it; `key` (what the caller asked for) names it in the error.
fn node_info(state: &ApiState, m: &Manager, id: &NodeId, key: &str) -> Result<NodeInfo> {
    node_infos(state, m).into_iter().find(|n| &n.node.id == id).ok_or_else(|| Error::not_found("node", key))
}

async fn info(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let (is_leader, cluster_id) = match &state.manager {
        Some(m) => (m.is_leader(), m.store.read().cluster.id.clone()),
        None => (false, String::new()),
    };
    Ok(HttpResponse::Ok().json(Info {
        node_id: state.node_id.clone(),
        hostname: state.hostname.clone(),
        is_manager: state.manager.is_some(),
        is_leader,
        cluster_id,
    }))
}

async fn list_nodes(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Ok().json(node_infos(&state, m)))
}

async fn get_node(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let id = m.store.read().find_node(&key).map(|n| n.id.clone()).ok_or_else(|| Error::not_found("node", &key))?;
    let info = node_info(&state, m, &id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

async fn join_tokens(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let c = m.store.read().cluster.clone();
    Ok(HttpResponse::Ok().json(JoinTokens { worker: c.worker_token, manager: c.manager_token }))
}

#[derive(serde::Deserialize)]
struct RotateQuery {
    role: String,
}

/// A new secret for one role's token; the CA fingerprint stays.
async fn rotate_join_token(state: web::Data<ApiState>, q: web::Query<RotateQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let role = match q.role.as_str() {
        "worker" => Role::Worker,
        "manager" => Role::Manager,
        other => return Err(Error::InvalidRole(other.to_string())),
    };
    let ca = m.store.read().cluster.ca.fingerprint()?;
    propose(m, Command::RotateJoinToken { role, token: crate::join::new_token(ca) }).await?;
    join_tokens(state).await
}

async fn list_services(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let store = m.store.read();
    let list: Vec<ServiceInfo> = store.services.values().map(|s| service_info(&store, s)).collect();
    Ok(HttpResponse::Ok().json(list))
}

fn find_service(m: &Manager, key: &str) -> Result<Service> {
    m.store.read().find_service(key).cloned().ok_or_else(|| Error::not_found("service", key))
}

async fn get_service(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let mut info = service_info(&m.store.read(), &svc);
    // The leader hears from every node what it cannot serve.
    if let Ok(failures) = m.dispatcher.send(GetMeshFailures).await {
        let store = m.store.read();
        for (node, list) in failures {
            let host = store.nodes.get(&node).map(|n| n.hostname.clone()).unwrap_or_else(|| node.to_string());
            for f in list.iter().filter(|f| f.service_name == svc.spec.name) {
                info.mesh_errors.push(format!("{host}: {}", f.error));
            }
        }
    }
    Ok(HttpResponse::Ok().json(info))
}

/// A port published by another write between numbering and commit: numbering again may find a free one.
fn port_taken_meanwhile(e: &Error) -> bool {
    matches!(e, Error::Store(StoreError::PortInUse { .. }))
}

/// Numbers the unnumbered publishes and proposes; a port taken meanwhile by
/// a concurrent write is numbered again (a few times).
async fn propose_with_ports(
    m: &Manager,
    id: &ServiceId,
    spec: ServiceSpec,
    make: impl Fn(ServiceSpec) -> Command,
) -> Result<ServiceSpec> {
    let dynamic = spec.task.ports.iter().any(|p| p.published.is_none());
    let mut attempt = 0;
    loop {
        let mut numbered = spec.clone();
        m.store.read().allocate_ports(id, &mut numbered.task.ports)?;
        match propose(m, make(numbered.clone())).await {
            Err(e) if dynamic && attempt < 3 && port_taken_meanwhile(&e) => attempt += 1,
            Err(e) => return Err(e),
            Ok(()) => return Ok(numbered),
        }
    }
}

async fn create_service(state: web::Data<ApiState>, spec: web::Json<ServiceSpec>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let spec = spec.into_inner();
    spec.validate()?;
    let now = now_ms();
    let id = ServiceId::random();
    let spec =
        propose_with_ports(m, &id, spec, |spec| Command::CreateService(Service::new(id.clone(), spec, now))).await?;
    let svc = Service::new(id, spec, now);
    let info = service_info(&m.store.read(), &svc);
    Ok(HttpResponse::Created().json(info))
}

async fn update_service(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    update: web::Json<ServiceUpdate>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let spec = update.apply(&svc.spec)?;
    if spec != svc.spec {
        let id = svc.id.clone();
        propose_with_ports(m, &svc.id, spec, |spec| Command::UpdateService { id: id.clone(), spec, at: now_ms() })
            .await?;
    }
    let store = m.store.read();
    let svc = store.services.get(&svc.id).ok_or_else(|| Error::not_found("service", &key))?;
    Ok(HttpResponse::Ok().json(service_info(&store, svc)))
}

async fn rollback_service(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    propose(
        m,
        Command::RollbackService { id: svc.id.clone(), at: now_ms(), reason: "manually requested rollback".into() },
    )
    .await?;
    let store = m.store.read();
    let svc = store.services.get(&svc.id).ok_or_else(|| Error::not_found("service", &key))?;
    Ok(HttpResponse::Ok().json(service_info(&store, svc)))
}

async fn update_node(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    u: web::Json<NodeUpdate>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let id = m.store.read().find_node(&key).map(|n| n.id.clone()).ok_or_else(|| Error::not_found("node", &key))?;
    let at = now_ms();
    let mut cmds = Vec::new();
    if let Some(a) = u.availability {
        cmds.push(Command::SetNodeAvailability { id: id.clone(), availability: a, at });
    }
    if !u.label_add.is_empty() || !u.label_rm.is_empty() {
        cmds.push(Command::UpdateNodeLabels { id: id.clone(), add: u.label_add.clone(), rm: u.label_rm.clone(), at });
    }
    if !cmds.is_empty() {
        propose(m, Command::Batch(cmds)).await?;
    }
    let info = node_info(&state, m, &id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

/// How long `node promote`/`demote` wait for raft's membership to follow.
const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(10);

async fn promote_node(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let node = roles::check_promote(&m.store.read(), &state.live.borrow(), &key)?;
    propose(m, Command::SetNodeRole { id: node.id.clone(), role: Role::Manager, at: now_ms() }).await?;
    let mut status = m.status.clone();
    let joined = tokio::time::timeout(ROLE_CHANGE_WAIT, status.wait_for(|s| s.voters.contains(&node.raft_id))).await;
    if !matches!(joined, Ok(Ok(_))) {
        return Err(Error::PromotePending(node.hostname));
    }
    let info = node_info(&state, m, &node.id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

async fn demote_node(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let voters = m.status.borrow().voters.clone();
    let node = roles::check_demote(&m.store.read(), &voters, &state.live.borrow(), &key)?;
    propose(m, Command::SetNodeRole { id: node.id.clone(), role: Role::Worker, at: now_ms() }).await?;
    // A manager demoting itself may never see its own removal applied (the
    // leader stops talking to it): the committed role is enough then.
    if node.id != state.node_id {
        let mut status = m.status.clone();
        let left = tokio::time::timeout(ROLE_CHANGE_WAIT, status.wait_for(|s| !s.voters.contains(&node.raft_id))).await;
        if !matches!(left, Ok(Ok(_))) {
            return Err(Error::DemotePending(node.hostname));
        }
    }
    let info = node_info(&state, m, &node.id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

#[derive(serde::Deserialize)]
struct RemoveNodeQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_node(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    q: web::Query<RemoveNodeQuery>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let info = {
        let id = m.store.read().find_node(&key).map(|n| n.id.clone()).ok_or_else(|| Error::not_found("node", &key))?;
        node_info(&state, m, &id, &key)?
    };
    if info.node.id == state.node_id {
        return Err(Error::RemoveSelf);
    }
    if info.node.role == Role::Manager {
        return Err(Error::RemoveManager(info.node.hostname));
    }
    if info.status == NodeStatus::Ready && !q.force {
        return Err(Error::RemoveReady(info.node.hostname));
    }
    propose(m, Command::RemoveNode(info.node.id.clone())).await?;
    Ok(HttpResponse::Ok().json(info))
}

async fn remove_service(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let info = service_info(&m.store.read(), &svc);
    propose(m, Command::RemoveService(svc.id.clone())).await?;
    Ok(HttpResponse::Ok().json(info))
}

fn task_infos(store: &Store, tasks: impl Iterator<Item = Task>) -> Vec<TaskInfo> {
    tasks
        .map(|t| TaskInfo {
            node_hostname: t.node_id.as_ref().and_then(|n| store.nodes.get(n)).map(|n| n.hostname.clone()),
            task: t,
        })
        .collect()
}

async fn service_tasks(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let store = m.store.read();
    let list = task_infos(&store, store.tasks_of(&svc.id).cloned());
    Ok(HttpResponse::Ok().json(list))
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<u64>,
}

struct LogTarget {
    addr: SocketAddr,
    node: String,
    tasks: Vec<TaskId>,
}

/// Merges the logs of a service's tasks from every node holding them, as
/// NDJSON of `LogEntry`. Without `follow`, lines are sorted by time.
async fn service_logs(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    q: web::Query<LogsQuery>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let (targets, slots) = {
        let store = m.store.read();
        let mut by_node: BTreeMap<NodeId, Vec<TaskId>> = BTreeMap::new();
        let mut slots: BTreeMap<TaskId, (u64, String)> = BTreeMap::new();
        for t in store.tasks_of(&svc.id) {
            slots.insert(t.id.clone(), (t.slot, t.name()));
            if let (Some(n), true) = (&t.node_id, t.status.state > TaskState::Assigned) {
                by_node.entry(n.clone()).or_default().push(t.id.clone());
            }
        }
        let targets: Vec<LogTarget> = by_node
            .into_iter()
            .filter_map(|(n, tasks)| {
                store.nodes.get(&n).map(|node| LogTarget { addr: node.addr, node: node.hostname.clone(), tasks })
            })
            .collect();
        (targets, slots)
    };
    let (tx, mut rx) = mpsc::channel::<LogEntry>(1024);
    let name = svc.spec.name.clone();
    for target in targets {
        let tx = tx.clone();
        let name = name.clone();
        let slots = slots.clone();
        let req = LogRequest { tasks: target.tasks.clone(), follow: q.follow, tail: q.tail };
        let tls = m.tls.clone();
        tokio::spawn(async move {
            let (mut conn, _) = match net::dial(&tls, target.addr, Hello::Logs(req)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(node = %target.node, error = %e, "cannot fetch logs from node");
                    return;
                }
            };
            while let Ok(frame) = net::recv(&mut conn).await {
                match frame {
                    Frame::LogLine(l) => {
                        let (slot, task_name) = slots.get(&l.task_id).cloned().unwrap_or_default();
                        let entry = LogEntry {
                            slot,
                            task_name,
                            task_id: l.task_id,
                            service_name: name.clone(),
                            node: target.node.clone(),
                            timestamp: l.timestamp,
                            line: l.line,
                        };
                        if tx.send(entry).await.is_err() {
                            return;
                        }
                    }
                    Frame::LogEnd { error } => {
                        if let Some(e) = error {
                            tracing::warn!(node = %target.node, error = %e, "log stream ended with an error");
                        }
                        return;
                    }
                    _ => {}
                }
            }
        });
    }
    drop(tx);
    let line = |e: &LogEntry| {
        let mut s = serde_json::to_vec(e).unwrap_or_default();
        s.push(b'\n');
        web::Bytes::from(s)
    };
    if q.follow {
        let stream =
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |e| Ok::<_, actix_web::Error>(line(&e)));
        return Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(stream));
    }
    let mut all = Vec::new();
    while let Some(e) = rx.recv().await {
        all.push(e);
    }
    all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    let body: Vec<u8> = all.iter().flat_map(|e| line(e).to_vec()).collect();
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(body))
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    /// Milliseconds since the epoch: replay kept events from then on.
    since: Option<u64>,
    /// `service`, `task` or `node` (comma-separated for several).
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// NDJSON of `Event`: the kept ones from `since`, then live ones as they happen.
async fn events(state: web::Data<ApiState>, q: web::Query<EventsQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let kinds: Option<Vec<String>> = q.kind.as_ref().map(|k| k.split(',').map(|s| s.trim().to_string()).collect());
    if let Some(bad) = kinds.iter().flatten().find(|k| !matches!(k.as_str(), "service" | "task" | "node")) {
        return Err(Error::InvalidEventType(bad.clone()));
    }
    let wanted = move |e: &common::api::Event| kinds.as_ref().is_none_or(|k| k.contains(&e.kind));
    let (past, mut rx) = m.events.since(q.since);
    let line = |e: &common::api::Event| {
        let mut v = serde_json::to_vec(e).unwrap_or_default();
        v.push(b'\n');
        web::Bytes::from(v)
    };
    let last_seq = past.last().map(|e| e.seq).unwrap_or(0);
    let past: Vec<web::Bytes> = past.iter().filter(|e| wanted(e)).map(line).collect();
    let live = async_stream(move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.seq > last_seq && wanted(&e) => {
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "an events reader fell behind");
                }
                Err(_) => return,
            }
        }
    });
    let stream = futures::stream::iter(past).chain(live).map(Ok::<_, actix_web::Error>);
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(stream))
}

/// A stream fed by a task writing into a channel (ends when the task does
/// or the reader goes away).
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = web::Bytes>
where
    F: FnOnce(mpsc::Sender<web::Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, mut rx) = mpsc::channel(256);
    actix_web::rt::spawn(f(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------------------
// The web view (see `crate::ui`)

fn ui_state(state: &ApiState, m: &Manager) -> common::api::UiState {
    let nodes = node_infos(state, m);
    ui::snapshot(&m.store.read(), nodes, now_ms())
}

async fn ui_snapshot(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(ui_state(&state, m)))
}

/// Server-sent events: `snapshot` first, then a `patch` whenever what the
/// page shows changed (store events wake it; see `crate::ui` for the pacing).
async fn ui_stream(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?.clone();
    // Subscribed before the first look, so no change falls between them.
    let (_, mut rx) = m.events.since(None);
    let body = async_stream(move |tx| async move {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut last = ui_state(&state, &m);
        let mut first = format!("retry: {}\n", ui::RETRY_MS).into_bytes();
        first.extend(ui::sse("snapshot", &last));
        if tx.send(first.into()).await.is_err() {
            return;
        }
        let mut sent_at = Instant::now();
        loop {
            tokio::select! {
                r = rx.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = tokio::time::sleep(ui::REFRESH) => {}
            }
            if let Some(wait) = ui::MIN_GAP.checked_sub(sent_at.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            // Whatever else arrived meanwhile is in the look we take now.
            while !matches!(rx.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
            let next = ui_state(&state, &m);
            let chunk = match ui::diff(&last, &next) {
                Some(patch) => ui::sse("patch", &patch),
                None if sent_at.elapsed() >= ui::KEEPALIVE => b": keepalive\n\n".to_vec(),
                None => continue,
            };
            last = next;
            if tx.send(chunk.into()).await.is_err() {
                return;
            }
            sent_at = Instant::now();
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body.map(Ok::<_, actix_web::Error>)))
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    // no-cache: a browser revalidates, so a new binary's page shows at once.
    HttpResponse::Ok().content_type(content_type).insert_header(("Cache-Control", "no-cache")).body(body)
}

async fn ui_page() -> HttpResponse {
    asset("text/html; charset=utf-8", ui::INDEX_HTML)
}

async fn ui_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", ui::APP_JS)
}

async fn ui_css() -> HttpResponse {
    asset("text/css; charset=utf-8", ui::STYLE_CSS)
}

async fn to_ui() -> HttpResponse {
    HttpResponse::Found().insert_header(("Location", "/ui")).finish()
}

async fn metrics_text(state: web::Data<ApiState>) -> HttpResponse {
    let m = metrics();
    m.gauge("shoal_gossip_live_members", "nodes seen alive through gossip").set(state.live.borrow().len() as i64);
    if let Some(mgr) = &state.manager {
        let store = mgr.store.read();
        let mut counts: BTreeMap<TaskState, i64> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
        for t in store.tasks.values() {
            *counts.entry(t.status.state).or_default() += 1;
        }
        let fam = m.gauge_family("shoal_tasks", "tasks in the store by current state", "state");
        for (s, n) in counts {
            fam.set(s.as_str(), n);
        }
        m.gauge("shoal_services", "services in the store").set(store.services.len() as i64);
        m.gauge("shoal_nodes", "nodes in the store").set(store.nodes.len() as i64);
    }
    HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(m.render())
}

fn json_error(err: actix_web::error::JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    Error::MalformedBody(err).into()
}

fn query_error(err: actix_web::error::QueryPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    Error::MalformedQuery(err).into()
}

async fn not_found() -> Result<HttpResponse> {
    Err(Error::NoSuchEndpoint)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(4 * 1024 * 1024).error_handler(json_error))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .route("/metrics", web::get().to(metrics_text))
        .route("/v1/info", web::get().to(info))
        .route("/v1/nodes", web::get().to(list_nodes))
        .route("/v1/nodes/{key}", web::get().to(get_node))
        .route("/v1/nodes/{key}", web::delete().to(remove_node))
        .route("/v1/nodes/{key}/update", web::post().to(update_node))
        .route("/v1/nodes/{key}/promote", web::post().to(promote_node))
        .route("/v1/nodes/{key}/demote", web::post().to(demote_node))
        .route("/v1/join-tokens", web::get().to(join_tokens))
        .route("/v1/join-tokens/rotate", web::post().to(rotate_join_token))
        .route("/v1/events", web::get().to(events))
        .route("/v1/services", web::get().to(list_services))
        .route("/v1/services", web::post().to(create_service))
        .route("/v1/services/{key}", web::get().to(get_service))
        .route("/v1/services/{key}", web::delete().to(remove_service))
        .route("/v1/services/{key}/update", web::post().to(update_service))
        .route("/v1/services/{key}/rollback", web::post().to(rollback_service))
        .route("/v1/services/{key}/tasks", web::get().to(service_tasks))
        .route("/v1/services/{key}/logs", web::get().to(service_logs))
        .route("/v1/ui/state", web::get().to(ui_snapshot))
        .route("/v1/ui/stream", web::get().to(ui_stream))
        .route("/", web::get().to(to_ui))
        .route("/ui", web::get().to(ui_page))
        .route("/ui/", web::get().to(ui_page))
        .route("/ui/app.js", web::get().to(ui_js))
        .route("/ui/style.css", web::get().to(ui_css))
        .default_service(web::to(not_found));
}

/// Binds the API; fails at once (a clear error) if the address is taken.
pub fn serve(addr: SocketAddr, state: ApiState) -> std::io::Result<actix_web::dev::Server> {
    let state = web::Data::new(state);
    let server = actix_web::HttpServer::new(move || actix_web::App::new().app_data(state.clone()).configure(configure))
        .workers(1)
        .shutdown_timeout(1)
        .bind(addr)?
        .run();
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::mesh::Protocol;

    fn port_in_use() -> StoreError {
        StoreError::PortInUse { port: 30000, protocol: Protocol::Tcp, service: "web".into() }
    }

    /// What a client receives: the status and the JSON body's message.
    async fn answer(e: Error) -> (u16, String) {
        let resp = e.error_response();
        let status = resp.status().as_u16();
        let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        let body: ApiError = serde_json::from_slice(&body).unwrap();
        (status, body.message)
    }

    #[tokio::test]
    async fn each_error_answers_its_status_and_the_message_users_see() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (ProposeError::Rejected(port_in_use()).into(), 409, "port 30000/tcp is already published by service web"),
            (StoreError::NoFreePort.into(), 409, "no free port left in 30000-32767 to publish"),
            (ProposeError::Rejected(StoreError::NoSuchService("x".into())).into(), 404, "service x not found"),
            (
                ProposeError::Rejected(StoreError::NoPreviousSpec("x".into())).into(),
                400,
                "service x has no previous spec to roll back to",
            ),
            (
                ProposeError::Timeout.into(),
                503,
                "timed out waiting for the change to commit: it may or may not have been applied",
            ),
            (ProposeError::Storage("disk full".into()).into(), 500, "storage failure: disk full"),
            (RoleError::NoSuchNode("n".into()).into(), 404, "node n not found"),
            (RoleError::AlreadyManager("n".into()).into(), 400, "node n is already a manager"),
            (SpecError::EmptyImage.into(), 400, "invalid image: the image name must not be empty"),
            (Error::not_found("service", "nope"), 404, "service nope not found"),
            (
                Error::NotManager { hostname: "w1".into(), node_id: NodeId::from("abc".to_string()) },
                503,
                "node w1 (abc) is a worker, not a manager: point -H or SHOAL_HOST at a manager's API",
            ),
            (Error::InvalidRole("boss".into()), 400, "invalid role \"boss\": expected worker or manager"),
            (Error::InvalidEventType("x".into()), 400, "invalid event type \"x\": expected service, task or node"),
            (
                Error::PromotePending("n2".into()),
                504,
                "n2 is a manager now, but raft has not added it yet; `shoal node ls` shows when it is Reachable",
            ),
            (
                Error::DemotePending("n2".into()),
                504,
                "n2 is a worker now, but raft has not removed it yet; `shoal node ls` shows when it is done",
            ),
            (Error::RemoveSelf, 400, "a node cannot remove itself"),
            (Error::RemoveManager("n1".into()), 400, "node n1 is a manager: demote it before removing it"),
            (
                Error::RemoveReady("n2".into()),
                409,
                "node n2 is not down and can't be removed (use --force to remove it anyway)",
            ),
            (Error::NoSuchEndpoint, 404, "no such endpoint"),
        ];
        for (e, status, message) in cases {
            assert_eq!(answer(e).await, (status, message.to_string()));
        }
    }

    #[test]
    fn only_a_port_taken_by_another_service_is_numbered_again() {
        assert!(port_taken_meanwhile(&ProposeError::Rejected(port_in_use()).into()));
        assert!(port_taken_meanwhile(&Error::from(port_in_use())));
        for e in [
            ProposeError::Rejected(StoreError::PortTwice { port: 30000, protocol: Protocol::Tcp }).into(),
            ProposeError::Rejected(StoreError::NameInUse("web".into(), ServiceId::random())).into(),
            ProposeError::Rejected(StoreError::NoFreePort).into(),
            ProposeError::NoLeader.into(),
            Error::not_found("port", "30000"),
        ] {
            assert!(!port_taken_meanwhile(&e), "{e}");
        }
    }
}
