//! `/services`: list, create, inspect, update (and rollback), remove, logs.

use actix_web::{web, HttpRequest, HttpResponse};
use common::api::LogEntry;
use common::container::RegistryAuth;
use common::network::EndpointMode;
use common::wire::OutputStream;
use common::TaskId;
use futures::StreamExt;
use serde_json::{json, Value};

use super::filters::Filters;
use super::objects::{self, ServiceView};
use super::{body, manager, spec, truthy, ApiState, Error, IdPath, Result};
use crate::api::services::{self as shoal, service_info};
use crate::api::{find_service, logs, propose};
use crate::store::{Command, Service, Store, StoreError};
use crate::Manager;

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
    status: Option<String>,
}

pub(super) async fn list(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let f = Filters::parse(q.filters.as_deref()).map_err(Error::BadRequest)?;
    f.only(&["id", "name", "label", "mode"]).map_err(Error::BadRequest)?;
    let status = truthy(&q.status);
    let store = m.store.read();
    let list: Vec<Value> = store
        .services
        .values()
        .filter(|s| {
            f.any("id", |x| s.id.as_str().starts_with(x))
                && f.any("name", |x| s.spec.name.starts_with(x))
                && f.labels("label", &s.spec.labels)
                && f.any("mode", |x| x == s.spec.mode.name())
        })
        .map(|s| render(&store, s, ServiceView { status, defaults: false }))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// The warnings of an answer: what the document asks for that shoal does not do.
fn warnings(doc: &Value) -> Value {
    let ignored = spec::ignored(doc);
    if ignored.is_empty() {
        return Value::Null;
    }
    json!(ignored.iter().map(|p| format!("shoal does not act on {p} yet (kept in the spec)")).collect::<Vec<_>>())
}

/// The login a client sends in `X-Registry-Auth` (`docker service create
/// --with-registry-auth`): base64url JSON of Docker's AuthConfig. None when
/// absent or empty (`{}`, what the docker CLI sends without a login).
fn registry_auth(req: &HttpRequest) -> Result<Option<RegistryAuth>> {
    use base64::Engine;
    let Some(h) = req.headers().get("X-Registry-Auth") else { return Ok(None) };
    let bad = || Error::BadRequest("invalid X-Registry-Auth header".into());
    let text = h.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let trimmed = text.trim_end_matches('=');
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| bad())?;
    #[derive(serde::Deserialize, Default)]
    struct AuthConfig {
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        #[serde(default)]
        serveraddress: String,
    }
    let a: AuthConfig = serde_json::from_slice(&json).map_err(|_| bad())?;
    Ok((!a.username.is_empty()).then_some(RegistryAuth {
        username: a.username,
        password: a.password,
        server_address: a.serveraddress,
    }))
}

pub(super) async fn create(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let auth = registry_auth(&req)?;
    let doc = body(payload).await?;
    let mut spec = spec::from_engine(&doc)?;
    spec.task.registry_auth = auth;
    let svc = shoal::create(m, spec).await?;
    Ok(HttpResponse::Created().json(json!({"ID": svc.id, "Warnings": warnings(&doc)})))
}

#[derive(serde::Deserialize)]
pub(super) struct InspectQuery {
    #[serde(rename = "insertDefaults")]
    insert_defaults: Option<String>,
}

pub(super) async fn inspect(
    state: web::Data<ApiState>,
    path: web::Path<IdPath>,
    q: web::Query<InspectQuery>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &path.id)?;
    let store = m.store.read();
    let view = ServiceView { status: false, defaults: truthy(&q.insert_defaults) };
    Ok(HttpResponse::Ok().json(render(&store, &svc, view)))
}

/// A service as the Engine API shows it: its endpoint's mode and its
/// virtual IPs, `{"NetworkID", "Addr"}` with the network's prefix length
/// (`10.0.128.1/16`), as Docker's.
fn render(store: &Store, svc: &Service, view: ServiceView) -> Value {
    let mut v = objects::service(svc, &service_info(store, svc), view);
    let mode = match svc.spec.endpoint_mode {
        EndpointMode::Vip => "vip",
        EndpointMode::Dnsrr => "dnsrr",
    };
    v["Endpoint"]["Spec"]["Mode"] = json!(mode);
    let vips: Vec<Value> = svc
        .vips
        .iter()
        .map(|vip| {
            let prefix = store.networks.get(&vip.network).map_or(32, |n| n.subnet.prefix);
            json!({"NetworkID": vip.network, "Addr": format!("{}/{prefix}", vip.addr)})
        })
        .collect();
    if !vips.is_empty() {
        v["Endpoint"]["VirtualIPs"] = json!(vips);
    }
    v
}

