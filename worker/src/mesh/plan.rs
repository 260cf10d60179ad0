//! Mesh rule planning, pure: what this node should serve ([`desired`]) and
//! the smallest set of changes that gets a data path there ([`diff`]).
//!
//! The data paths (nftables, the userspace proxy) only ever carry out
//! [`Change`]s; all judgement about what to program lives here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use common::mesh::{MeshTable, Protocol};

/// One published port on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: Protocol,
    pub port: u16,
}

impl PortKey {
    pub fn tcp(port: u16) -> Self {
        PortKey { protocol: Protocol::Tcp, port }
    }

    pub fn udp(port: u16) -> Self {
        PortKey { protocol: Protocol::Udp, port }
    }
}

impl fmt::Display for PortKey {
    /// `8080/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// Where one published port's connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// For logs and status.
    pub service: String,
    /// Round robin over these, in this order; empty: refuse at once.
    pub backends: Vec<SocketAddr>,
    /// Backends on this node whose container can be reached directly: the
    /// kernel path DNATs to the container (right-hand side) instead of the
    /// host port, so a connection from another machine keeps its source.
    pub direct: BTreeMap<SocketAddr, SocketAddr>,
    /// Open each backend connection with a PROXY protocol v2 header
    /// (userspace path).
    pub proxy_protocol: bool,
    /// Forward connections from other machines to the task's node with
    /// their addresses unchanged (kernel path, see `nft`).
    pub preserve_source: bool,
}

impl Forward {
    pub fn refuses(&self) -> bool {
        self.backends.is_empty()
    }
}

/// The routing mesh as one node serves it: on `addr`, every published port
/// and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredMesh {
    pub addr: IpAddr,
    pub ports: BTreeMap<PortKey, Forward>,
    /// Every node's address of `addr`'s family (this node's included).
    pub peers: Vec<IpAddr>,
}

impl DesiredMesh {
    pub fn empty(addr: IpAddr) -> Self {
        DesiredMesh { addr, ports: BTreeMap::new(), peers: Vec::new() }
    }

    /// Does any port forward with `preserve-source`?
    pub fn preserves_sources(&self) -> bool {
        self.ports.values().any(|f| f.preserve_source && !f.refuses())
    }
}

/// One step from what is programmed towards what is desired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Start serving a port (listen, or add its rules).
    Open { port: PortKey, to: Forward },
    /// A served port gets a new backend list (possibly empty: refuse).
    Retarget { port: PortKey, to: Forward },
    /// Stop serving a port.
    Close { port: PortKey },
}

impl Change {
    pub fn port(&self) -> PortKey {
        match self {
            Change::Open { port, .. } | Change::Retarget { port, .. } | Change::Close { port } => *port,
        }
    }
}

/// What this node should serve for `table`, on `node_addr`.
///
/// Backends keep the table's order (the managers' stable order), so round
/// robin visits them the same way on every node. A backend of the other
/// address family than `node_addr` cannot be reached by a DNAT from it and
/// is left out. Two entries for one port cannot come from a sane store; the
/// first wins.
pub fn desired(table: &MeshTable, node_addr: IpAddr) -> DesiredMesh {
    let mut ports = BTreeMap::new();
    for e in &table.entries {
        let key = PortKey { protocol: e.protocol, port: e.published };
        ports.entry(key).or_insert_with(|| Forward {
            service: e.service_name.clone(),
            backends: e.backends.iter().filter(|b| b.is_ipv4() == node_addr.is_ipv4()).copied().collect(),
            direct: e
                .direct
                .iter()
                .filter(|(b, c)| b.ip() == node_addr && c.is_ipv4() == node_addr.is_ipv4() && e.backends.contains(b))
                .map(|(b, c)| (*b, *c))
                .collect(),
            proxy_protocol: e.proxy_protocol.is_some(),
            preserve_source: e.preserve_source,
        });
    }
    let peers = table.nodes.iter().filter(|a| a.is_ipv4() == node_addr.is_ipv4()).copied().collect();
    DesiredMesh { addr: node_addr, ports, peers }
}

