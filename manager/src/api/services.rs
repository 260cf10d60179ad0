//! Services and their tasks.

use actix_web::{web, HttpResponse};
use common::api::{ServiceInfo, ServiceUpdate, TaskInfo};
use common::spec::{ServiceMode, ServiceSpec, SpecError};
use common::task::{Task, TaskState};
use common::time::now_ms;
use common::ServiceId;

use super::{find_service, manager, propose, ApiState, Error, Result};
use crate::dispatcher::GetMeshFailures;
use crate::store::{Command, Service, Store, StoreError};
use crate::Manager;

/// A spec as shoal's API shows it: without the Engine API's document (that
/// API's to show) or the registry login (no API's).
fn redacted(spec: &ServiceSpec) -> ServiceSpec {
    ServiceSpec { engine_spec: None, task: spec.task.clone().redacted(), ..spec.clone() }
}

pub fn service_info(store: &Store, svc: &Service) -> ServiceInfo {
    let job = svc.spec.mode.is_job().then_some(svc.job_iteration);
    // A job counts only the tasks of its current run.
    let tasks = || store.tasks_of(&svc.id).filter(move |t| job.is_none() || t.job_iteration == job);
    let running = tasks()
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .count() as u64;
    let completed =
        if job.is_some() { tasks().filter(|t| t.status.state == TaskState::Complete).count() as u64 } else { 0 };
    let desired = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::ReplicatedJob { total_completions, max_concurrent } => {
            max_concurrent.min(total_completions.saturating_sub(completed))
        }
        ServiceMode::Global | ServiceMode::GlobalJob => tasks().filter(|t| t.is_active()).count() as u64,
    };
    ServiceInfo {
        id: svc.id.clone(),
        version: svc.version,
        // The Engine API's document is that API's to show.
        spec: redacted(&svc.spec),
        created_at: svc.created_at,
        updated_at: svc.updated_at,
        running,
        desired,
        completed,
        job_iteration: job,
        update_status: svc.update_status.clone(),
        previous_spec: svc.previous_spec.as_ref().map(redacted),
        mesh_errors: vec![],
        vips: svc.vips.clone(),
    }
}

pub(super) async fn list_services(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let store = m.store.read();
    let list: Vec<ServiceInfo> = store.services.values().map(|s| service_info(&store, s)).collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn get_service(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
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
pub(super) async fn propose_with_ports(
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

pub(super) async fn create_service(state: web::Data<ApiState>, spec: web::Json<ServiceSpec>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = create(m, spec.into_inner()).await?;
    let info = service_info(&m.store.read(), &svc);
    Ok(HttpResponse::Created().json(info))
}

/// Checks and creates a service, numbering its unnumbered ports: what
/// both APIs' create calls.
pub(super) async fn create(m: &Manager, mut spec: ServiceSpec) -> Result<Service> {
    spec.validate()?;
    super::files::resolve_refs(&m.store.read(), &mut spec)?;
    let now = now_ms();
    let id = ServiceId::random();
    let spec =
        propose_with_ports(m, &id, spec, |spec| Command::CreateService(Service::new(id.clone(), spec, now))).await?;
    Ok(Service::new(id, spec, now))
}

/// Replaces `svc`'s spec with `spec` (if it differs), if the service is
/// still at `expect_version` when given. A port left unnumbered keeps the
/// number it has now, as in Swarm.
pub(super) async fn update(
    m: &Manager,
    svc: &Service,
    mut spec: ServiceSpec,
    expect_version: Option<u64>,
) -> Result<()> {
    spec.validate()?;
    super::files::resolve_refs(&m.store.read(), &mut spec)?;
    for p in spec.task.ports.iter_mut().filter(|p| p.published.is_none()) {
        let same = |q: &&common::mesh::PortConfig| (q.target, q.protocol, q.mode) == (p.target, p.protocol, p.mode);
        p.published = svc.spec.task.ports.iter().find(same).and_then(|q| q.published);
    }
    if spec == svc.spec {
        return match expect_version {
            Some(v) if v != svc.version => Err(StoreError::Conflict(svc.id.clone(), svc.version, v).into()),
            _ => Ok(()),
        };
    }
    let id = svc.id.clone();
    propose_with_ports(m, &svc.id, spec, |spec| Command::UpdateService {
        id: id.clone(),
        spec,
        at: now_ms(),
        expect_version,
    })
    .await?;
    Ok(())
}

/// Restores `svc`'s previous spec.
pub(super) async fn rollback(m: &Manager, svc: &Service) -> Result<()> {
    let reason = "manually requested rollback".to_string();
    propose(m, Command::RollbackService { id: svc.id.clone(), at: now_ms(), reason }).await
}

/// The service `id` as it is now, after a change to it was committed.
fn current_info(m: &Manager, id: &ServiceId, key: &str) -> Result<HttpResponse> {
    let store = m.store.read();
    let svc = store.services.get(id).ok_or_else(|| Error::not_found("service", key))?;
    Ok(HttpResponse::Ok().json(service_info(&store, svc)))
}

pub(super) async fn update_service(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    update: web::Json<ServiceUpdate>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let spec = update.apply(&svc.spec)?;
    if update.rebalance && !matches!(spec.mode, ServiceMode::Replicated { .. }) {
        return Err(SpecError::Invalid(format!(
            "--rebalance applies to replicated services; {} is {}",
            svc.spec.name,
            spec.mode.name()
        ))
        .into());
    }
    let template_changes = spec.task != svc.spec.task;
    self::update(m, &svc, spec, None).await?;
    // A new template rolls every task through the scheduler, which spreads
    // them: a rebalance on top would move nothing more.
    if update.rebalance && !template_changes {
        let moves = {
            let store = m.store.read();
            let svc = store.services.get(&svc.id).ok_or_else(|| Error::not_found("service", &key))?;
            crate::orchestrator::rebalance::moves(&store, &m.live.borrow(), svc)
        };
        if !moves.is_empty() {
            propose(m, Command::RebalanceService { id: svc.id.clone(), tasks: moves, at: now_ms() }).await?;
        }
    }
    current_info(m, &svc.id, &key)
}

pub(super) async fn rollback_service(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    rollback(m, &svc).await?;
    current_info(m, &svc.id, &key)
}

pub(super) async fn remove_service(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
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
            task: Task { spec: t.spec.redacted(), ..t },
        })
        .collect()
}

pub(super) async fn service_tasks(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let store = m.store.read();
    let list = task_infos(&store, store.tasks_of(&svc.id).cloned());
    Ok(HttpResponse::Ok().json(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::ProposeError;
    use common::mesh::Protocol;

    fn port_in_use() -> StoreError {
        StoreError::PortInUse { port: 30000, protocol: Protocol::Tcp, service: "web".into() }
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