pub(super) async fn remove(state: web::Data<ApiState>, path: web::Path<IdPath>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &path.id)?;
    propose(m, Command::RemoveService(svc.id.clone())).await?;
    Ok(HttpResponse::Ok().finish())
}

#[derive(serde::Deserialize)]
pub(super) struct UpdateQuery {
    version: Option<String>,
    rollback: Option<String>,
}

fn out_of_sequence(svc: &Service, expect: u64) -> Error {
    Error::Api(StoreError::Conflict(svc.id.clone(), svc.version, expect).into())
}

/// The whole spec replaces the service's (absent fields mean removed);
/// `rollback=previous` restores the previous spec instead.
pub(super) async fn update(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<IdPath>,
    q: web::Query<UpdateQuery>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let auth = registry_auth(&req)?;
    let svc = find_service(m, &path.id)?;
    let version = match q.version.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| Error::BadRequest(format!("invalid service version '{v}'")))?),
    };
    match q.rollback.as_deref() {
        Some("previous") => {
            if let Some(v) = version.filter(|v| *v != svc.version) {
                return Err(out_of_sequence(&svc, v));
            }
            shoal::rollback(m, &svc).await?;
            return Ok(HttpResponse::Ok().json(json!({"Warnings": null})));
        }
        None | Some("") => {}
        Some(other) => return Err(Error::BadRequest(format!("unrecognized rollback option {other}"))),
    }
    let doc = body(payload).await?;
    let mut spec = spec::from_engine(&doc)?;
    // No new login: the service keeps its own, as Swarm does.
    spec.task.registry_auth = auth.or_else(|| svc.spec.task.registry_auth.clone());
    if spec.name != svc.spec.name {
        return Err(Error::BadRequest("renaming services is not supported".into()));
    }
    shoal::update(m, &svc, spec, version).await?;
    Ok(HttpResponse::Ok().json(json!({"Warnings": warnings(&doc)})))
}

#[derive(serde::Deserialize, Default)]
pub(super) struct LogsQuery {
    follow: Option<String>,
    tail: Option<String>,
    since: Option<String>,
    timestamps: Option<String>,
    details: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
}

pub(super) async fn logs(
    state: web::Data<ApiState>,
    path: web::Path<IdPath>,
    q: web::Query<LogsQuery>,
    req: HttpRequest,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &path.id)?;
    stream_logs(m, &svc, None, &q, &req).await
}

/// A service's (or one task's) logs in Docker's multiplexed framing.
pub(super) async fn stream_logs(
    m: &Manager,
    svc: &Service,
    task: Option<&TaskId>,
    q: &LogsQuery,
    req: &HttpRequest,
) -> Result<HttpResponse> {
    if !truthy(&q.stdout) && !truthy(&q.stderr) {
        return Err(Error::BadRequest("Bad parameters: you must choose at least one stream".into()));
    }
    let tail = match q.tail.as_deref() {
        None | Some("") | Some("all") => None,
        Some(n) => Some(n.parse::<u64>().map_err(|_| Error::BadRequest(format!("invalid tail {n:?}")))?),
    };
    let since = match q.since.as_deref().filter(|s| !s.is_empty() && *s != "0") {
        Some(s) => Some(since_time(s)?),
        None => None,
    };
    let follow = truthy(&q.follow);
    let format = Format { timestamps: truthy(&q.timestamps), details: truthy(&q.details), service: svc.id.to_string() };
    // Docker's content type for this framing from API 1.42 on.
    let minor = req.match_info().get("api_version").and_then(|v| v.strip_prefix("v1.")?.parse::<u32>().ok());
    let content_type = match minor {
        Some(m) if m < 42 => "application/vnd.docker.raw-stream",
        _ => "application/vnd.docker.multiplexed-stream",
    };
    let (stdout, stderr) = (truthy(&q.stdout), truthy(&q.stderr));
    let keep = move |e: &LogEntry| {
        let wanted = match e.stream {
            OutputStream::Stdout => stdout,
            OutputStream::Stderr => stderr,
        };
        wanted && since.is_none_or(|s| line_time(&e.timestamp).is_none_or(|t| t >= s))
    };
    let mut rx = logs::fetch(m, svc, task, follow, tail);
    if follow {
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .filter(move |e| std::future::ready(keep(e)))
            .map(move |e| Ok::<_, actix_web::Error>(web::Bytes::from(format.frame(&e))));
        return Ok(HttpResponse::Ok().content_type(content_type).streaming(stream));
    }
    let all = logs::collect_sorted(rx).await;
    let body: Vec<u8> = all.iter().filter(|e| keep(e)).flat_map(|e| format.frame(e)).collect();
    Ok(HttpResponse::Ok().content_type(content_type).body(body))
}

