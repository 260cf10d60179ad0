//! What this node's overlay should look like, as data, and the changes from
//! what it has.

use std::net::IpAddr;

use common::network::{docker_network_name, NetworkEntry, Routing, Subnet};
use common::NodeId;

/// One network on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    pub docker_name: String,
    pub vni: u32,
    pub range: Subnet,
    pub block: Subnet,
    /// The other nodes with a block, by underlay address, sorted.
    pub peers: Vec<IpAddr>,
    /// Sealed between nodes: VXLAN on the tunnel's port, a smaller MTU.
    pub encrypted: bool,
    pub routing: Routing,
    /// The other nodes' blocks and their underlay addresses, sorted: what
    /// direct routing routes (empty under VXLAN).
    pub routes: Vec<(Subnet, IpAddr)>,
}

impl NodeNetwork {
    /// The VXLAN port of this network's device.
    pub fn vxlan_port(&self) -> u16 {
        if self.encrypted {
            super::tunnel::VXLAN_PORT
        } else {
            super::link::VXLAN_PORT
        }
    }

    /// The MTU of the network's bridge and its tasks' interfaces.
    pub fn mtu(&self) -> u32 {
        super::mtu(self.encrypted, self.routing)
    }

    /// The subnet of the node's Docker network (see
    /// `TaskAddress::docker_subnet`).
    pub fn docker_subnet(&self) -> Subnet {
        match self.routing {
            Routing::Vxlan => self.range,
            Routing::Direct => self.block,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Add(NodeNetwork),
    /// Same network, other peers.
    Update(NodeNetwork),
    Remove(NodeNetwork),
}

/// The networks `node` has a block of, by VXLAN id.
pub fn desired(node: &NodeId, table: &[NetworkEntry]) -> Vec<NodeNetwork> {
    let mut out: Vec<NodeNetwork> = table
        .iter()
        .filter_map(|n| {
            let mine = n.nodes.iter().find(|b| &b.node == node)?;
            let mut peers: Vec<IpAddr> = n
                .nodes
                .iter()
                .filter(|b| &b.node != node)
                .map(|b| b.underlay)
                .filter(|a| *a != mine.underlay)
                .collect();
            peers.sort();
            peers.dedup();
            let mut routes: Vec<(Subnet, IpAddr)> = match n.routing {
                Routing::Vxlan => vec![],
                Routing::Direct => n
                    .nodes
                    .iter()
                    .filter(|b| &b.node != node && b.underlay != mine.underlay)
                    .map(|b| (b.block, b.underlay))
                    .collect(),
            };
            routes.sort();
            Some(NodeNetwork {
                docker_name: docker_network_name(&n.name, &n.id),
                vni: n.vni,
                range: n.range,
                block: mine.block,
                peers,
                encrypted: n.encrypted,
                routing: n.routing,
                routes,
            })
        })
        .collect();
    out.sort_by_key(|n| n.vni);
    out
}

/// From `have` to `want`: removals first (a VXLAN id may be reused).
pub fn diff(have: &[NodeNetwork], want: &[NodeNetwork]) -> Vec<Change> {
    let same = |a: &NodeNetwork, b: &NodeNetwork| {
        (a.vni, &a.docker_name, a.block, a.encrypted, a.routing)
            == (b.vni, &b.docker_name, b.block, b.encrypted, b.routing)
    };
    let mut out: Vec<Change> =
        have.iter().filter(|h| !want.iter().any(|w| same(h, w))).map(|h| Change::Remove(h.clone())).collect();
    for w in want {
        match have.iter().find(|h| same(h, w)) {
            None => out.push(Change::Add(w.clone())),
            Some(h) if h.peers != w.peers || h.routes != w.routes => out.push(Change::Update(w.clone())),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use common::network::NodeBlock;

    use super::*;

    fn entry(name: &str, vni: u32, nodes: &[(&str, &str, &str)]) -> NetworkEntry {
        NetworkEntry {
            id: format!("{name}id").as_str().into(),
            name: name.into(),
            vni,
            range: "10.0.0.0/17".parse().unwrap(),
            encrypted: false,
            routing: Default::default(),
            nodes: nodes
                .iter()
                .map(|(n, ip, b)| NodeBlock {
                    node: (*n).into(),
                    underlay: ip.parse().unwrap(),
                    block: b.parse().unwrap(),
                })
                .collect(),
            services: vec![],
        }
    }

    #[test]
    fn a_node_programs_only_networks_it_has_a_block_of_with_the_other_nodes_as_peers() {
        let t = vec![
            entry("app", 4096, &[("n1", "10.9.0.1", "10.0.0.0/24"), ("n2", "10.9.0.2", "10.0.1.0/24")]),
            entry("db", 4097, &[("n2", "10.9.0.2", "10.0.0.0/24")]),
        ];
        let d = desired(&"n1".into(), &t);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].docker_name, "shoal-app-appid");
        assert_eq!(d[0].block.to_string(), "10.0.0.0/24");
        assert_eq!(d[0].peers, ["10.9.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(desired(&"n2".into(), &t).len(), 2);
        assert!(desired(&"n3".into(), &t).is_empty());
    }

    #[test]
    fn the_diff_adds_updates_peers_and_removes() {
        let one = vec![entry("app", 4096, &[("n1", "10.9.0.1", "10.0.0.0/24")])];
        let two = vec![entry("app", 4096, &[("n1", "10.9.0.1", "10.0.0.0/24"), ("n2", "10.9.0.2", "10.0.1.0/24")])];
        let (a, b) = (desired(&"n1".into(), &one), desired(&"n1".into(), &two));
        assert_eq!(diff(&[], &a), vec![Change::Add(a[0].clone())]);
        assert_eq!(diff(&a, &b), vec![Change::Update(b[0].clone())]);
        assert_eq!(diff(&b, &b), vec![]);
        assert_eq!(diff(&b, &[]), vec![Change::Remove(b[0].clone())]);
    }

    #[test]
    fn direct_routing_routes_each_other_block_via_its_node_and_needs_no_tunnel() {
        let mut t = entry("app", 4096, &[("n1", "10.9.0.1", "10.0.0.0/24"), ("n2", "10.9.0.2", "10.0.1.0/24")]);
        t.nodes.push(NodeBlock {
            node: "n3".into(),
            underlay: "10.9.0.3".parse().unwrap(),
            block: "10.0.2.0/24".parse().unwrap(),
        });
        let vxlan = desired(&"n1".into(), &[t.clone()]);
        assert!(vxlan[0].routes.is_empty(), "VXLAN floods to peers; it routes nothing");
        assert_eq!(vxlan[0].docker_subnet().to_string(), "10.0.0.0/17");
        t.routing = Routing::Direct;
        let direct = desired(&"n1".into(), &[t.clone()]);
        let routes: Vec<String> = direct[0].routes.iter().map(|(b, via)| format!("{b} via {via}")).collect();
        assert_eq!(routes, ["10.0.1.0/24 via 10.9.0.2", "10.0.2.0/24 via 10.9.0.3"]);
        assert_eq!(direct[0].docker_subnet().to_string(), "10.0.0.0/24", "only the node's block is on-link");
        assert_eq!(direct[0].mtu(), 1500, "no VXLAN header");
        // Another routing is another network (remade), a node leaving changes the routes.
        assert_eq!(diff(&vxlan, &direct), vec![Change::Remove(vxlan[0].clone()), Change::Add(direct[0].clone())]);
        t.nodes.pop();
        let fewer = desired(&"n1".into(), &[t]);
        assert_eq!(diff(&direct, &fewer), vec![Change::Update(fewer[0].clone())]);
    }
}
