//! `/tasks`: list (with the filters `service ps`, `node ps` and the CLI's
//! progress display use), inspect, logs.

use actix_web::{web, HttpRequest, HttpResponse};
use common::task::Task;
use serde_json::Value;

use super::filters::Filters;
use super::services::{stream_logs, LogsQuery};
use super::{manager, objects, ApiState, Error, IdPath, Result};
use crate::api::Error as ApiError;
use crate::store::Store;

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// The task `key` names: full ID or unique ID prefix.
fn find_task<'a>(store: &'a Store, key: &str) -> Option<&'a Task> {
    if let Some(t) = store.tasks.get(&common::TaskId::from(key)) {
        return Some(t);
    }
    let mut matches = store.tasks.values().filter(|t| t.id.as_str().starts_with(key));
    match (matches.next(), matches.next()) {
        (Some(t), None) if !key.is_empty() => Some(t),
        _ => None,
    }
}

/// Docker's task name: `service.slot.id` (`service.node.id` when global).
fn engine_name(t: &Task) -> String {
    format!("{}.{}", t.name(), t.id)
}

pub(super) async fn list(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let f = Filters::parse(q.filters.as_deref()).map_err(Error::BadRequest)?;
    f.only(&["id", "name", "service", "node", "label", "desired-state", "_up-to-date"]).map_err(Error::BadRequest)?;
    let store = m.store.read();
    // Services and nodes named by ID, name or prefix, as the Engine resolves them.
    let services: Option<Vec<_>> =
        f.values("service").map(|vs| vs.iter().filter_map(|v| store.find_service(v)).map(|s| s.id.clone()).collect());
    let nodes: Option<Vec<_>> =
        f.values("node").map(|vs| vs.iter().filter_map(|v| store.find_node(v)).map(|n| n.id.clone()).collect());
    let up_to_date = f.values("_up-to-date").is_some_and(|vs| vs.iter().any(|v| v == "true"));
    let list: Vec<Value> = store
        .tasks
        .values()
        .filter(|t| {
            services.as_ref().is_none_or(|s| s.contains(&t.service_id))
                && nodes.as_ref().is_none_or(|n| t.node_id.as_ref().is_some_and(|id| n.contains(id)))
                && f.any("id", |x| t.id.as_str().starts_with(x))
                && f.any("name", |x| engine_name(t).starts_with(x))
                && f.any("desired-state", |x| x == t.shown_desired_state().as_str())
                && f.labels("label", &Default::default())
                && (!up_to_date || store.services.get(&t.service_id).is_some_and(|s| s.spec.task == t.spec))
        })
        .map(|t| objects::task(t, store.services.get(&t.service_id)))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn inspect(state: web::Data<ApiState>, path: web::Path<IdPath>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let store = m.store.read();
    let t = find_task(&store, &path.id).ok_or_else(|| ApiError::not_found("task", &path.id))?;
    Ok(HttpResponse::Ok().json(objects::task(t, store.services.get(&t.service_id))))
}

pub(super) async fn logs(
    state: web::Data<ApiState>,
    path: web::Path<IdPath>,
    q: web::Query<LogsQuery>,
    req: HttpRequest,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let (svc, task) = {
        let store = m.store.read();
        let t = find_task(&store, &path.id).ok_or_else(|| ApiError::not_found("task", &path.id))?;
        let svc = store.services.get(&t.service_id).cloned().ok_or_else(|| ApiError::not_found("task", &path.id))?;
        (svc, t.id.clone())
    };
    stream_logs(m, &svc, Some(&task), &q, &req).await
}
