//! Overlay networks: create, list, inspect, remove.

use actix_web::{web, HttpResponse};
use common::network::{Network, NetworkSpec};
use common::time::now_ms;
use common::NetworkId;

use super::{manager, propose, ApiState, Error, Result};
use crate::store::Command;
use crate::Manager;

fn find_network(m: &Manager, key: &str) -> Result<Network> {
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

pub(super) async fn create_network(state: web::Data<ApiState>, spec: web::Json<NetworkSpec>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let spec = spec.into_inner();
    spec.validate()?;
    let id = NetworkId::random();
    propose(m, Command::CreateNetwork { id: id.clone(), spec, at: now_ms() }).await?;
    Ok(HttpResponse::Created().json(find_network(m, id.as_str())?))
}

pub(super) async fn remove_network(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let net = find_network(m, &key)?;
    propose(m, Command::RemoveNetwork(net.id.clone())).await?;
    Ok(HttpResponse::Ok().json(net))
}
