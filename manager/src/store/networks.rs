//! The apply rules for networks, and for what services and tasks hold of
//! them: every address is given out here, as a command applies, by the pure
//! allocator in `crate::network`, so every manager gives out the same one.
//!
//! - `CreateNetwork`: the name is free (a DNS label, checked by the API),
//!   the spec's subnet overlaps no other network's (else the range is the
//!   lowest free one of the pool); the lowest free VXLAN id.
//! - `RemoveNetwork`: refused while a service's spec names the network.
//! - A service written (create, update, rollback) names only networks that
//!   exist (by name, id or unique id prefix; the spec keeps the name), and
//!   gets a VIP on each (kept from before for networks it stays on), none
//!   in dnsrr mode.
//! - A task assigned to a node gets an address on each of its networks from
//!   the node's block of it (the block given out on the first such task).
//!   If none is left, the task stays PENDING with the reason.
//! - A removed node's blocks are freed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::network::{EndpointMode, Network, NetworkSpec, TaskAddress, Vip, HOST_NETWORK};
use common::spec::ServiceSpec;
use common::time::Millis;
use common::{NetworkId, NodeId, ServiceId, TaskId};

use super::{Store, StoreError};
use crate::network::{allocate_addr, allocate_block, allocate_subnet, allocate_vip, allocate_vni};

impl Store {
    /// Finds a network by full id, name, or unique id prefix.
    pub fn find_network(&self, key: &str) -> Option<&Network> {
        if let Some(n) = self.networks.get(&NetworkId::from(key)) {
            return Some(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.spec.name == key) {
            return Some(n);
        }
        let mut matches = self.networks.values().filter(|n| n.id.as_str().starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(n), None) if !key.is_empty() => Some(n),
            _ => None,
        }
    }

    pub(super) fn create_network(&mut self, id: NetworkId, spec: NetworkSpec, at: Millis) -> Result<(), StoreError> {
        if let Some(other) = self.networks.values().find(|n| n.spec.name == spec.name) {
            return Err(StoreError::NetworkNameInUse(spec.name.clone(), other.id.clone()));
        }
        let taken = self.networks.values().map(|n| (n.spec.name.as_str(), n.subnet));
        let subnet = allocate_subnet(taken, spec.subnet, &self.cluster.addr_pool)?;
        let vni = allocate_vni(&self.networks.values().map(|n| n.vni).collect())?;
        let net = Network { id: id.clone(), spec, subnet, vni, nodes: Default::default(), created_at: at };
        self.networks.insert(id, net);
        Ok(())
    }

    pub(super) fn remove_network(&mut self, id: &NetworkId) -> Result<(), StoreError> {
        let net = self.networks.get(id).ok_or_else(|| StoreError::NoSuchNetwork(id.to_string()))?;
        let user = self.services.values().find(|s| s.spec.task.networks.iter().any(|a| a.network == net.spec.name));
        if let Some(svc) = user {
            return Err(StoreError::NetworkInUse { network: net.spec.name.clone(), service: svc.spec.name.clone() });
        }
        self.networks.remove(id);
        Ok(())
    }

    /// Resolves `spec`'s networks to their names (an unknown one is an
    /// error) and returns the service's VIPs on them: the ones in `current`
    /// where it stays, new ones where it joins.
    pub(super) fn attach_networks(
        &self,
        id: &ServiceId,
        spec: &mut ServiceSpec,
        current: &[Vip],
    ) -> Result<Vec<Vip>, StoreError> {
        let mut vips = Vec::new();
        for att in spec.task.networks.iter_mut().filter(|a| a.network != HOST_NETWORK) {
            let net = self.find_network(&att.network).ok_or_else(|| StoreError::NoSuchNetwork(att.network.clone()))?;
            att.network = net.spec.name.clone();
            if spec.endpoint_mode == EndpointMode::Dnsrr {
                continue;
            }
            if let Some(v) = current.iter().find(|v| v.network == net.id) {
                vips.push(v.clone());
                continue;
            }
            let used: BTreeSet<Ipv4Addr> = self
                .services
                .values()
                .filter(|s| &s.id != id)
                .flat_map(|s| s.vips.iter())
                .filter(|v| v.network == net.id)
                .map(|v| v.addr)
                .collect();
            vips.push(Vip { network: net.id.clone(), addr: allocate_vip(net, &used)? });
        }
        Ok(vips)
    }

