//! `/_ping`, `/version`, `/info`, `/events` and `/swarm`.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use common::api::Event;
use common::time::now_ms;
use futures::StreamExt;
use serde_json::{json, Value};

use super::filters::Filters;
use super::objects::{self, go_arch, Resources};
use super::{manager, ApiState, Error, Result, MIN_VERSION, VERSION};

/// `Swarm: active/manager` (or `/worker`): the CLI learns from it whether
/// this node can take swarm commands.
pub(super) async fn ping(state: web::Data<ApiState>, req: HttpRequest) -> HttpResponse {
    let role = if state.manager.is_some() { "active/manager" } else { "active/worker" };
    let mut res = HttpResponse::Ok();
    res.insert_header(("Swarm", role))
        .insert_header(("Docker-Experimental", "false"))
        .insert_header((header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"))
        .insert_header((header::PRAGMA, "no-cache"))
        .content_type("text/plain; charset=utf-8");
    if req.method() == actix_web::http::Method::HEAD {
        return res.finish();
    }
    res.body("OK")
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub(super) async fn version() -> HttpResponse {
    let v = env!("CARGO_PKG_VERSION");
    HttpResponse::Ok().json(json!({
        "Platform": {"Name": "shoal"},
        "Components": [{"Name": "Engine", "Version": v, "Details": {
            "ApiVersion": VERSION, "MinAPIVersion": MIN_VERSION, "Os": "linux", "Arch": go_arch(),
            "KernelVersion": kernel_version(), "GitCommit": "", "GoVersion": "none (Rust)",
        }}],
        "Version": v,
        "ApiVersion": VERSION,
        "MinAPIVersion": MIN_VERSION,
        "GitCommit": "",
        "GoVersion": "none (Rust)",
        "Os": "linux",
        "Arch": go_arch(),
        "KernelVersion": kernel_version(),
        "BuildTime": "",
    }))
}

pub(super) async fn info(state: web::Data<ApiState>) -> HttpResponse {
    let res = Resources::of_this_machine();
    let swarm = match &state.manager {
        Some(m) => {
            let nodes = super::super::node_infos(&state, m);
            let addr = nodes
                .iter()
                .find(|n| n.node.id == state.node_id)
                .map(|n| n.node.addr.ip().to_string())
                .unwrap_or_default();
            let cluster = m.store.read().cluster.clone();
            objects::swarm_info(state.node_id.as_str(), &addr, &nodes, Some(&cluster))
        }
        None => objects::swarm_info(state.node_id.as_str(), "", &[], None),
    };
    HttpResponse::Ok().json(json!({
        "ID": state.node_id,
        "Name": state.hostname,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "OperatingSystem": "shoal",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "KernelVersion": kernel_version(),
        "NCPU": res.ncpu,
        "MemTotal": res.memory_bytes,
        "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0, "ContainersStopped": 0, "Images": 0,
        "Driver": "", "DockerRootDir": "", "Labels": [], "ExperimentalBuild": false,
        "Swarm": swarm,
    }))
}

pub(super) async fn swarm(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let cluster = m.store.read().cluster.clone();
    Ok(HttpResponse::Ok().json(objects::swarm(&cluster)))
}

/// `docker swarm init/join/leave/update/unlock`: shoal's own commands do these.
pub(super) async fn swarm_command(req: HttpRequest) -> Result<HttpResponse> {
    let verb = req.path().rsplit('/').next().unwrap_or_default().to_string();
    let hint = match verb.as_str() {
        "init" => "This node is already part of a shoal cluster. A new cluster starts with `shoal daemon --init`",
        "join" => {
            "This node is already part of a shoal cluster. Another machine joins with `shoal daemon --join MANAGER_IP:4242 --token TOKEN` (`shoal join-token worker` prints it)"
        }
        "leave" => "A shoal node leaves by stopping its `shoal daemon` and `shoal node rm NODE` on a manager",
        "update" => "shoal's cluster settings are not changed through `docker swarm update`; `shoal join-token --rotate worker|manager` rotates a token",
        _ => "shoal does not lock its managers; there is no unlock key",
    };
    Err(Error::SwarmCommand(hint.to_string()))
}

#[derive(serde::Deserialize)]
pub(super) struct EventsQuery {
    since: Option<String>,
    until: Option<String>,
    filters: Option<String>,
}

/// `1700000000` or `1700000000.123456789` (what the CLI sends) as ms.
fn unix_ms(s: &str) -> Result<u64> {
    let bad = || Error::BadRequest(format!("invalid timestamp {s:?}: expected seconds since the epoch"));
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
        digits.parse::<u64>().map_err(|_| bad())?
    };
    Ok(secs * 1000 + ms)
}

/// shoal's event as Docker's (`None` for what Docker has no event for:
/// task state changes).
fn engine_event(e: &Event) -> Option<Value> {
    let (kind, action, mut attrs) = match (e.kind.as_str(), e.action.as_str()) {
        ("service", "rollback") => ("service", "update", json!({"name": e.name})),
        ("service", a) => ("service", a, json!({"name": e.name})),
        ("node", "up") => ("node", "update", json!({"name": e.name, "state.new": "ready"})),
        ("node", "down") => ("node", "update", json!({"name": e.name, "state.new": "down"})),
        ("node", a) => ("node", a, json!({"name": e.name})),
        ("secret", a) => ("secret", a, json!({"name": e.name})),
        ("config", a) => ("config", a, json!({"name": e.name})),
        // Docker names the driver; shoal's networks are all overlays.
        ("network", a) => ("network", a, json!({"name": e.name, "type": "overlay"})),
        _ => return None,
    };
    if !e.message.is_empty() {
        attrs["message"] = json!(e.message);
    }
    Some(json!({
        "Type": kind,
        "Action": action,
        "Actor": {"ID": e.id, "Attributes": attrs},
        "scope": "swarm",
        "time": e.time / 1000,
        "timeNano": e.time.saturating_mul(1_000_000),
    }))
}

fn wanted(f: &Filters, v: &Value) -> bool {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let id = v["Actor"]["ID"].as_str().unwrap_or_default();
    let name = v["Actor"]["Attributes"]["name"].as_str().unwrap_or_default();
    let by = |kind: &str| f.any(kind, |x| s("Type") != kind || x == id || x == name);
    f.any("type", |x| x == s("Type"))
        && f.any("event", |x| x == s("Action"))
        && f.any("scope", |x| x == "swarm")
        && by("service")
        && by("node")
        && by("secret")
        && by("config")
        && by("network")
}

/// The kept events from `since`, then live ones (until `until`, if given).
pub(super) async fn events(state: web::Data<ApiState>, q: web::Query<EventsQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let f = Filters::parse(q.filters.as_deref()).map_err(Error::BadRequest)?;
    f.only(&[
        "type",
        "event",
        "scope",
        "service",
        "node",
        "label",
        "container",
        "image",
        "network",
        "volume",
        "daemon",
        "plugin",
        "config",
        "secret",
    ])
    .map_err(Error::BadRequest)?;
    let since = q.since.as_deref().filter(|s| !s.is_empty()).map(unix_ms).transpose()?;
    let until = q.until.as_deref().filter(|s| !s.is_empty()).map(unix_ms).transpose()?;
    let (past, mut rx) = m.events.since(since);
    let last_seq = past.last().map(|e| e.seq).unwrap_or(0);
    let line = |v: &Value| {
        let mut b = serde_json::to_vec(v).unwrap_or_default();
        b.push(b'\n');
        web::Bytes::from(b)
    };
    let f2 = f.clone();
    let in_time = move |e: &Event| until.is_none_or(|u| e.time <= u);
    let past: Vec<web::Bytes> = past
        .iter()
        .filter(|e| in_time(e))
        .filter_map(engine_event)
        .filter(|v| wanted(&f, v))
        .map(|v| line(&v))
        .collect();
    let live = super::super::async_stream(move |tx| async move {
        let deadline = until.map(|u| Duration::from_millis(u.saturating_sub(now_ms())));
        let forward = async {
            loop {
                match rx.recv().await {
                    Ok(e) if e.seq > last_seq && in_time(&e) => {
                        if let Some(v) = engine_event(&e).filter(|v| wanted(&f2, v)) {
                            if tx.send(line(&v)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "an Engine API events reader fell behind");
                    }
                    Err(_) => return,
                }
            }
        };
        match deadline {
            Some(d) => {
                let _ = tokio::time::timeout(d, forward).await;
            }
            None => forward.await,
        }
    });
    let stream = futures::stream::iter(past).chain(live).map(Ok::<_, actix_web::Error>);
    Ok(HttpResponse::Ok().content_type("application/json").streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, action: &str) -> Event {
        Event {
            seq: 1,
            time: 1_700_000_000_500,
            kind: kind.into(),
            action: action.into(),
            id: "abc".into(),
            name: "web".into(),
            node: None,
            message: String::new(),
        }
    }

    #[test]
    fn events_take_dockers_shape_and_filters() {
        let v = engine_event(&event("service", "create")).unwrap();
        assert_eq!(v["Type"], "service");
        assert_eq!(v["Actor"]["Attributes"]["name"], "web");
        assert_eq!(v["time"], 1_700_000_000);
        assert_eq!(engine_event(&event("node", "down")).unwrap()["Actor"]["Attributes"]["state.new"], "down");
        assert!(engine_event(&event("task", "running")).is_none());
        let net = engine_event(&event("network", "create")).unwrap();
        assert_eq!((&net["Type"], &net["Actor"]["Attributes"]["type"]), (&json!("network"), &json!("overlay")));
        assert!(wanted(&Filters::parse(Some(r#"{"type":["network"]}"#)).unwrap(), &net));
        assert!(!wanted(&Filters::parse(Some(r#"{"network":["other"]}"#)).unwrap(), &net));
        let only_nodes = Filters::parse(Some(r#"{"type":{"node":true}}"#)).unwrap();
        assert!(!wanted(&only_nodes, &v));
        let by_name = Filters::parse(Some(r#"{"service":["web"]}"#)).unwrap();
        assert!(wanted(&by_name, &v));
        assert_eq!(unix_ms("1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(unix_ms("1700000000").unwrap(), 1_700_000_000_000);
        assert!(unix_ms("yesterday").is_err());
    }
}
