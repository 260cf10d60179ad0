//! The HTTP JSON API (see `common::api` for the routes and bodies), served
//! by every node: a manager answers everything; a worker answers `/v1/info`
//! and `/metrics` and says clearly that it is not a manager otherwise.
//! Reads come from this manager's applied store; writes are proposed to the
//! raft log (a follower's proposal is forwarded to the leader by raft).
//!
//! Layout: this module has the shared state, the error type, the helpers the
//! handlers share and the router; the handlers sit by what they serve:
//! `services` (services and their tasks), `networks`, `nodes` (nodes, `/v1/info`,
//! join tokens), `logs`, `events`, `ui` (the web view's page and streams)
//! and `metrics`; `docker` answers the Docker Engine API on the same port,
//! over the same functions. `access` is who may do what (client
//! certificates' roles over `--api-tls`), `certs` the client certificates
//! (`shoal cert issue`) and the API's own. `locked` is all a locked manager (autolock)
//! serves until `shoal unlock`.

mod access;
pub mod certs;
pub mod docker;
mod events;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod locked;
mod logs;
mod metrics;
pub(crate) mod networks;
mod nodes;
mod services;
mod ui;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use common::api::{ApiError, NodeInfo};
use common::node::{NodeStatus, Role};
use common::spec::SpecError;
use common::{ConfigId, NodeId, SecretId};
use tokio::sync::mpsc;
use worker::node::tls::TlsError;

use crate::control::{DiskAlarms, LiveNodes};
use crate::raft::{Propose, ProposeError};
use crate::roles::RoleError;
use crate::store::{Command, Service, Store, StoreError};
use crate::Manager;