    /// The addresses task `id` gets on `node`, giving the node a block of a
    /// network on its first task there. Changes nothing when it fails.
    pub(super) fn assign_addresses(&mut self, id: &TaskId, node: &NodeId) -> Result<Vec<TaskAddress>, StoreError> {
        let Some(task) = self.tasks.get(id) else { return Ok(vec![]) };
        let wanted: Vec<String> =
            task.spec.networks.iter().filter(|a| a.network != HOST_NETWORK).map(|a| a.network.clone()).collect();
        let mut out = Vec::new();
        let mut new_blocks = Vec::new();
        for name in wanted {
            let net = self.find_network(&name).ok_or_else(|| StoreError::NoSuchNetwork(name.clone()))?;
            let block = match net.nodes.get(node) {
                Some(b) => *b,
                None => {
                    let b = allocate_block(net)?;
                    new_blocks.push((net.id.clone(), b));
                    b
                }
            };
            let used: BTreeSet<Ipv4Addr> = self
                .tasks_on(node)
                .filter(|t| &t.id != id && !t.status.state.is_terminal())
                .flat_map(|t| t.addresses.iter())
                .filter(|a| a.network == net.id)
                .map(|a| a.addr)
                .collect();
            let addr = allocate_addr(&net.spec.name, block, &used)?;
            out.push(TaskAddress {
                network: net.id.clone(),
                name: net.spec.name.clone(),
                addr,
                range: net.task_range(),
                block,
                vni: net.vni,
                encrypted: net.spec.encrypted(),
                routing: net.spec.routing().unwrap_or_default(),
            });
        }
        for (net, block) in new_blocks {
            if let Some(n) = self.networks.get_mut(&net) {
                n.nodes.insert(node.clone(), block);
            }
        }
        Ok(out)
    }

