//! Overlay networks on the managers: the pure allocator (network ranges,
//! VXLAN ids, node blocks, task addresses, VIPs), called by the store's
//! apply rules so that every manager gives out the same addresses, and the
//! network part of the table every node is sent ([`table`]).
//!
//! The layout of a network's range is in `common::network`'s docs. What is
//! given out here is taken back by removal: a removed network's range and
//! VXLAN id, a removed node's blocks, a finished task's address, a removed
//! service's VIPs are free for the next one (always the lowest free one).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::network::{AddrPool, Network, NetworkEntry, NodeBlock, ServiceEndpoint, Subnet, FIRST_VNI};
use common::task::TaskState;

use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum AllocError {
    #[error("subnet {wanted} overlaps network {network}'s subnet {theirs}")]
    Overlap { wanted: Subnet, network: String, theirs: Subnet },
    #[error(
        "no free /{mask} left in the default address pool {pools} ({used} networks use it): remove a network or \
         give --subnet"
    )]
    PoolExhausted { mask: u8, pools: String, used: usize },
    #[error(
        "network {network} has no block left for another node: its {range} holds {blocks} node blocks of /{prefix}, \
         all taken; use a larger --subnet"
    )]
    NoNodeBlock { network: String, range: Subnet, blocks: u64, prefix: u8 },
    #[error("no address left for a task on network {network} on this node: its block {block} is full")]
    NoTaskAddress { network: String, block: Subnet },
    #[error("no virtual IP left on network {network}: its VIP range {range} is full")]
    NoVip { network: String, range: Subnet },
    #[error("no VXLAN id left")]
    NoVni,
}

/// The range for a new network: `wanted` if it overlaps none of `existing`
/// (name, range), else the lowest free subnet of the cluster's `pool`.
pub fn allocate_subnet<'a>(
    existing: impl Iterator<Item = (&'a str, Subnet)> + Clone,
    wanted: Option<Subnet>,
    pool: &AddrPool,
) -> Result<Subnet, AllocError> {
    if let Some(wanted) = wanted {
        if let Some((name, theirs)) = existing.clone().find(|(_, s)| s.overlaps(&wanted)) {
            return Err(AllocError::Overlap { wanted, network: name.to_string(), theirs });
        }
        return Ok(wanted);
    }
    pool.subnets().find(|s| !existing.clone().any(|(_, e)| e.overlaps(s))).ok_or_else(|| AllocError::PoolExhausted {
        mask: pool.mask_length,
        pools: pool.to_string(),
        used: existing.count(),
    })
}

/// The lowest VXLAN id no network holds.
pub fn allocate_vni(used: &BTreeSet<u32>) -> Result<u32, AllocError> {
    (FIRST_VNI..(1 << 24)).find(|v| !used.contains(v)).ok_or(AllocError::NoVni)
}

/// The lowest node block of `net`'s tasks' half that no node holds.
pub fn allocate_block(net: &Network) -> Result<Subnet, AllocError> {
    let range = net.task_range();
    let prefix = net.node_prefix();
    let taken: BTreeSet<Subnet> = net.nodes.values().copied().collect();
    (0..range.children(prefix)).filter_map(|i| range.child(prefix, i)).find(|b| !taken.contains(b)).ok_or_else(|| {
        AllocError::NoNodeBlock { network: net.spec.name.clone(), range, blocks: range.children(prefix), prefix }
    })
}

/// The lowest task address of `block` not in `used`: not the block's first
/// (left unused), second (the gateway) or last address.
pub fn allocate_addr(network: &str, block: Subnet, used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
    (2..block.size().saturating_sub(1))
        .filter_map(|i| block.nth(i))
        .find(|a| !used.contains(a))
        .ok_or_else(|| AllocError::NoTaskAddress { network: network.to_string(), block })
}

/// The lowest VIP of `net`'s upper half not in `used` (its first address
/// is left unused).
pub fn allocate_vip(net: &Network, used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
    let range = net.vip_range();
    (1..range.size().saturating_sub(1))
        .filter_map(|i| range.nth(i))
        .find(|a| !used.contains(a))
        .ok_or_else(|| AllocError::NoVip { network: net.spec.name.clone(), range })
}