pub struct ApiState {
    pub node_id: NodeId,
    pub hostname: String,
    pub manager: Option<Manager>,
    /// Nodes alive in gossip (the manager's [`Manager::live`] is what
    /// counts as Ready).
    pub live: LiveNodes,
    /// Nodes whose disk alarm is raised, from gossip.
    pub disk_alarms: DiskAlarms,
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
    Network(#[from] common::network::NetworkError),
    #[error(transparent)]
    Ca(#[from] TlsError),
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("node {hostname} ({node_id}) is a worker, not a manager: point -H or SHOAL_HOST at a manager's API")]
    NotManager { hostname: String, node_id: NodeId },
    #[error("invalid role {0:?}: expected worker or manager")]
    InvalidRole(String),
    #[error("invalid event type {0:?}: expected service, task, node, secret or config")]
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
    #[error("request body is larger than {} bytes", limits::BODY_LIMIT)]
    BodyTooLarge,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("malformed query: {0}")]
    MalformedQuery(QueryPayloadError),
    #[error("no such endpoint")]
    NoSuchEndpoint,
    /// The Engine API's node update for a version that is not the node's.
    #[error("node {0} is at version {1}, not {2}: update out of sequence")]
    NodeOutOfSequence(String, u64, u64),
    #[error("invalid data: not base64: {0}")]
    InvalidData(String),
    /// `shoal cert issue` asked for something the CA will not sign.
    #[error("cannot issue the certificate: {0}")]
    BadCertRequest(String),
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
        | StoreError::NoFreePort
        | StoreError::FileNameInUse(..)
        | StoreError::FileConflict(..)
        | StoreError::NetworkNameInUse(..)
        | StoreError::NetworkInUse { .. }
        | StoreError::Alloc(_) => StatusCode::CONFLICT,
        StoreError::NoSuchService(_)
        | StoreError::NoSuchNode(_)
        | StoreError::NoSuchFile(..)
        | StoreError::NoSuchNetwork(_) => StatusCode::NOT_FOUND,
        StoreError::AlreadyInitialised | StoreError::NoPreviousSpec(_) | StoreError::FileInUse { .. } => {
            StatusCode::BAD_REQUEST
        }
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
            Error::Propose(ProposeError::NoSpace { .. } | ProposeError::NoSpaceInFlight { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            Error::Propose(ProposeError::Storage(_)) | Error::RaftUnreachable(_) | Error::Ca(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::Role(RoleError::NoSuchNode(_)) | Error::NotFound { .. } | Error::NoSuchEndpoint => {
                StatusCode::NOT_FOUND
            }
            Error::Role(_)
            | Error::Spec(_)
            | Error::Network(_)
            | Error::InvalidRole(_)
            | Error::InvalidEventType(_)
            | Error::RemoveSelf
            | Error::RemoveManager(_)
            | Error::MalformedBody(_)
            | Error::MalformedQuery(_)
            | Error::InvalidData(_)
            | Error::BadCertRequest(_) => StatusCode::BAD_REQUEST,
            Error::RemoveReady(_) | Error::NodeOutOfSequence(..) => StatusCode::CONFLICT,
            Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
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

/// Every node as the API reports it: `live` is who counts as live
/// ([`crate::liveness`]), `alarms` what gossip sees, `leader_id` the raft id of the leader, `self_id` the node answering.
pub fn node_list(
    store: &Store,
    live: &BTreeSet<NodeId>,
    alarms: &BTreeMap<NodeId, String>,
    leader_id: u64,
    self_id: &NodeId,
) -> Vec<NodeInfo> {
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
                disk_alarm: alarms.get(&n.id).cloned(),
                resources: store.descriptions.get(&n.id).map(|d| common::sched::NodeResources {
                    description: d.clone(),
                    reserved: store.reserved_on(&n.id),
                }),
            }
        })
        .collect()
}

fn node_infos(state: &ApiState, m: &Manager) -> Vec<NodeInfo> {
    let leader = m.status.borrow().leader_id;
    node_list(&m.store.read(), &m.live.borrow(), &state.disk_alarms.borrow(), leader, &state.node_id)
}

/// One node as `node_infos` shows it; `key` (what the caller asked for) names it in the error.
fn node_info(state: &ApiState, m: &Manager, id: &NodeId, key: &str) -> Result<NodeInfo> {
    node_infos(state, m).into_iter().find(|n| &n.node.id == id).ok_or_else(|| Error::not_found("node", key))
}

/// The id of the node `key` (an id, an id prefix or a hostname) names.
fn find_node_id(m: &Manager, key: &str) -> Result<NodeId> {
    m.store.read().find_node(key).map(|n| n.id.clone()).ok_or_else(|| Error::not_found("node", key))
}

fn find_service(m: &Manager, key: &str) -> Result<Service> {
    m.store.read().find_service(key).cloned().ok_or_else(|| Error::not_found("service", key))
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

/// A JSON body refused: too large (413), too slow (408) or malformed (400).
fn json_error(err: actix_web::error::JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::PayloadError;
    match err {
        JsonPayloadError::Overflow { .. }
        | JsonPayloadError::OverflowKnownLength { .. }
        | JsonPayloadError::Payload(PayloadError::Overflow) => Error::BodyTooLarge.into(),
        JsonPayloadError::Payload(PayloadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            Error::BodyTimeout.into()
        }
        err => Error::MalformedBody(err).into(),
    }
}

fn query_error(err: actix_web::error::QueryPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    Error::MalformedQuery(err).into()
}

async fn not_found() -> Result<HttpResponse> {
    Err(Error::NoSuchEndpoint)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(limits::BODY_LIMIT).error_handler(json_error))
        .app_data(web::PayloadConfig::default().limit(limits::BODY_LIMIT))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .route("/metrics", web::get().to(metrics::metrics_text))
        .route("/v1/info", web::get().to(nodes::info))
        .route("/v1/nodes", web::get().to(nodes::list_nodes))
        .route("/v1/nodes/{key}", web::get().to(nodes::get_node))
        .route("/v1/nodes/{key}", web::delete().to(nodes::remove_node))
        .route("/v1/nodes/{key}/update", web::post().to(nodes::update_node))
        .route("/v1/nodes/{key}/promote", web::post().to(nodes::promote_node))
        .route("/v1/nodes/{key}/demote", web::post().to(nodes::demote_node))
        .route("/v1/join-tokens", web::get().to(nodes::join_tokens))
        .route("/v1/join-tokens/rotate", web::post().to(nodes::rotate_join_token))
        .route("/v1/gossip-key/rotate", web::post().to(nodes::rotate_gossip_key))
        .route("/v1/certs", web::post().to(certs::issue))
        .route("/v1/events", web::get().to(events::events))
        .route("/v1/networks", web::get().to(networks::list_networks))
        .route("/v1/networks", web::post().to(networks::create_network))
        .route("/v1/networks/{key}", web::get().to(networks::get_network))
        .route("/v1/networks/{key}", web::delete().to(networks::remove_network))
        .route("/v1/services", web::get().to(services::list_services))
        .route("/v1/services", web::post().to(services::create_service))
        .route("/v1/services/{key}", web::get().to(services::get_service))
        .route("/v1/services/{key}", web::delete().to(services::remove_service))
        .route("/v1/services/{key}/update", web::post().to(services::update_service))
        .route("/v1/services/{key}/rollback", web::post().to(services::rollback_service))
        .route("/v1/services/{key}/tasks", web::get().to(services::service_tasks))
        .route("/v1/services/{key}/logs", web::get().to(logs::service_logs))
        .route("/v1/secrets", web::get().to(files::list::<SecretId>))
        .route("/v1/secrets", web::post().to(files::post::<SecretId>))
        .route("/v1/secrets/{key}", web::get().to(files::get::<SecretId>))
        .route("/v1/secrets/{key}", web::delete().to(files::delete::<SecretId>))
        .route("/v1/configs", web::get().to(files::list::<ConfigId>))
        .route("/v1/configs", web::post().to(files::post::<ConfigId>))
        .route("/v1/configs/{key}", web::get().to(files::get::<ConfigId>))
        .route("/v1/configs/{key}", web::delete().to(files::delete::<ConfigId>))
        .route("/v1/ui/state", web::get().to(ui::ui_snapshot))
        .route("/v1/ui/stream", web::get().to(ui::ui_stream))
        .route("/", web::get().to(ui::to_ui))
        .route("/ui", web::get().to(ui::ui_page))
        .route("/ui/", web::get().to(ui::ui_page))
        .route("/ui/app.js", web::get().to(ui::ui_js))
        .route("/ui/style.css", web::get().to(ui::ui_css))
        .configure(docker::configure)
        .default_service(web::to(not_found));
}

/// Binds the API on `addr`, over TLS with client certificates if `tls` is
/// given (see [`access`]), and on the unix socket `socket` (replacing a
/// stale socket file there), under `limits` (both share them: one worker
/// serves both); fails at once (a clear error) if the address is taken.
pub fn serve(
    addr: SocketAddr,
    socket: Option<&Path>,
    tls: Option<rustls::ServerConfig>,
    state: ApiState,
    limits: &limits::Limits,
) -> std::io::Result<actix_web::dev::Server> {
    let state = web::Data::new(state);
    let body_timeout = limits.body_timeout;
    let cap = limits.max_connections;
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .wrap_fn(access::check)
            .wrap_fn(move |req, srv| limits::bodies(req, srv, body_timeout))
            .configure(configure)
    })
    .on_connect(move |conn, ext| {
        limits::on_connect(conn, ext, cap);
        access::on_connect(conn, ext);
    })
    .workers(1)
    .shutdown_timeout(1)
    .backlog(limits.backlog)
    .max_connections(limits.worker_connections())
    .max_connection_rate(limits.max_handshaking)
    .client_request_timeout(limits.request_head_timeout)
    .client_disconnect_timeout(limits.disconnect_timeout)
    .tls_handshake_timeout(limits.tls_handshake_timeout)
    .keep_alive(actix_web::http::KeepAlive::Disabled);
    let mut server = match tls {
        Some(config) => server.bind_rustls_0_23(addr, config)?,
        None => server.bind(addr)?,
    };
    if let Some(path) = socket {
        remove_stale_socket(path)?;
        server = server.bind_uds(path)?;
    }
    Ok(server.run())
}

/// A socket file nobody listens on (left by a node that was killed) is
/// removed; one in use, or any other file, is left and binding fails.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        _ => Ok(()),
    }
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
            (
                ProposeError::NoSpace { dir: "/var/lib/shoal".into() }.into(),
                507,
                "no space left on the manager's disk (/var/lib/shoal): writes are refused until space is freed",
            ),
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
            (
                Error::InvalidEventType("x".into()),
                400,
                "invalid event type \"x\": expected service, task, node, secret or config",
            ),
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
}