/// `since` as the CLI sends it (`secs.nanos`) as a system time.
fn since_time(s: &str) -> Result<std::time::SystemTime> {
    let bad = || Error::BadRequest(format!("invalid since {s:?}: expected seconds since the epoch"));
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        frac.chars().chain(std::iter::repeat('0')).take(9).collect::<String>().parse().map_err(|_| bad())?
    };
    Ok(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

fn line_time(ts: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')).ok()
}

/// How lines are written: `[TIMESTAMP ][DETAILS ]LINE`, each in a frame
/// whose 8-byte header says the stream (1 stdout, 2 stderr) and the length.
struct Format {
    timestamps: bool,
    details: bool,
    service: String,
}

impl Format {
    fn frame(&self, e: &LogEntry) -> Vec<u8> {
        let mut payload = String::new();
        if self.timestamps {
            payload.push_str(&e.timestamp);
            payload.push(' ');
        }
        if self.details {
            let node = e.node_id.as_ref().map(|n| n.to_string()).unwrap_or_default();
            payload.push_str(&format!(
                "com.docker.swarm.node.id={node},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
                self.service, e.task_id
            ));
        }
        payload.push_str(&e.line);
        if !payload.ends_with('\n') {
            payload.push('\n');
        }
        let mut out = Vec::with_capacity(8 + payload.len());
        let stream = match e.stream {
            OutputStream::Stdout => 1,
            OutputStream::Stderr => 2,
        };
        out.extend_from_slice(&[stream, 0, 0, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_shows_its_virtual_ips_and_endpoint_mode() {
        let mut store = Store::default();
        let spec = common::network::NetworkSpec { name: "app".into(), ..Default::default() };
        store.apply(Command::CreateNetwork { id: "netapp".into(), spec, at: 0 }).unwrap();
        let mut spec = common::spec::ServiceSpec {
            name: "web".into(),
            labels: Default::default(),
            mode: common::spec::ServiceMode::Replicated { replicas: 1 },
            task: common::spec::TaskTemplate::new("img"),
            update: Default::default(),
            rollback: Default::default(),
            engine_spec: None,
            endpoint_mode: Default::default(),
        };
        spec.task.networks = vec!["app".parse().unwrap()];
        store.apply(Command::CreateService(Service::new("svcweb".into(), spec.clone(), 0))).unwrap();
        let v = render(&store, &store.services[&"svcweb".into()], ServiceView::default());
        assert_eq!(v["Endpoint"]["Spec"]["Mode"], "vip");
        assert_eq!(v["Endpoint"]["VirtualIPs"], json!([{"NetworkID": "netapp", "Addr": "10.0.128.1/16"}]));
        spec.name = "rr".into();
        spec.endpoint_mode = EndpointMode::Dnsrr;
        store.apply(Command::CreateService(Service::new("svcrr".into(), spec, 0))).unwrap();
        let v = render(&store, &store.services[&"svcrr".into()], ServiceView::default());
        assert_eq!(v["Endpoint"]["Spec"]["Mode"], "dnsrr");
        assert!(v["Endpoint"].get("VirtualIPs").is_none(), "{v}");
    }

    #[test]
    fn a_log_line_is_framed_with_its_details() {
        let e = LogEntry {
            task_id: "t1".into(),
            service_name: "web".into(),
            slot: 1,
            task_name: "web.1".into(),
            node: "node1".into(),
            node_id: Some("n1".to_string().into()),
            timestamp: "2023-11-14T22:13:20.000000001Z".into(),
            line: "hello".into(),
            stream: OutputStream::Stdout,
        };
        let f = Format { timestamps: true, details: true, service: "s1".into() };
        let frame = f.frame(&e);
        let text = "2023-11-14T22:13:20.000000001Z com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,com.docker.swarm.task.id=t1 hello\n";
        assert_eq!(&frame[..4], &[1, 0, 0, 0]);
        assert_eq!(u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize, text.len());
        assert_eq!(&frame[8..], text.as_bytes());
        let err = LogEntry { stream: OutputStream::Stderr, ..e.clone() };
        assert_eq!(&f.frame(&err)[..4], &[2, 0, 0, 0]);
        let t = line_time(&e.timestamp).unwrap();
        assert!(t >= since_time("1700000000").unwrap());
        assert!(t < since_time("1700000000.5").unwrap());
    }
}
