//! `/nodes`: list, inspect, update (availability, labels, role), remove.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use common::api::NodeInfo;
use common::node::{Availability, Role};
use serde_json::Value;

use super::filters::Filters;
use super::objects::{self, Resources};
use super::{body, manager, truthy, ApiState, Error, IdPath, Result};
use crate::api::{find_node_id, node_info, node_infos, nodes as shoal};

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// A node as Docker shows it: its resources as it reported them (until it
/// has, this machine's for this node and nothing for the others).
fn render(state: &ApiState, n: &NodeInfo) -> Value {
    let res = if n.node.id == state.node_id { Resources::of_this_machine() } else { Resources::default() };
    objects::node(n, &res)
}

pub(super) async fn list(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let f = Filters::parse(q.filters.as_deref()).map_err(Error::BadRequest)?;
    f.only(&["id", "name", "role", "membership", "label", "node.label"]).map_err(Error::BadRequest)?;
    let list: Vec<Value> = node_infos(&state, m)
        .iter()
        .filter(|n| {
            f.any("id", |x| n.node.id.as_str().starts_with(x))
                && f.any("name", |x| n.node.hostname.starts_with(x))
                && f.any("role", |x| x == n.node.role.to_string())
                && f.any("membership", |x| x == "accepted")
                && f.labels("node.label", &n.node.labels)
        })
        .map(|n| render(&state, n))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn inspect(state: web::Data<ApiState>, path: web::Path<IdPath>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let id = find_node_id(m, &path.id)?;
    let info = node_info(&state, m, &id, &path.id)?;
    Ok(HttpResponse::Ok().json(render(&state, &info)))
}

#[derive(serde::Deserialize)]
pub(super) struct RemoveQuery {
    force: Option<String>,
}

pub(super) async fn remove(
    state: web::Data<ApiState>,
    path: web::Path<IdPath>,
    q: web::Query<RemoveQuery>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    shoal::remove(&state, m, &path.id, truthy(&q.force)).await?;
    Ok(HttpResponse::Ok().finish())
}

#[derive(serde::Deserialize)]
pub(super) struct UpdateQuery {
    version: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NodeSpec {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    availability: Option<String>,
}

/// The whole NodeSpec replaces the node's: labels are set to exactly
/// those sent, a new role promotes or demotes, availability as given.
pub(super) async fn update(
    state: web::Data<ApiState>,
    path: web::Path<IdPath>,
    q: web::Query<UpdateQuery>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let doc = body(payload).await?;
    let spec: NodeSpec =
        serde_json::from_value(doc).map_err(|e| Error::BadRequest(format!("invalid NodeSpec: {e}")))?;
    let id = find_node_id(m, &path.id)?;
    let current = node_info(&state, m, &id, &path.id)?;
    if let Some(v) = q.version.as_deref().filter(|v| !v.is_empty()) {
        let v: u64 = v.parse().map_err(|_| Error::BadRequest(format!("invalid node version '{v}'")))?;
        let at = current.node.updated_at.max(current.node.created_at);
        if v != at {
            return Err(Error::Api(crate::api::Error::NodeOutOfSequence(current.node.hostname, at, v)));
        }
    }
    let availability = match spec.availability.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse::<Availability>().map_err(Error::BadRequest)?),
    };
    let role = match spec.role.as_deref() {
        None | Some("") => None,
        Some("manager") => Some(Role::Manager),
        Some("worker") => Some(Role::Worker),
        Some(other) => return Err(Error::Api(crate::api::Error::InvalidRole(other.to_string()))),
    };
    let (add, rm) = match spec.labels {
        Some(new) => {
            let rm: Vec<String> = current.node.labels.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
            let add: BTreeMap<String, String> =
                new.into_iter().filter(|(k, v)| current.node.labels.get(k) != Some(v)).collect();
            (add, rm)
        }
        None => (BTreeMap::new(), current.node.labels.keys().cloned().collect()),
    };
    let availability = availability.filter(|a| *a != current.node.availability);
    shoal::update(m, &id, availability, add, rm).await?;
    match role {
        Some(Role::Manager) if current.node.role != Role::Manager => {
            shoal::promote(&state, m, id.as_str()).await?;
        }
        Some(Role::Worker) if current.node.role != Role::Worker => {
            shoal::demote(&state, m, id.as_str()).await?;
        }
        _ => {}
    }
    Ok(HttpResponse::Ok().finish())
}
