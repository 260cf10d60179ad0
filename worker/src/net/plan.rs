//! What this node's overlay should look like, as data, and the changes from
//! what it has.

use std::net::IpAddr;

use common::network::{docker_network_name, NetworkEntry, Subnet};
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
        super::mtu(self.encrypted)
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
            Some(NodeNetwork {
                docker_name: docker_network_name(&n.name, &n.id),
                vni: n.vni,
                range: n.range,
                block: mine.block,
                peers,
                encrypted: n.encrypted,
            })
        })
        .collect();
    out.sort_by_key(|n| n.vni);
    out
}

/// From `have` to `want`: removals first (a VXLAN id may be reused).
pub fn diff(have: &[NodeNetwork], want: &[NodeNetwork]) -> Vec<Change> {
    let same = |a: &NodeNetwork, b: &NodeNetwork| {
        (a.vni, &a.docker_name, a.block, a.encrypted) == (b.vni, &b.docker_name, b.block, b.encrypted)
    };
    let mut out: Vec<Change> =
        have.iter().filter(|h| !want.iter().any(|w| same(h, w))).map(|h| Change::Remove(h.clone())).collect();
    for w in want {
        match have.iter().find(|h| same(h, w)) {
            None => out.push(Change::Add(w.clone())),
            Some(h) if h.peers != w.peers => out.push(Change::Update(w.clone())),
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
}
