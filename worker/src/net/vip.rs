//! Service virtual IPs on this node: nftables DNAT from a VIP to the
//! service's running tasks on that network, round robin (`numgen inc`, as
//! the routing mesh does for published ports, see `crate::mesh::nft`).
//!
//! A task sends a VIP's packets to its gateway, this node's address on the
//! network's bridge (VIPs are off the tasks' subnet). Here they are DNATed,
//! in `prerouting`, to the next task address (the port is kept), and
//! masqueraded to the gateway so that the answers come back through this
//! node, where conntrack undoes both. (On a directly routed network a
//! packet DNATed to a task on another node leaves by the underlay
//! unmasqueraded: the answer is routed back through this node anyway, and
//! the task sees the caller's own address.) A packet for a VIP that is not DNATed
//! (no running task, or it came from another network's bridge) is rejected
//! in `forward` at once instead of leaving by the default route.
//!
//! - [`desired`], [`diff`], [`apply`]: pure. The VIPs of the networks this
//!   node has a block of, and the changes from what is programmed.
//! - [`VipTable`]: the nft scripts for them, one transaction each, in a
//!   table of this node's own (`ip shoal_vip_<node id prefix>`).
//! - [`Programmer`]: a task that applies each table as a diff, rebuilding
//!   the whole nft table at start and after a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::network::{bridge_name, NetworkEntry};
use common::NodeId;
use tokio::sync::{oneshot, watch};

use crate::mesh::nft;
use crate::mesh::MeshError;

/// The mark asking for the masquerade in `postrouting` (the mesh uses
/// 0x20000, kube-proxy 0x4000).
pub const MASQ_MARK: u32 = 0x0004_0000;

/// Before Docker's nat chains (dstnat, -100), as the mesh.
const DNAT_PRIORITY: i32 = -110;
/// Before the filter table's forward chain (0), where Docker's rules are.
const REFUSE_PRIORITY: i32 = -10;
/// Right before srcnat (100), where Docker masquerades.
const MASQ_PRIORITY: i32 = 90;

/// Where one VIP's connections go on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipTarget {
    /// For logs.
    pub service: String,
    /// The network's bridge on this node: only its tasks are DNATed.
    pub bridge: String,
    /// The running tasks' addresses, in the managers' order (the rotation);
    /// empty: refuse at once.
    pub backends: Vec<Ipv4Addr>,
}

/// Every VIP this node serves.
pub type VipPlan = BTreeMap<Ipv4Addr, VipTarget>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Add {
        vip: Ipv4Addr,
        to: VipTarget,
    },
    /// Other backends (possibly none) or bridge.
    Retarget {
        vip: Ipv4Addr,
        to: VipTarget,
    },
    Remove {
        vip: Ipv4Addr,
    },
}

/// The VIPs of the networks `node` has a block of (only there can a task
/// of this node reach its gateway); dnsrr services have none.
pub fn desired(node: &NodeId, table: &[NetworkEntry]) -> VipPlan {
    let mut plan = VipPlan::new();
    for net in table.iter().filter(|n| n.nodes.iter().any(|b| &b.node == node)) {
        for svc in &net.services {
            let Some(vip) = svc.vip else { continue };
            plan.entry(vip).or_insert_with(|| VipTarget {
                service: svc.name.clone(),
                bridge: bridge_name(net.vni),
                backends: svc.tasks.clone(),
            });
        }
    }
    plan
}

/// From `have` to `want`: removals first, then additions and retargets,
/// each in address order.
pub fn diff(have: &VipPlan, want: &VipPlan) -> Vec<Change> {
    let mut out: Vec<Change> =
        have.keys().filter(|v| !want.contains_key(v)).map(|v| Change::Remove { vip: *v }).collect();
    for (vip, to) in want {
        match have.get(vip) {
            None => out.push(Change::Add { vip: *vip, to: to.clone() }),
            Some(was) if was != to => out.push(Change::Retarget { vip: *vip, to: to.clone() }),
            Some(_) => {}
        }
    }
    out
}