    pub(super) fn release_node_blocks(&mut self, node: &NodeId) {
        for net in self.networks.values_mut() {
            net.nodes.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use common::network::NetworkAttachment;
    use common::node::{Node, Role};
    use common::spec::TaskTemplate;
    use common::task::{Task, TaskStatus, TaskStatusUpdate};

    use super::*;
    use crate::store::{Assignment, Command, Service};

    fn net(s: &mut Store, name: &str, subnet: Option<&str>) -> Result<(), StoreError> {
        let spec = NetworkSpec { name: name.into(), subnet: subnet.map(|s| s.parse().unwrap()), ..Default::default() };
        s.apply(Command::CreateNetwork { id: format!("id-{name}").as_str().into(), spec, at: 0 })
    }

    fn on(networks: &[&str], name: &str) -> Service {
        let mut t = TaskTemplate::new("img");
        t.networks = networks.iter().map(|n| NetworkAttachment { network: n.to_string(), aliases: vec![] }).collect();
        Service::new(format!("svc-{name}").as_str().into(), ServiceSpec::new(name, 1, t), 0)
    }

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: id.into(),
            role: Role::Worker,
            availability: Default::default(),
            labels: Default::default(),
            addr: "10.231.0.11:4242".parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn task(s: &Store, id: &str, svc: &str) -> Task {
        let svc = s.service_by_name(svc).unwrap();
        Task {
            id: id.into(),
            service_id: svc.id.clone(),
            service_name: svc.spec.name.clone(),
            slot: 1,
            node_id: None,
            spec: svc.spec.task.clone(),
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::New, 0, "created"),
            created_at: 0,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        }
    }

    use common::task::TaskState;

    #[test]
    fn networks_get_ranges_and_overlaps_and_names_are_refused() {
        let mut s = Store::default();
        net(&mut s, "app", None).unwrap();
        net(&mut s, "db", Some("10.0.5.0/24")).unwrap_err();
        let e = net(&mut s, "db", Some("10.0.5.0/24")).unwrap_err();
        assert_eq!(e.to_string(), "subnet 10.0.5.0/24 overlaps network app's subnet 10.0.0.0/16");
        let e = net(&mut s, "app", Some("192.168.0.0/24")).unwrap_err();
        assert!(e.to_string().starts_with("network name \"app\" is already in use"), "{e}");
        net(&mut s, "db", Some("192.168.0.0/24")).unwrap();
        let vnis: Vec<u32> = s.networks.values().map(|n| n.vni).collect();
        assert_eq!(vnis, [4096, 4097]);
        assert_eq!(s.networks.len(), 2);
        let back = Store::from_snapshot(&s.to_snapshot()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn services_name_known_networks_get_vips_and_keep_networks_in_use() {
        let mut s = Store::default();
        net(&mut s, "app", None).unwrap();
        let e = s.apply(Command::CreateService(on(&["nope"], "web"))).unwrap_err();
        assert_eq!(e.to_string(), "network nope not found");
        assert!(s.services.is_empty(), "nothing written");
        // By id prefix: the spec keeps the name.
        s.apply(Command::CreateService(on(&["id-a"], "web"))).unwrap();
        s.apply(Command::CreateService(on(&["app"], "api"))).unwrap();
        let web = s.service_by_name("web").unwrap().clone();
        assert_eq!(web.spec.task.networks[0].network, "app");
        assert_eq!(web.vips[0].addr.to_string(), "10.0.128.1");
        assert_eq!(s.service_by_name("api").unwrap().vips[0].addr.to_string(), "10.0.128.2");
        let e = s.apply(Command::RemoveNetwork("id-app".into())).unwrap_err();
        assert_eq!(e.to_string(), "network app is in use by service api");
        // An update keeps the VIP; dnsrr has none.
        let mut spec = web.spec.clone();
        spec.labels.insert("k".into(), "v".into());
        let id = web.id.clone();
        s.apply(Command::UpdateService { id: id.clone(), spec: spec.clone(), at: 1, expect_version: None }).unwrap();
        assert_eq!(s.services[&id].vips[0].addr.to_string(), "10.0.128.1");
        spec.endpoint_mode = EndpointMode::Dnsrr;
        s.apply(Command::UpdateService { id: id.clone(), spec, at: 2, expect_version: None }).unwrap();
        assert!(s.services[&id].vips.is_empty());
        for svc in ["svc-web", "svc-api"] {
            s.apply(Command::RemoveService(svc.into())).unwrap();
        }
        s.apply(Command::RemoveNetwork("id-app".into())).unwrap();
        assert!(s.networks.is_empty());
    }

    #[test]
    fn assigned_tasks_get_addresses_from_their_nodes_block() {
        let mut s = Store::default();
        net(&mut s, "app", None).unwrap();
        s.apply(Command::AddNode(node("n1"))).unwrap();
        s.apply(Command::AddNode(node("n2"))).unwrap();
        s.apply(Command::CreateService(on(&["app"], "web"))).unwrap();
        let tasks = vec![task(&s, "t1", "web"), task(&s, "t2", "web"), task(&s, "t3", "web")];
        s.apply(Command::CreateTasks(tasks)).unwrap();
        let assign = |t: &str, n: &str| Assignment { task: t.into(), node: n.into(), at: 1 };
        s.apply(Command::AssignTasks(vec![assign("t1", "n1"), assign("t2", "n2"), assign("t3", "n1")])).unwrap();
        let addr = |s: &Store, t: &str| s.tasks[&TaskId::from(t)].addresses[0].addr.to_string();
        assert_eq!([addr(&s, "t1"), addr(&s, "t2"), addr(&s, "t3")], ["10.0.0.2", "10.0.1.2", "10.0.0.3"]);
        let blocks: Vec<String> = s.networks.values().flat_map(|n| n.nodes.values()).map(|b| b.to_string()).collect();
        assert_eq!(blocks, ["10.0.0.0/24", "10.0.1.0/24"]);
        // t1 ends: its address goes to the next task on n1.
        let done = TaskStatusUpdate { task_id: "t1".into(), status: TaskStatus::new(TaskState::Failed, 2, "") };
        s.apply(Command::UpdateTaskStatus(vec![done])).unwrap();
        s.apply(Command::CreateTasks(vec![task(&s, "t4", "web")])).unwrap();
        s.apply(Command::AssignTasks(vec![assign("t4", "n1")])).unwrap();
        assert_eq!(addr(&s, "t4"), "10.0.0.2");
        // A removed node's block is free again.
        s.apply(Command::RemoveNode("n1".into())).unwrap();
        let blocks: Vec<String> = s.networks.values().flat_map(|n| n.nodes.values()).map(|b| b.to_string()).collect();
        assert_eq!(blocks, ["10.0.1.0/24"]);
    }

    #[test]
    fn a_failed_batch_gives_back_the_blocks_it_gave_out() {
        let mut s = Store::default();
        net(&mut s, "app", None).unwrap();
        s.apply(Command::AddNode(node("n1"))).unwrap();
        s.apply(Command::CreateService(on(&["app"], "web"))).unwrap();
        s.apply(Command::CreateTasks(vec![task(&s, "t1", "web")])).unwrap();
        let before = s.clone();
        let assign = Command::AssignTasks(vec![Assignment { task: "t1".into(), node: "n1".into(), at: 1 }]);
        let e = s.apply(Command::Batch(vec![assign, Command::RemoveNetwork("nope".into())])).unwrap_err();
        assert_eq!(e.to_string(), "network nope not found");
        assert_eq!(s, before);
    }
}