/// Every network as the nodes program it: the nodes with a block, and the
/// services attached with their VIP and running tasks' addresses. A task
/// counts only while it runs and is meant to.
pub fn table(store: &Store) -> Vec<NetworkEntry> {
    store
        .networks
        .values()
        .map(|net| {
            let nodes = net
                .nodes
                .iter()
                .filter_map(|(id, block)| {
                    let node = store.nodes.get(id)?;
                    Some(NodeBlock { node: id.clone(), underlay: node.addr.ip(), block: *block })
                })
                .collect();
            let mut services: Vec<ServiceEndpoint> = store
                .services
                .values()
                .filter_map(|svc| {
                    let att = svc.spec.task.networks.iter().find(|a| a.network == net.spec.name)?;
                    let mut tasks: Vec<Ipv4Addr> = store
                        .tasks_of(&svc.id)
                        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
                        .flat_map(|t| t.addresses.iter().filter(|a| a.network == net.id).map(|a| a.addr))
                        .collect();
                    tasks.sort();
                    Some(ServiceEndpoint {
                        name: svc.spec.name.clone(),
                        aliases: att.aliases.clone(),
                        vip: svc.vips.iter().find(|v| v.network == net.id).map(|v| v.addr),
                        tasks,
                    })
                })
                .collect();
            services.sort_by(|a, b| a.name.cmp(&b.name));
            NetworkEntry {
                id: net.id.clone(),
                name: net.spec.name.clone(),
                vni: net.vni,
                range: net.task_range(),
                encrypted: net.spec.encrypted(),
                routing: net.spec.routing().unwrap_or_default(),
                nodes,
                services,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use common::network::NetworkSpec;

    use super::*;

    fn net(name: &str, subnet: &str) -> Network {
        Network {
            id: name.into(),
            spec: NetworkSpec { name: name.into(), ..Default::default() },
            subnet: subnet.parse().unwrap(),
            vni: FIRST_VNI,
            nodes: BTreeMap::new(),
            created_at: 0,
        }
    }

    fn subnets(nets: &[Network]) -> impl Iterator<Item = (&str, Subnet)> + Clone {
        nets.iter().map(|n| (n.spec.name.as_str(), n.subnet))
    }

    #[test]
    fn default_ranges_do_not_overlap_and_are_reused() {
        let mut nets = vec![];
        for name in ["a", "b", "c"] {
            let s = allocate_subnet(subnets(&nets), None, &AddrPool::default()).unwrap();
            nets.push(net(name, &s.to_string()));
        }
        let got: Vec<String> = nets.iter().map(|n| n.subnet.to_string()).collect();
        assert_eq!(got, ["10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16"]);
        // b removed: its range is the next one given out.
        nets.remove(1);
        assert_eq!(allocate_subnet(subnets(&nets), None, &AddrPool::default()).unwrap().to_string(), "10.1.0.0/16");
        // A user's range inside the pool is skipped over by the allocator.
        nets.push(net("mine", "10.1.4.0/24"));
        assert_eq!(allocate_subnet(subnets(&nets), None, &AddrPool::default()).unwrap().to_string(), "10.3.0.0/16");
    }

    /// `--default-addr-pool 10.20.0.0/23 --default-addr-pool-mask-length 24
    /// --default-addr-pool 172.30.0.0/24`: the first pool's two /24s, then
    /// the second pool's, then exhaustion naming both.
    #[test]
    fn a_clusters_own_pools_are_used_in_order() {
        let pools = vec!["10.20.0.0/23".parse().unwrap(), "172.30.0.0/24".parse().unwrap()];
        let pool = AddrPool::new(pools, Some(24)).unwrap();
        let mut nets = vec![];
        for name in ["a", "b", "c"] {
            let s = allocate_subnet(subnets(&nets), None, &pool).unwrap();
            nets.push(net(name, &s.to_string()));
        }
        let got: Vec<String> = nets.iter().map(|n| n.subnet.to_string()).collect();
        assert_eq!(got, ["10.20.0.0/24", "10.20.1.0/24", "172.30.0.0/24"]);
        let e = allocate_subnet(subnets(&nets), None, &pool).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free /24 left in the default address pool 10.20.0.0/23, 172.30.0.0/24 (3 networks use it): remove a \
             network or give --subnet"
        );
    }

    #[test]
    fn pools_that_cannot_work_are_refused() {
        let p = |s: &str| -> Subnet { s.parse().unwrap() };
        let e = AddrPool::new(vec![p("10.20.0.0/16")], Some(12)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --default-addr-pool-mask-length 12: a network's subnet must be /8 to /26, and no larger than the \
             pool 10.20.0.0/16"
        );
        assert!(AddrPool::new(vec![p("10.0.0.0/8")], Some(27)).is_err());
        let e = AddrPool::new(vec![p("10.0.0.0/8"), p("10.20.0.0/16")], None).unwrap_err();
        assert_eq!(e.to_string(), "address pools 10.0.0.0/8 and 10.20.0.0/16 overlap");
        assert!(AddrPool::new(vec![], None).unwrap().is_default());
    }

    #[test]
    fn an_overlapping_subnet_is_refused_naming_the_other_network() {
        let nets = vec![net("app", "10.0.0.0/16")];
        let e =
            allocate_subnet(subnets(&nets), Some("10.0.128.0/24".parse().unwrap()), &AddrPool::default()).unwrap_err();
        assert_eq!(e.to_string(), "subnet 10.0.128.0/24 overlaps network app's subnet 10.0.0.0/16");
        assert!(allocate_subnet(subnets(&nets), Some("10.9.0.0/24".parse().unwrap()), &AddrPool::default()).is_ok());
    }

    #[test]
    fn exhaustion_is_explained() {
        let nets = vec![net("all", "10.0.0.0/8")];
        let e = allocate_subnet(subnets(&nets), None, &AddrPool::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free /16 left in the default address pool 10.0.0.0/8 (1 networks use it): remove a network or give \
             --subnet"
        );
        let mut small = net("small", "192.168.9.0/26");
        for i in 0..2 {
            let b = allocate_block(&small).unwrap();
            small.nodes.insert(format!("n{i}").as_str().into(), b);
        }
        assert_eq!(
            allocate_block(&small).unwrap_err().to_string(),
            "network small has no block left for another node: its 192.168.9.0/27 holds 2 node blocks of /28, all \
             taken; use a larger --subnet"
        );
        let block: Subnet = "192.168.9.16/28".parse().unwrap();
        let used: BTreeSet<Ipv4Addr> = (2..15).map(|i| block.nth(i).unwrap()).collect();
        assert_eq!(used.len(), 13);
        assert_eq!(
            allocate_addr("small", block, &used).unwrap_err().to_string(),
            "no address left for a task on network small on this node: its block 192.168.9.16/28 is full"
        );
    }

    #[test]
    fn blocks_addresses_and_vips() {
        let mut n = net("app", "10.0.0.0/16");
        let b1 = allocate_block(&n).unwrap();
        n.nodes.insert("n1".into(), b1);
        let b2 = allocate_block(&n).unwrap();
        n.nodes.insert("n2".into(), b2);
        assert_eq!((b1.to_string(), b2.to_string()), ("10.0.0.0/24".into(), "10.0.1.0/24".into()));
        // n1 leaves: its block is the next one given out.
        n.nodes.remove(&"n1".into());
        assert_eq!(allocate_block(&n).unwrap(), b1);

        let mut used = BTreeSet::new();
        let a = allocate_addr("app", b2, &used).unwrap();
        assert_eq!(a.to_string(), "10.0.1.2", "after the unused first address and the gateway");
        used.insert(a);
        assert_eq!(allocate_addr("app", b2, &used).unwrap().to_string(), "10.0.1.3");
        used.remove(&a);
        assert_eq!(allocate_addr("app", b2, &used).unwrap(), a, "a finished task's address is reused");

        let v = allocate_vip(&n, &BTreeSet::new()).unwrap();
        assert_eq!(v.to_string(), "10.0.128.1");
        assert!(!n.task_range().contains(v), "VIPs are off the tasks' subnet");
        assert_eq!(allocate_vip(&n, &[v].into()).unwrap().to_string(), "10.0.128.2");
        assert_eq!(allocate_vni(&[FIRST_VNI].into()).unwrap(), FIRST_VNI + 1);
    }
}