/// `have` with `changes` applied.
pub fn apply(have: &VipPlan, changes: &[Change]) -> VipPlan {
    let mut next = have.clone();
    for c in changes {
        match c {
            Change::Add { vip, to } | Change::Retarget { vip, to } => {
                next.insert(*vip, to.clone());
            }
            Change::Remove { vip } => {
                next.remove(vip);
            }
        }
    }
    next
}

/// This node's VIP table in nftables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipTable {
    name: String,
}

impl VipTable {
    pub fn for_node(node: &NodeId) -> Self {
        let short: String = node.short().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        VipTable { name: format!("shoal_vip_{short}") }
    }

    /// `ip shoal_vip_abc`.
    pub fn qualified(&self) -> String {
        format!("ip {}", self.name)
    }

    pub fn teardown(&self) -> String {
        let t = self.qualified();
        format!("add table {t}\ndelete table {t}\n")
    }

    /// The whole table for `plan`, replacing what is there.
    ///
    /// - set `vips`: every VIP, rejected in `forward` when not DNATed;
    /// - per VIP with tasks a chain `v_A_B_C_D` with its DNAT rule, and an
    ///   element of the verdict map `vip_dnat` (VIP → `goto` that chain),
    ///   looked up in `prerouting`.
    pub fn rebuild(&self, plan: &VipPlan) -> String {
        let mut s = self.teardown();
        let _ = writeln!(s, "table {} {{", self.qualified());
        s.push_str("\tset vips {\n\t\ttype ipv4_addr\n");
        if !plan.is_empty() {
            let all: Vec<String> = plan.keys().map(|v| v.to_string()).collect();
            let _ = writeln!(s, "\t\telements = {{ {} }}", all.join(", "));
        }
        s.push_str("\t}\n");
        let mut verdicts = Vec::new();
        for (vip, to) in plan.iter().filter(|(_, t)| !t.backends.is_empty()) {
            let _ = writeln!(s, "\tchain {} {{\n\t\t{}\n\t}}", chain(*vip), dnat_rule(to));
            verdicts.push(format!("{vip} : goto {}", chain(*vip)));
        }
        s.push_str("\tmap vip_dnat {\n\t\ttype ipv4_addr : verdict\n");
        if !verdicts.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", verdicts.join(", "));
        }
        s.push_str("\t}\n");
        let _ = writeln!(
            s,
            "\tchain prerouting {{\n\t\ttype nat hook prerouting priority {DNAT_PRIORITY}; policy accept;\n\t\tip daddr vmap @vip_dnat\n\t}}"
        );
        let _ = writeln!(
            s,
            "\tchain refuse {{\n\t\ttype filter hook forward priority {REFUSE_PRIORITY}; policy accept;\n\t\tip daddr @vips meta l4proto tcp reject with tcp reset\n\t\tip daddr @vips reject with icmp type port-unreachable\n\t}}"
        );
        let _ = writeln!(
            s,
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority {MASQ_PRIORITY}; policy accept;\n\t\tmeta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {:#x} oifname \"shbr*\" masquerade\n\t}}",
            !MASQ_MARK
        );
        s.push_str("}\n");
        s
    }

