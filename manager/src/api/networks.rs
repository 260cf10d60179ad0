//! Overlay networks: create, list, inspect, remove.

use actix_web::{web, HttpResponse};
use common::network::{Network, NetworkSpec};
use common::time::now_ms;
use common::NetworkId;

use super::{manager, propose, ApiState, Error, Result};
use crate::store::Command;
use crate::Manager;

pub(crate) fn find_network(m: &Manager, key: &str) -> Result<Network> {
    m.store.read().find_network(key).cloned().ok_or_else(|| Error::not_found("network", key))
}

pub(super) async fn list_networks(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let list: Vec<Network> = m.store.read().networks.values().cloned().collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn get_network(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Ok().json(find_network(m, &key)?))
}

/// Checks and creates a network: what both APIs' create calls.
pub(crate) async fn create(m: &Manager, spec: NetworkSpec) -> Result<Network> {
    spec.validate()?;
    let id = NetworkId::random();
    propose(m, Command::CreateNetwork { id: id.clone(), spec, at: now_ms() }).await?;
    find_network(m, id.as_str())
}

/// Removes a network (refused while a service uses it): what both APIs' remove calls.
pub(crate) async fn remove(m: &Manager, key: &str) -> Result<Network> {
    let net = find_network(m, key)?;
    propose(m, Command::RemoveNetwork(net.id.clone())).await?;
    Ok(net)
}

pub(super) async fn create_network(state: web::Data<ApiState>, spec: web::Json<NetworkSpec>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Created().json(create(m, spec.into_inner()).await?))
}

pub(super) async fn remove_network(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Ok().json(remove(m, &key).await?))
}
