//! The Docker Engine API's Swarm part, beside shoal's own API on the same
//! port (and on `--docker-socket`): the stock docker CLI, the Docker SDKs
//! and dashboards talk to a shoal manager as to a Swarm manager.
//!
//! A thin translation: the handlers call the same functions as shoal's own
//! API (`super::services::create`, `super::nodes::update`, …) and render
//! the same store views as Docker's objects. Paths are `/_ping`,
//! `/v1.NN/…` (a version from [`MIN_VERSION`] to [`VERSION`]) and the same
//! paths unversioned; shoal's own `/v1/…` never matches `v1\.[0-9]+`.
//!
//! - `json`: Docker's key casing (Go decodes keys case-insensitively).
//! - `spec`: Docker's ServiceSpec to shoal's and back; the document a
//!   client sent is kept beside the typed spec, so inspect returns it.
//! - `objects`: services, tasks, nodes, the swarm and `/info` as Docker's.
//! - `filters`: the `filters` parameter in both clients' forms.
//! - `system`, `services`, `tasks`, `nodes`, `files` (secrets and
//!   configs): the handlers.
//!
//! Facts about the clients this follows: `/work/shared/engine-api.md`
//! (summarised in the README's "Docker Engine API" section).

mod files;
mod filters;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod json;
mod networks;
mod nodes;
mod objects;
mod services;
pub(crate) mod spec;
mod system;
mod tasks;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError, Route};
use common::api::ApiError;
use common::{ConfigId, SecretId};
use futures::StreamExt;
use serde_json::Value;

use super::ApiState;
use crate::Manager;

/// The API version shoal advertises (docker 27's); clients at or below it
/// work, newer ones negotiate down to it.
pub const VERSION: &str = "1.47";
const MAX_MINOR: u32 = 47;
/// The oldest version accepted, as moby's default minimum.
pub const MIN_VERSION: &str = "1.24";
const MIN_MINOR: u32 = 24;
/// The largest request body accepted (a spec is a few KiB; a config's
/// value, up to 1000 KiB, comes base64).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Why an Engine API call failed; the text is what the docker CLI prints
/// after "Error response from daemon:".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What shoal's own API would have answered (the same checks).
    #[error(transparent)]
    Api(#[from] super::Error),
    #[error(transparent)]
    Spec(#[from] spec::EngineSpecError),
    #[error("{0}")]
    BadRequest(String),
    #[error("client version {0} is too new. Maximum supported API version is {VERSION}")]
    TooNew(String),
    #[error(
        "client version {0} is too old. Minimum supported API version is {MIN_VERSION}, please upgrade your client to a newer version"
    )]
    TooOld(String),
    #[error("request body is larger than {BODY_LIMIT} bytes")]
    TooLarge,
    #[error("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.")]
    NotManager,
    /// `docker swarm init/join/leave/update`, `unlock`: shoal's own commands do that.
    #[error("{0}")]
    SwarmCommand(String),
    #[error("shoal serves the Swarm part of the Docker Engine API only: {0} is not one of its endpoints")]
    NoEndpoint(String),
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Api(e) => e.status_code(),
            Error::Spec(_) | Error::BadRequest(_) | Error::TooNew(_) | Error::TooOld(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotManager | Error::SwarmCommand(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NoEndpoint(_) => StatusCode::NOT_FOUND,
        }
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ApiError { message: self.to_string() })
    }
}

type Result<T> = std::result::Result<T, Error>;

fn manager(state: &ApiState) -> Result<&Manager> {
    state.manager.as_ref().ok_or(Error::NotManager)
}

/// The request body as JSON in Docker's casing, at most [`BODY_LIMIT`]
/// bytes; an empty body is `null`.
async fn body(mut payload: web::Payload) -> Result<Value> {
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => Error::TooLarge,
            e => Error::BadRequest(format!("cannot read the request body: {e}")),
        })?;
        if bytes.len() + chunk.len() > BODY_LIMIT {
            return Err(Error::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    parse_body(&bytes)
}

/// A whole request body as [`body`] reads it.
fn parse_body(bytes: &[u8]) -> Result<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("invalid JSON: {e}")))?;
    Ok(json::canonical(v))
}

/// The minor number of a path's `v1.NN`, checked against what is served.
fn check_version(v: &str) -> Result<()> {
    let minor = v.strip_prefix("v1.").and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m > MAX_MINOR => Err(Error::TooNew(v[1..].to_string())),
        Some(m) if m < MIN_MINOR => Err(Error::TooOld(v[1..].to_string())),
        Some(_) => Ok(()),
        None => Err(Error::BadRequest(format!("invalid API version {v:?}"))),
    }
}