/// The changes that turn `current` into `desired`, closes first (so a port
/// that moves from one listener to another is free again), then opens and
/// retargets, each in port order. A new address closes and reopens all.
pub fn diff(current: &DesiredMesh, desired: &DesiredMesh) -> Vec<Change> {
    let moved = current.addr != desired.addr;
    let mut out = Vec::new();
    for port in current.ports.keys() {
        if moved || !desired.ports.contains_key(port) {
            out.push(Change::Close { port: *port });
        }
    }
    for (port, to) in &desired.ports {
        match current.ports.get(port) {
            Some(_) if moved => out.push(Change::Open { port: *port, to: to.clone() }),
            None => out.push(Change::Open { port: *port, to: to.clone() }),
            Some(was) if was != to => out.push(Change::Retarget { port: *port, to: to.clone() }),
            Some(_) => {}
        }
    }
    out
}

/// `current` with `changes` applied: what is programmed once they all took.
pub fn apply(current: &DesiredMesh, addr: IpAddr, changes: &[Change]) -> DesiredMesh {
    let mut next = current.clone();
    next.addr = addr;
    for c in changes {
        match c {
            Change::Open { port, to } | Change::Retarget { port, to } => {
                next.ports.insert(*port, to.clone());
            }
            Change::Close { port } => {
                next.ports.remove(port);
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::ServiceId;
    use common::mesh::MeshEntry;

    const NODE: &str = "127.0.0.11";

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn entry(svc: &str, protocol: Protocol, published: u16, backends: &[&str]) -> MeshEntry {
        MeshEntry {
            service_id: ServiceId::from(svc),
            service_name: svc.to_string(),
            protocol,
            published,
            backends: backends.iter().map(|b| sa(b)).collect(),
            direct: Default::default(),
            preserve_source: false,
            proxy_protocol: None,
        }
    }

    fn table(entries: Vec<MeshEntry>) -> MeshTable {
        MeshTable { entries, ..Default::default() }
    }

    /// `open 8080/tcp web [a, b]`, `retarget 53/udp dns refuse`, `close 80/tcp`.
    fn render(c: &Change) -> String {
        let fwd = |to: &Forward| {
            if to.refuses() {
                format!("{} refuse", to.service)
            } else {
                let b: Vec<_> = to.backends.iter().map(|b| b.to_string()).collect();
                format!("{} [{}]", to.service, b.join(", "))
            }
        };
        match c {
            Change::Open { port, to } => format!("open {port} {}", fwd(to)),
            Change::Retarget { port, to } => format!("retarget {port} {}", fwd(to)),
            Change::Close { port } => format!("close {port}"),
        }
    }

    #[test]
    fn desired_takes_every_published_port_in_order() {
        let d = desired(
            &table(vec![
                entry("web", Protocol::Tcp, 8080, &["127.0.0.12:32768", "127.0.0.13:32770"]),
                entry("dns", Protocol::Udp, 53, &["127.0.0.12:32771"]),
                entry("idle", Protocol::Tcp, 9000, &[]),
                // Same number, other protocol: another port.
                entry("web-udp", Protocol::Udp, 8080, &["127.0.0.12:32772"]),
                // A duplicate cannot win over the first.
                entry("dup", Protocol::Tcp, 8080, &["127.0.0.99:1"]),
                // IPv6 backends cannot be reached from an IPv4 node address.
                entry("v6", Protocol::Tcp, 7000, &["[::1]:32768", "127.0.0.12:32773"]),
            ]),
            NODE.parse().unwrap(),
        );
        let got: Vec<String> = d.ports.iter().map(|(k, f)| format!("{k} {} {:?}", f.service, f.backends)).collect();
        assert_eq!(
            got,
            vec![
                "7000/tcp v6 [127.0.0.12:32773]",
                "8080/tcp web [127.0.0.12:32768, 127.0.0.13:32770]",
                "9000/tcp idle []",
                "53/udp dns [127.0.0.12:32771]",
                "8080/udp web-udp [127.0.0.12:32772]",
            ]
        );
        assert!(d.ports[&PortKey::tcp(9000)].refuses());
    }

    #[test]
    fn diff_table() {
        let a = "127.0.0.12:32768";
        let b = "127.0.0.13:32768";
        let c = "127.0.0.14:32768";
        /// Name, table before, table after, the changes.
        type Case = (&'static str, Vec<MeshEntry>, Vec<MeshEntry>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            ("nothing to nothing", vec![], vec![], vec![]),
            (
                "a port is added",
                vec![],
                vec![entry("web", Protocol::Tcp, 8080, &[a, b])],
                vec!["open 8080/tcp web [127.0.0.12:32768, 127.0.0.13:32768]"],
            ),
            ("a port is removed", vec![entry("web", Protocol::Tcp, 8080, &[a])], vec![], vec!["close 8080/tcp"]),
            (
                "the same table changes nothing",
                vec![entry("web", Protocol::Tcp, 8080, &[a, b])],
                vec![entry("web", Protocol::Tcp, 8080, &[a, b])],
                vec![],
            ),
            (
                "a backend joins",
                vec![entry("web", Protocol::Tcp, 8080, &[a, b])],
                vec![entry("web", Protocol::Tcp, 8080, &[a, b, c])],
                vec!["retarget 8080/tcp web [127.0.0.12:32768, 127.0.0.13:32768, 127.0.0.14:32768]"],
            ),
            (
                "a backend leaves",
                vec![entry("web", Protocol::Tcp, 8080, &[a, b, c])],
                vec![entry("web", Protocol::Tcp, 8080, &[a, c])],
                vec!["retarget 8080/tcp web [127.0.0.12:32768, 127.0.0.14:32768]"],
            ),
            (
                "the last backend leaves: refuse",
                vec![entry("web", Protocol::Tcp, 8080, &[a])],
                vec![entry("web", Protocol::Tcp, 8080, &[])],
                vec!["retarget 8080/tcp web refuse"],
            ),
            (
                "a port published with no running task refuses from the start",
                vec![],
                vec![entry("web", Protocol::Udp, 53, &[])],
                vec!["open 53/udp web refuse"],
            ),
            (
                "a refusing port gets its first backend",
                vec![entry("web", Protocol::Tcp, 8080, &[])],
                vec![entry("web", Protocol::Tcp, 8080, &[b])],
                vec!["retarget 8080/tcp web [127.0.0.13:32768]"],
            ),
            (
                "closes come before opens, each in port order",
                vec![
                    entry("old", Protocol::Tcp, 9000, &[a]),
                    entry("dns", Protocol::Udp, 53, &[a]),
                    entry("web", Protocol::Tcp, 8080, &[a]),
                ],
                vec![
                    entry("new", Protocol::Tcp, 7000, &[b]),
                    entry("web", Protocol::Tcp, 8080, &[b]),
                    entry("dns", Protocol::Udp, 5353, &[b]),
                ],
                vec![
                    "close 9000/tcp",
                    "close 53/udp",
                    "open 7000/tcp new [127.0.0.13:32768]",
                    "retarget 8080/tcp web [127.0.0.13:32768]",
                    "open 5353/udp dns [127.0.0.13:32768]",
                ],
            ),
            (
                "a port changes hands between services",
                vec![entry("old", Protocol::Tcp, 8080, &[a])],
                vec![entry("new", Protocol::Tcp, 8080, &[a])],
                vec!["retarget 8080/tcp new [127.0.0.12:32768]"],
            ),
            (
                "backend order matters (it is the rotation)",
                vec![entry("web", Protocol::Tcp, 8080, &[a, b])],
                vec![entry("web", Protocol::Tcp, 8080, &[b, a])],
                vec!["retarget 8080/tcp web [127.0.0.13:32768, 127.0.0.12:32768]"],
            ),
        ];
        let node: IpAddr = NODE.parse().unwrap();
        for (name, from, to, want) in cases {
            let cur = desired(&table(from), node);
            let des = desired(&table(to), node);
            let changes = diff(&cur, &des);
            let got: Vec<String> = changes.iter().map(render).collect();
            assert_eq!(got, want, "case: {name}");
            // Applying the diff lands exactly on the desired mesh, and then
            // there is nothing left to do.
            let next = apply(&cur, node, &changes);
            assert_eq!(next, des, "case: {name}");
            assert!(diff(&next, &des).is_empty(), "case: {name}");
        }
    }

    #[test]
    fn a_new_node_address_reopens_every_port() {
        let t = table(vec![entry("web", Protocol::Tcp, 8080, &["127.0.0.12:1"]), entry("dns", Protocol::Udp, 53, &[])]);
        let cur = desired(&t, "127.0.0.11".parse().unwrap());
        let des = desired(&t, "127.0.0.21".parse().unwrap());
        let got: Vec<String> = diff(&cur, &des).iter().map(render).collect();
        assert_eq!(
            got,
            vec!["close 8080/tcp", "close 53/udp", "open 8080/tcp web [127.0.0.12:1]", "open 53/udp dns refuse",]
        );
    }
}
