//! The routing-mesh table every node programs, computed from the store: for
//! each ingress-published port, the running tasks' (node address, host
//! port). A task leaves the table as soon as it is no longer meant to run,
//! before its node stops it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::mesh::{MeshEntry, MeshTable, PublishMode};
use common::task::TaskState;

use crate::store::Store;

pub fn table(store: &Store) -> MeshTable {
    let mut entries = Vec::new();
    for svc in store.services.values() {
        for p in svc.spec.task.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
            let Some(published) = p.published else { continue };
            let mut direct = BTreeMap::new();
            let mut backends: Vec<SocketAddr> = store
                .tasks_of(&svc.id)
                .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
                .filter_map(|t| {
                    let node = store.nodes.get(t.node_id.as_ref()?)?;
                    let hp = t.status.ports.iter().find(|h| h.target == p.target && h.protocol == p.protocol)?;
                    let backend = SocketAddr::new(node.addr.ip(), hp.host_port);
                    if let Some(ip) = t.status.container_addr {
                        direct.insert(backend, SocketAddr::new(ip, p.target));
                    }
                    Some(backend)
                })
                .collect();
            backends.sort();
            entries.push(MeshEntry {
                service_id: svc.id.clone(),
                service_name: svc.spec.name.clone(),
                protocol: p.protocol,
                published,
                backends,
                direct,
                preserve_source: p.preserve_source,
                proxy_protocol: p.proxy_protocol,
            });
        }
    }
    entries.sort_by_key(|e| (e.protocol, e.published));
    let mut nodes: Vec<std::net::IpAddr> = store.nodes.values().map(|n| n.addr.ip()).collect();
    nodes.sort();
    nodes.dedup();
    MeshTable { entries, networks: crate::network::table(store), nodes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Service};
    use common::mesh::HostPort;
    use common::node::{Node, Role};
    use common::spec::{ServiceMode, ServiceSpec, TaskTemplate};
    use common::task::{Task, TaskStatus};
    use common::{ServiceId, TaskId};

    fn node(id: &str, ip: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: id.into(),
            role: Role::Worker,
            availability: Default::default(),
            labels: Default::default(),
            addr: format!("{ip}:4242").parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn task(id: &str, node: &str, desired: TaskState, state: TaskState, host_port: u16) -> Task {
        let mut status = TaskStatus::new(state, 0, "");
        status.ports = vec![HostPort { protocol: Default::default(), target: 80, host_port }];
        Task {
            id: TaskId::from(id),
            service_id: ServiceId::from("web"),
            service_name: "web".into(),
            slot: 1,
            node_id: Some(node.into()),
            spec: TaskTemplate::new("img"),
            desired_state: desired,
            status,
            created_at: 0,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        }
    }

    #[test]
    fn running_tasks_are_backends_and_stopping_ones_are_not() {
        let mut s = Store::default();
        s.apply(Command::AddNode(node("n1", "127.0.0.11"))).unwrap();
        s.apply(Command::AddNode(node("n2", "127.0.0.12"))).unwrap();
        let mut t = TaskTemplate::new("img");
        t.ports = vec!["8080:80".parse().unwrap(), "published=9000,target=80,mode=host".parse().unwrap()];
        let spec = ServiceSpec {
            name: "web".into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas: 3 },
            task: t,
            update: Default::default(),
            rollback: Default::default(),
            engine_spec: None,
            endpoint_mode: Default::default(),
        };
        s.apply(Command::CreateService(Service::new("web".into(), spec, 0))).unwrap();
        let mut b = task("b", "n1", TaskState::Running, TaskState::Running, 32000);
        b.status.container_addr = Some("172.17.0.5".parse().unwrap());
        s.apply(Command::CreateTasks(vec![
            task("a", "n2", TaskState::Running, TaskState::Running, 32001),
            b,
            task("c", "n1", TaskState::Shutdown, TaskState::Running, 32002),
            task("d", "n2", TaskState::Running, TaskState::Starting, 32003),
        ]))
        .unwrap();
        let t = table(&s);
        assert_eq!(t.entries.len(), 1, "host-mode ports are not in the mesh");
        let e = &t.entries[0];
        assert_eq!(e.published, 8080);
        let b: Vec<String> = e.backends.iter().map(|a| a.to_string()).collect();
        assert_eq!(b, ["127.0.0.11:32000", "127.0.0.12:32001"]);
        // The task whose container has one network can be reached directly
        // by its own node (at the target port, not the host port).
        let direct: Vec<String> = e.direct.iter().map(|(b, c)| format!("{b}->{c}")).collect();
        assert_eq!(direct, ["127.0.0.11:32000->172.17.0.5:80"]);
    }
}