/// What the Engine stamps on every answer, and the version check.
async fn engine_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let checked = req.match_info().get("api_version").map(check_version).transpose();
    let mut res = match checked {
        Err(e) => req.error_response(e).map_into_boxed_body(),
        Ok(_) => next.call(req).await?.map_into_boxed_body(),
    };
    let h = res.headers_mut();
    let server = format!("shoal/{} ({})", env!("CARGO_PKG_VERSION"), std::env::consts::OS);
    for (k, v) in [("api-version", VERSION.to_string()), ("ostype", "linux".into()), ("server", server)] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(k), v);
        }
    }
    Ok(res)
}

/// A resource answering `path` both versioned and unversioned.
fn resource(
    path: &str,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource([format!("/{{api_version:v1\\.[0-9]+}}{path}"), path.to_string()]).wrap(from_fn(engine_headers))
}

/// Registers the Engine API's routes (before shoal's default handler).
pub fn configure(cfg: &mut web::ServiceConfig) {
    let add = |cfg: &mut web::ServiceConfig, path: &str, routes: Vec<Route>| {
        let mut r = resource(path);
        for route in routes {
            r = r.route(route);
        }
        cfg.service(r);
    };
    add(cfg, "/_ping", vec![web::get().to(system::ping), web::head().to(system::ping)]);
    add(cfg, "/version", vec![web::get().to(system::version)]);
    add(cfg, "/info", vec![web::get().to(system::info)]);
    add(cfg, "/events", vec![web::get().to(system::events)]);
    add(cfg, "/swarm", vec![web::get().to(system::swarm)]);
    for verb in ["init", "join", "leave", "update", "unlock", "unlockkey"] {
        add(cfg, &format!("/swarm/{verb}"), vec![web::route().to(system::swarm_command)]);
    }
    add(cfg, "/services", vec![web::get().to(services::list)]);
    add(cfg, "/services/create", vec![web::post().to(services::create)]);
    add(cfg, "/services/{id}", vec![web::get().to(services::inspect), web::delete().to(services::remove)]);
    add(cfg, "/services/{id}/update", vec![web::post().to(services::update)]);
    add(cfg, "/services/{id}/logs", vec![web::get().to(services::logs)]);
    add(cfg, "/tasks", vec![web::get().to(tasks::list)]);
    add(cfg, "/tasks/{id}", vec![web::get().to(tasks::inspect)]);
    add(cfg, "/tasks/{id}/logs", vec![web::get().to(tasks::logs)]);
    add(cfg, "/secrets", vec![web::get().to(files::list::<SecretId>)]);
    add(cfg, "/secrets/create", vec![web::post().to(files::create::<SecretId>)]);
    add(
        cfg,
        "/secrets/{id}",
        vec![web::get().to(files::inspect::<SecretId>), web::delete().to(files::remove::<SecretId>)],
    );
    add(cfg, "/secrets/{id}/update", vec![web::post().to(files::update::<SecretId>)]);
    add(cfg, "/configs", vec![web::get().to(files::list::<ConfigId>)]);
    add(cfg, "/configs/create", vec![web::post().to(files::create::<ConfigId>)]);
    add(
        cfg,
        "/configs/{id}",
        vec![web::get().to(files::inspect::<ConfigId>), web::delete().to(files::remove::<ConfigId>)],
    );
    add(cfg, "/configs/{id}/update", vec![web::post().to(files::update::<ConfigId>)]);
    add(cfg, "/networks", vec![web::get().to(networks::list)]);
    add(cfg, "/networks/create", vec![web::post().to(networks::create)]);
    add(cfg, "/networks/{id}", vec![web::get().to(networks::inspect), web::delete().to(networks::remove)]);
    add(cfg, "/nodes", vec![web::get().to(nodes::list)]);
    add(cfg, "/nodes/{id}", vec![web::get().to(nodes::inspect), web::delete().to(nodes::remove)]);
    add(cfg, "/nodes/{id}/update", vec![web::post().to(nodes::update)]);
    // Anything else under a version: not ours (containers, images, …).
    cfg.service(
        web::resource("/{api_version:v1\\.[0-9]+}/{rest:.*}")
            .wrap(from_fn(engine_headers))
            .route(web::route().to(no_endpoint)),
    );
}

async fn no_endpoint(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::NoEndpoint(format!("{} {}", req.method(), req.path())))
}

/// The `{id}` of a path.
#[derive(serde::Deserialize)]
struct IdPath {
    id: String,
}

/// `true`/`1`, as the Engine reads boolean query parameters.
fn truthy(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| matches!(s, "1" | "true" | "True" | "TRUE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_range_are_refused_in_dockers_words() {
        assert!(check_version("v1.47").is_ok());
        assert!(check_version("v1.24").is_ok());
        assert_eq!(
            check_version("v1.99").unwrap_err().to_string(),
            "client version 1.99 is too new. Maximum supported API version is 1.47"
        );
        assert_eq!(
            check_version("v1.12").unwrap_err().to_string(),
            "client version 1.12 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"
        );
    }
}
