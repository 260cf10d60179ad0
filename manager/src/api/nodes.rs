//! Nodes, this node's `/v1/info` and the join tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use common::api::{Info, JoinTokens, NodeInfo, NodeUpdate};
use common::node::{Availability, NodeStatus, Role};
use common::time::now_ms;
use common::NodeId;

use super::{find_node_id, manager, node_info, node_infos, propose, ApiState, Error, Result};
use crate::roles;
use crate::store::Command;
use crate::Manager;

pub(super) async fn info(state: web::Data<ApiState>) -> Result<HttpResponse> {
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

pub(super) async fn list_nodes(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Ok().json(node_infos(&state, m)))
}

pub(super) async fn get_node(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let id = find_node_id(m, &key)?;
    let info = node_info(&state, m, &id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

pub(super) async fn join_tokens(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let c = m.store.read().cluster.clone();
    Ok(HttpResponse::Ok().json(JoinTokens { worker: c.worker_token, manager: c.manager_token }))
}

#[derive(serde::Deserialize)]
pub(super) struct RotateQuery {
    role: String,
}

/// A new secret for one role's token; the CA fingerprint stays.
pub(super) async fn rotate_join_token(state: web::Data<ApiState>, q: web::Query<RotateQuery>) -> Result<HttpResponse> {
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

fn new_gossip_key() -> [u8; common::gossip_key::KEY_LEN] {
    common::gossip_key::GossipKey::generate(0).key
}

/// `POST /v1/gossip-key/rotate`: a new gossip key, used by every node a few
/// seconds from now; the old one is accepted a little longer.
pub(super) async fn rotate_gossip_key(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    propose(m, Command::RotateGossipKey { key: new_gossip_key(), at: now_ms() }).await?;
    let ring = m.store.read().cluster.gossip_keys.clone();
    let id = ring.current.as_ref().map_or(0, |k| k.id);
    Ok(HttpResponse::Ok().json(common::api::GossipKeyRotated { key_id: id, switch_at: ring.switch_at }))
}

pub(super) async fn update_node(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    u: web::Json<NodeUpdate>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let id = find_node_id(m, &key)?;
    update(m, &id, u.availability, u.label_add.clone(), u.label_rm.clone()).await?;
    let info = node_info(&state, m, &id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

/// Sets a node's availability and changes its labels, in one entry: what
/// both APIs' node updates call.
pub(super) async fn update(
    m: &Manager,
    id: &NodeId,
    availability: Option<Availability>,
    add: BTreeMap<String, String>,
    rm: Vec<String>,
) -> Result<()> {
    let at = now_ms();
    let mut cmds = Vec::new();
    if let Some(availability) = availability {
        cmds.push(Command::SetNodeAvailability { id: id.clone(), availability, at });
    }
    if !add.is_empty() || !rm.is_empty() {
        cmds.push(Command::UpdateNodeLabels { id: id.clone(), add, rm, at });
    }
    if !cmds.is_empty() {
        propose(m, Command::Batch(cmds)).await?;
    }
    Ok(())
}

/// How long `node promote`/`demote` wait for raft's membership to follow.
const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(10);

pub(super) async fn promote_node(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let id = promote(&state, m, &key).await?;
    let info = node_info(&state, m, &id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

/// Makes the node `key` names a manager and waits for raft to add it.
pub(super) async fn promote(state: &ApiState, m: &Manager, key: &str) -> Result<NodeId> {
    let node = roles::check_promote(&m.store.read(), &state.live.borrow(), key)?;
    propose(m, Command::SetNodeRole { id: node.id.clone(), role: Role::Manager, at: now_ms() }).await?;
    let mut status = m.status.clone();
    let joined = tokio::time::timeout(ROLE_CHANGE_WAIT, status.wait_for(|s| s.voters.contains(&node.raft_id))).await;
    if !matches!(joined, Ok(Ok(_))) {
        return Err(Error::PromotePending(node.hostname));
    }
    Ok(node.id)
}

pub(super) async fn demote_node(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let id = demote(&state, m, &key).await?;
    let info = node_info(&state, m, &id, &key)?;
    Ok(HttpResponse::Ok().json(info))
}

/// Makes the manager `key` names a worker and waits for raft to remove it.
pub(super) async fn demote(state: &ApiState, m: &Manager, key: &str) -> Result<NodeId> {
    let voters = m.status.borrow().voters.clone();
    let node = roles::check_demote(&m.store.read(), &voters, &state.live.borrow(), key)?;
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
    Ok(node.id)
}

#[derive(serde::Deserialize)]
pub(super) struct RemoveNodeQuery {
    #[serde(default)]
    force: bool,
}

pub(super) async fn remove_node(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    q: web::Query<RemoveNodeQuery>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let info = remove(&state, m, &key, q.force).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Removes the node `key` names: never this node or a manager, and a node
/// still up only with `force`.
pub(super) async fn remove(state: &ApiState, m: &Manager, key: &str, force: bool) -> Result<NodeInfo> {
    let info = {
        let id = find_node_id(m, key)?;
        node_info(state, m, &id, key)?
    };
    if info.node.id == state.node_id {
        return Err(Error::RemoveSelf);
    }
    if info.node.role == Role::Manager {
        return Err(Error::RemoveManager(info.node.hostname));
    }
    if info.status == NodeStatus::Ready && !force {
        return Err(Error::RemoveReady(info.node.hostname));
    }
    // A new gossip key goes with the removal: the node is not sent it, so
    // once the old key retires its gossip is dropped everywhere.
    let rotate = Command::RotateGossipKey { key: new_gossip_key(), at: now_ms() };
    propose(m, Command::Batch(vec![Command::RemoveNode(info.node.id.clone()), rotate])).await?;
    Ok(info)
}