    /// `changes` as one transaction against the table as `have` describes it.
    pub fn update(&self, have: &VipPlan, changes: &[Change]) -> String {
        let t = self.qualified();
        let mut s = String::new();
        for c in changes {
            let (vip, next) = match c {
                Change::Add { vip, to } | Change::Retarget { vip, to } => (*vip, Some(to)),
                Change::Remove { vip } => (*vip, None),
            };
            let p = chain(vip);
            let before = have.get(&vip);
            let forwarding = |x: Option<&VipTarget>| x.is_some_and(|x| !x.backends.is_empty());
            match (forwarding(before), forwarding(next)) {
                (true, true) => {
                    let _ = writeln!(s, "flush chain {t} {p}");
                }
                (true, false) => {
                    let _ = writeln!(s, "delete element {t} vip_dnat {{ {vip} }}");
                    let _ = writeln!(s, "delete chain {t} {p}");
                }
                (false, true) => {
                    let _ = writeln!(s, "add chain {t} {p}");
                }
                (false, false) => {}
            }
            if let Some(to) = next.filter(|n| !n.backends.is_empty()) {
                let _ = writeln!(s, "add rule {t} {p} {}", dnat_rule(to));
                if !forwarding(before) {
                    let _ = writeln!(s, "add element {t} vip_dnat {{ {vip} : goto {p} }}");
                }
            }
            match (before.is_some(), next.is_some()) {
                (false, true) => {
                    let _ = writeln!(s, "add element {t} vips {{ {vip} }}");
                }
                (true, false) => {
                    let _ = writeln!(s, "delete element {t} vips {{ {vip} }}");
                }
                _ => {}
            }
        }
        s
    }
}

/// `v_10_0_128_1`.
fn chain(vip: Ipv4Addr) -> String {
    format!("v_{}", vip.to_string().replace('.', "_"))
}

fn dnat_rule(to: &VipTarget) -> String {
    let targets: Vec<String> = to.backends.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
    format!(
        "iifname \"{}\" meta mark set meta mark | {MASQ_MARK:#x} dnat to numgen inc mod {} map {{ {} }}",
        to.bridge,
        to.backends.len(),
        targets.join(", ")
    )
}

/// Applies each network table's VIPs on this node.
pub struct Programmer {
    pub node: NodeId,
}

impl Programmer {
    /// Runs until `stop` fires (then removes the table), `stop` is dropped
    /// or `tables` closes (the table stays, for the next process to take
    /// over). A failed transaction rebuilds the whole table a second later.
    pub async fn run(self, mut tables: watch::Receiver<Vec<NetworkEntry>>, mut stop: oneshot::Receiver<()>) {
        let table = VipTable::for_node(&self.node);
        // A node with no VIP has no table (and runs no nft); `None`: what
        // is in the kernel is unknown (at start, after a failure).
        let mut programmed: Option<Option<VipPlan>> = None;
        let mut error: Option<MeshError> = None;
        loop {
            let want = desired(&self.node, &tables.borrow_and_update());
            let (script, changes) = match (&programmed, want.is_empty()) {
                (Some(None), true) => (String::new(), vec![]),
                (_, true) => (table.teardown(), vec![]),
                (Some(Some(have)), false) => {
                    let changes = diff(have, &want);
                    (table.update(have, &changes), changes)
                }
                (_, false) => (table.rebuild(&want), vec![]),
            };
            let mut retry = false;
            if !script.is_empty() {
                match nft::run(&script).await {
                    Ok(()) => {
                        for c in &changes {
                            tracing::debug!(change = ?c, "vip: applied");
                        }
                        let bridges: BTreeSet<&str> = want.values().map(|t| t.bridge.as_str()).collect();
                        for b in bridges {
                            if let Err(e) = super::link::hairpin(b).await {
                                tracing::warn!(bridge = b, error = %e, "vip: a task may not reach its own VIP");
                            }
                        }
                        error = None;
                    }
                    Err(e) => {
                        if error.as_ref() != Some(&e) && !want.is_empty() {
                            tracing::error!(table = %table.qualified(), error = %e, "vip: programming nftables failed; will rebuild the table");
                        }
                        error = Some(e);
                        retry = !want.is_empty();
                    }
                }
            }
            // With no VIP a failed teardown is not retried: a node that
            // may not use nft made no table either.
            programmed = match (&error, want.is_empty()) {
                (_, true) => Some(None),
                (None, false) => Some(Some(want)),
                (Some(_), false) => None,
            };
            let wait = if retry { Duration::from_secs(1) } else { Duration::from_secs(3600) };
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
                stopped = &mut stop => if stopped.is_ok() { break } else { return },
            }
        }
        if matches!(programmed, Some(None)) {
            return;
        }
        match nft::run(&table.teardown()).await {
            Ok(()) => tracing::info!(table = %table.qualified(), "vip: nft table removed"),
            Err(e) => tracing::warn!(table = %table.qualified(), error = %e, "vip: removing the nft table failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use common::network::{NodeBlock, ServiceEndpoint};

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn svc(name: &str, vip: Option<&str>, tasks: &[&str]) -> ServiceEndpoint {
        ServiceEndpoint {
            name: name.into(),
            aliases: vec![],
            vip: vip.map(ip),
            tasks: tasks.iter().map(|t| ip(t)).collect(),
        }
    }

    fn net(name: &str, vni: u32, nodes: &[&str], services: Vec<ServiceEndpoint>) -> NetworkEntry {
        NetworkEntry {
            id: name.into(),
            name: name.into(),
            vni,
            range: "10.0.0.0/17".parse().unwrap(),
            encrypted: false,
            routing: Default::default(),
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeBlock {
                    node: (*n).into(),
                    underlay: format!("192.168.0.{}", i + 1).parse().unwrap(),
                    block: format!("10.0.{i}.0/24").parse().unwrap(),
                })
                .collect(),
            services,
        }
    }

    fn target(service: &str, vni: u32, backends: &[&str]) -> VipTarget {
        VipTarget {
            service: service.into(),
            bridge: bridge_name(vni),
            backends: backends.iter().map(|b| ip(b)).collect(),
        }
    }

    #[test]
    fn a_node_serves_the_vips_of_its_networks_only_and_dnsrr_has_none() {
        let t = vec![
            net(
                "app",
                4096,
                &["n1", "n2"],
                vec![
                    svc("back", Some("10.0.128.1"), &["10.0.0.2", "10.0.1.2"]),
                    svc("idle", Some("10.0.128.2"), &[]),
                    svc("rr", None, &["10.0.0.3"]),
                ],
            ),
            net("db", 4097, &["n2"], vec![svc("pg", Some("10.1.128.1"), &["10.1.0.2"])]),
        ];
        let p = desired(&"n1".into(), &t);
        assert_eq!(
            p,
            [
                (ip("10.0.128.1"), target("back", 4096, &["10.0.0.2", "10.0.1.2"])),
                (ip("10.0.128.2"), target("idle", 4096, &[])),
            ]
            .into()
        );
        assert_eq!(desired(&"n2".into(), &t).len(), 3);
        assert!(desired(&"n3".into(), &t).is_empty());
    }

    #[test]
    fn the_diff_lands_on_the_desired_plan() {
        let v1 = ip("10.0.128.1");
        let v2 = ip("10.0.128.2");
        let a: VipPlan =
            [(v1, target("back", 4096, &["10.0.0.2", "10.0.1.2"])), (v2, target("idle", 4096, &[]))].into();
        let b: VipPlan = [(v1, target("back", 4096, &["10.0.1.2"]))].into();
        let c: VipPlan = [(v1, target("back", 4096, &["10.0.1.2"])), (v2, target("idle", 4096, &["10.0.0.9"]))].into();
        assert_eq!(
            diff(&a, &b),
            vec![Change::Remove { vip: v2 }, Change::Retarget { vip: v1, to: target("back", 4096, &["10.0.1.2"]) }]
        );
        assert_eq!(diff(&b, &c), vec![Change::Add { vip: v2, to: target("idle", 4096, &["10.0.0.9"]) }]);
        assert!(diff(&c, &c).is_empty());
        for (from, to) in [(&a, &b), (&b, &c), (&c, &a), (&VipPlan::new(), &a), (&a, &VipPlan::new())] {
            let next = apply(from, &diff(from, to));
            assert_eq!(&next, to);
            assert!(diff(&next, to).is_empty());
        }
    }

    #[test]
    fn a_rebuild_defines_the_whole_table() {
        let plan: VipPlan = [
            (ip("10.0.128.1"), target("back", 4096, &["10.0.0.2", "10.0.1.2"])),
            (ip("10.0.128.2"), target("idle", 4096, &[])),
        ]
        .into();
        let want = "\
add table ip shoal_vip_n1
delete table ip shoal_vip_n1
table ip shoal_vip_n1 {
\tset vips {
\t\ttype ipv4_addr
\t\telements = { 10.0.128.1, 10.0.128.2 }
\t}
\tchain v_10_0_128_1 {
\t\tiifname \"shbr4096\" meta mark set meta mark | 0x40000 dnat to numgen inc mod 2 map { 0 : 10.0.0.2, 1 : 10.0.1.2 }
\t}
\tmap vip_dnat {
\t\ttype ipv4_addr : verdict
\t\telements = { 10.0.128.1 : goto v_10_0_128_1 }
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority -110; policy accept;
\t\tip daddr vmap @vip_dnat
\t}
\tchain refuse {
\t\ttype filter hook forward priority -10; policy accept;
\t\tip daddr @vips meta l4proto tcp reject with tcp reset
\t\tip daddr @vips reject with icmp type port-unreachable
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority 90; policy accept;
\t\tmeta mark & 0x40000 == 0x40000 meta mark set meta mark & 0xfffbffff oifname \"shbr*\" masquerade
\t}
}
";
        let table = VipTable::for_node(&"n1".into());
        assert_eq!(table.rebuild(&plan), want);
        let empty = table.rebuild(&VipPlan::new());
        assert!(!empty.contains("elements"), "nft refuses empty element lists: {empty}");
    }

    #[test]
    fn updates_touch_only_the_changed_vips() {
        let (v1, v2, v3, v4) = (ip("10.0.128.1"), ip("10.0.128.2"), ip("10.0.128.3"), ip("10.0.128.4"));
        let have: VipPlan = [
            (v1, target("a", 4096, &["10.0.0.2"])),
            (v2, target("b", 4096, &[])),
            (v3, target("c", 4096, &["10.0.0.4"])),
        ]
        .into();
        let want: VipPlan = [
            (v1, target("a", 4096, &["10.0.0.2", "10.0.1.2"])),
            (v2, target("b", 4096, &["10.0.0.3"])),
            (v3, target("c", 4096, &[])),
            (v4, target("d", 4096, &[])),
        ]
        .into();
        let t = "ip shoal_vip_n1";
        let m = "iifname \"shbr4096\" meta mark set meta mark | 0x40000";
        let got = VipTable::for_node(&"n1".into()).update(&have, &diff(&have, &want));
        let expected = format!(
            "\
flush chain {t} v_10_0_128_1
add rule {t} v_10_0_128_1 {m} dnat to numgen inc mod 2 map {{ 0 : 10.0.0.2, 1 : 10.0.1.2 }}
add chain {t} v_10_0_128_2
add rule {t} v_10_0_128_2 {m} dnat to numgen inc mod 1 map {{ 0 : 10.0.0.3 }}
add element {t} vip_dnat {{ 10.0.128.2 : goto v_10_0_128_2 }}
delete element {t} vip_dnat {{ 10.0.128.3 }}
delete chain {t} v_10_0_128_3
add element {t} vips {{ 10.0.128.4 }}
"
        );
        assert_eq!(got, expected);
        let gone = VipTable::for_node(&"n1".into()).update(&want, &diff(&want, &VipPlan::new()));
        assert_eq!(
            gone,
            format!(
                "\
delete element {t} vip_dnat {{ 10.0.128.1 }}
delete chain {t} v_10_0_128_1
delete element {t} vips {{ 10.0.128.1 }}
delete element {t} vip_dnat {{ 10.0.128.2 }}
delete chain {t} v_10_0_128_2
delete element {t} vips {{ 10.0.128.2 }}
delete element {t} vips {{ 10.0.128.3 }}
delete element {t} vips {{ 10.0.128.4 }}
"
            )
        );
    }
}
