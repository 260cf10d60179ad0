//! The in-kernel data path: nftables DNAT with round robin, the way
//! kube-proxy's nftables mode works (this kernel has no IPVS).
//!
//! Each node owns one table, `shoal_<first 12 of its node id>`, so several
//! nodes can share a machine. In it:
//!
//! - per published port a chain `p_<proto>_<port>` holding one rule,
//!   `dnat to numgen inc mod N map { 0 : backend0, … }`: the kernel picks the
//!   next backend for each new connection (or UDP flow); conntrack keeps
//!   the rest of the flow on it;
//! - a verdict map `ports` (protocol . port → `goto` that chain), looked up
//!   for packets to the node's advertise address, from the `output` hook
//!   (connections made on this machine, `curl` to the node's own address)
//!   and the `prerouting` hook (from elsewhere);
//! - a set `refused` of ports with no running task, rejected from the
//!   `input` hook at once (TCP reset, ICMP port unreachable);
//! - a `postrouting` SNAT to the node's address for DNATed flows (marked
//!   with [`SNAT_MARK`]), so a backend on another machine answers through
//!   this node, and a backend sees every mesh connection come from the node
//!   that forwarded it (as the userspace proxy's do).
//!
//! Nodes in tests advertise 127.0.S.x. A connection made on the machine to
//! such an address is DNATed in the output hook to another loopback address
//! and never leaves `lo`; conntrack undoes the DNAT on the answers, so
//! `route_localnet` is not needed (it would only matter for a packet coming
//! in on a real interface, a container's veth say, for a loopback address,
//! which the kernel drops as a martian). The SNAT matters there all the
//! same: without it, the client picks its port for the node's address while
//! the backend's TIME_WAIT sockets are keyed by the DNATed tuple, so under
//! connection churn new SYNs land on old TIME_WAITs, fail PAWS, and wait a
//! second for their retransmit (seen as TcpExtPAWSTimewait in `nstat`).
//!
//! Every change is one `nft -f -` transaction, so packets see the old rules
//! or the new, never a mix. A changed port's chain is flushed and refilled;
//! the whole table is only rebuilt at start (deleting a stale one a killed
//! node left behind) and if an incremental change fails.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;

use common::ids::NodeId;
use common::mesh::Protocol;

use super::plan::{Change, DesiredMesh, Forward, PortKey};
use super::MeshError;

/// The packet mark bit that asks for the SNAT in `postrouting` (kube-proxy
/// uses 0x4000 for its masquerade; ours differs so both can run).
pub const SNAT_MARK: u32 = 0x0002_0000;

/// Before Docker's and any `iptables-nft` nat chains (dstnat, -100), so the
/// mesh decides first for its own address and ports.
const DNAT_PRIORITY: i32 = -110;
/// Before the filter table's input chain (0).
const REFUSE_PRIORITY: i32 = -10;
/// Right before srcnat (100).
const SNAT_PRIORITY: i32 = 90;
/// The netdev ingress hook of `preserve-source` forwarding: first.
const FORWARD_PRIORITY: i32 = -500;

/// One node's nftables table: its name, family and the address it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftTable {
    name: String,
    family: &'static str,
    addr: IpAddr,
    /// The interface that holds `addr`, where connections from other
    /// machines arrive. Known: a connection from there to a task on this
    /// node goes straight to the container with its source kept. Unknown
    /// (the address is on no interface here): every flow is SNATed.
    ext_if: Option<String>,
}

impl NftTable {
    pub fn for_node(node: &NodeId, addr: IpAddr) -> Self {
        // Node ids are lowercase base 36: already a valid nft identifier.
        let short: String = node.short().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        NftTable {
            name: format!("shoal_{short}"),
            family: if addr.is_ipv4() { "ip" } else { "ip6" },
            addr,
            ext_if: None,
        }
    }

    /// The table with the interface that holds the node's address (see
    /// [`interface_of`]).
    pub fn with_interface(mut self, ext_if: Option<String>) -> Self {
        // nft quotes the name; one that could break out of the quotes is
        // not an interface name the kernel gives out anyway.
        self.ext_if = ext_if.filter(|n| !n.is_empty() && n.len() < 16 && !n.contains(['"', '\\', '\n']));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip` or `ip6`.
    pub fn family(&self) -> &str {
        self.family
    }

    /// `ip shoal_abc`, as nft commands name the table.
    pub fn qualified(&self) -> String {
        format!("{} {}", self.family, self.name)
    }

    fn daddr(&self) -> &'static str {
        if self.addr.is_ipv4() {
            "ip daddr"
        } else {
            "ip6 daddr"
        }
    }

    /// Deletes the table if it exists (`add` then `delete` is the idiom for
    /// that in nft 1.0.6, which has no `destroy`).
    pub fn teardown(&self) -> String {
        let t = self.qualified();
        let n = format!("netdev {}", self.name);
        format!("add table {t}\ndelete table {t}\nadd table {n}\ndelete table {n}\n")
    }

    /// The interface `preserve-source` forwarding works on: the node's
    /// own, for an IPv4 address that is not loopback (nothing is forwarded
    /// between loopback addresses).
    fn dsr_interface(&self) -> Option<&str> {
        let ext = self.ext_if.as_deref()?;
        (self.addr.is_ipv4() && !self.addr.is_loopback() && ext != "lo").then_some(ext)
    }

    /// Changes to a mesh with `preserve-source` ports are made by a
    /// rebuild: their rules span two tables and every node's address.
    pub fn needs_rebuild(&self, current: &DesiredMesh, next: &DesiredMesh) -> bool {
        self.dsr_interface().is_some() && (current.preserves_sources() || next.preserves_sources())
    }

    /// The whole table for `mesh`, replacing whatever is there, in one
    /// transaction.
    pub fn rebuild(&self, mesh: &DesiredMesh) -> String {
        let mut s = self.teardown();
        let _ = writeln!(s, "table {} {{", self.qualified());
        let _ = writeln!(s, "\tset refused {{\n\t\ttype inet_proto . inet_service");
        let refused: Vec<String> = mesh.ports.iter().filter(|(_, f)| f.refuses()).map(|(k, _)| element(*k)).collect();
        if !refused.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", refused.join(", "));
        }
        s.push_str("\t}\n");
        let mut verdicts = Vec::new();
        for (k, f) in &mesh.ports {
            if f.refuses() {
                continue;
            }
            let _ = writeln!(s, "\tchain {} {{\n\t\t{}\n\t}}", chain(*k), self.dnat_rule(*k, f));
            verdicts.push(format!("{} : goto {}", element(*k), chain(*k)));
        }
        s.push_str("\tmap ports {\n\t\ttype inet_proto . inet_service : verdict\n");
        if !verdicts.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", verdicts.join(", "));
        }
        s.push_str("\t}\n");
        let (daddr, addr) = (self.daddr(), self.addr);
        // preserve-source: a flow from another machine, addressed to any
        // node (this one, or one that forwarded it here unchanged), goes to
        // a task of this node without SNAT; its answers leave from here
        // with the address the client called.
        let dsr = self.dsr_interface().filter(|_| mesh.preserves_sources());
        if let Some(ext) = dsr {
            let mut local = Vec::new();
            for (k, f) in mesh.ports.iter().filter(|(_, f)| f.preserve_source) {
                let targets: Vec<SocketAddr> =
                    f.backends.iter().filter(|b| b.ip() == addr).filter_map(|b| f.direct.get(b)).copied().collect();
                if targets.is_empty() {
                    continue;
                }
                let map: Vec<String> =
                    targets.iter().enumerate().map(|(i, t)| format!("{i} : {}", target(t))).collect();
                let _ = writeln!(
                    s,
                    "\tchain l{} {{\n\t\tmeta l4proto {} dnat to numgen inc mod {} map {{ {} }}\n\t}}",
                    chain(*k),
                    k.protocol,
                    targets.len(),
                    map.join(", ")
                );
                local.push(format!("{} : goto l{}", element(*k), chain(*k)));
            }
            s.push_str("\tmap local_ports {\n\t\ttype inet_proto . inet_service : verdict\n");
            if !local.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", local.join(", "));
            }
            s.push_str("\t}\n\tset peers {\n\t\ttype ipv4_addr\n");
            let mut peers: Vec<String> = mesh.peers.iter().map(IpAddr::to_string).collect();
            if !mesh.peers.contains(&addr) {
                peers.push(addr.to_string());
            }
            let _ = writeln!(s, "\t\telements = {{ {} }}\n\t}}", peers.join(", "));
            let _ = writeln!(
                s,
                "\tchain prerouting {{\n\t\ttype nat hook prerouting priority {DNAT_PRIORITY}; policy accept;\n\t\tiifname \"{ext}\" ip daddr @peers meta l4proto . th dport vmap @local_ports\n\t\t{daddr} {addr} meta l4proto . th dport vmap @ports\n\t}}"
            );
        }
        for hook in ["output", "prerouting"].into_iter().filter(|h| dsr.is_none() || *h == "output") {
            let _ = writeln!(
                s,
                "\tchain {hook} {{\n\t\ttype nat hook {hook} priority {DNAT_PRIORITY}; policy accept;\n\t\t{daddr} {addr} meta l4proto . th dport vmap @ports\n\t}}"
            );
        }
        let unreachable = if self.addr.is_ipv4() {
            "reject with icmp type port-unreachable"
        } else {
            "reject with icmpv6 type port-unreachable"
        };
        let _ = writeln!(
            s,
            "\tchain refuse {{\n\t\ttype filter hook input priority {REFUSE_PRIORITY}; policy accept;\n\t\t{daddr} {addr} meta l4proto tcp meta l4proto . th dport @refused reject with tcp reset\n\t\t{daddr} {addr} meta l4proto udp meta l4proto . th dport @refused {unreachable}\n\t}}"
        );
        let _ = writeln!(
            s,
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority {SNAT_PRIORITY}; policy accept;"
        );
        let (mark, clear) = (
            format!("meta mark & {SNAT_MARK:#x} == {SNAT_MARK:#x}"),
            format!("meta mark set meta mark & {:#x}", !SNAT_MARK),
        );
        if let Some(ext) = &self.ext_if {
            // To a container on this node (it leaves by a bridge, not the
            // node's interface): from another machine, keep the client's
            // address (the answers come back through this node anyway);
            // made here or by a task here (hairpin), masquerade as the
            // bridge's address, where the container's answers go.
            let _ = writeln!(s, "\t\t{mark} oifname != \"{ext}\" iifname \"{ext}\" {clear} accept");
            let _ = writeln!(s, "\t\t{mark} oifname != \"{ext}\" {clear} masquerade");
        }
        let _ = writeln!(s, "\t\t{mark} {clear} snat to {addr}\n\t}}");
        s.push_str("}\n");
        if let Some(ext) = dsr {
            s.push_str(&self.forwarding_table(mesh, ext));
        }
        s
    }

    /// The netdev table that sends a `preserve-source` flow arriving here
    /// for a task on another node to that node as it is (its MAC, the IP
    /// header untouched: the nodes must share an L2 segment), before this
    /// node's IP stack sees it. The choice is a hash of the client's
    /// address and port, the same for every packet of the flow, over the
    /// port's tasks; a task of this node: the packet goes on up here.
    fn forwarding_table(&self, mesh: &DesiredMesh, ext: &str) -> String {
        let mut chains = std::collections::BTreeSet::new();
        let mut rules = Vec::new();
        for (k, f) in mesh.ports.iter().filter(|(_, f)| f.preserve_source && !f.refuses()) {
            if f.backends.iter().all(|b| b.ip() == self.addr) {
                continue;
            }
            let picks: Vec<String> = f
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if b.ip() == self.addr {
                        format!("{i} : accept")
                    } else {
                        chains.insert(b.ip());
                        format!("{i} : goto {}", fwd_chain(b.ip()))
                    }
                })
                .collect();
            rules.push(format!(
                "\t\tip daddr {} meta l4proto {} th dport {} jhash ip saddr . th sport mod {} vmap {{ {} }}",
                self.addr,
                k.protocol,
                k.port,
                f.backends.len(),
                picks.join(", ")
            ));
        }
        if rules.is_empty() {
            return String::new();
        }
        let mut s = format!("table netdev {} {{\n", self.name);
        for ip in chains {
            let _ = writeln!(s, "\tchain {} {{\n\t\tfwd ip to {ip} device \"{ext}\"\n\t}}", fwd_chain(ip));
        }
        let _ = writeln!(
            s,
            "\tchain ingress {{\n\t\ttype filter hook ingress device \"{ext}\" priority {FORWARD_PRIORITY}; policy accept;\n{}\n\t}}",
            rules.join("\n")
        );
        s.push_str("}\n");
        s
    }

    /// The changes as one transaction against the table as `current`
    /// describes it. A port that keeps forwarding has its chain flushed and
    /// refilled; otherwise its map element goes before the chain it names.
    pub fn update(&self, current: &DesiredMesh, changes: &[Change]) -> String {
        let t = self.qualified();
        let mut s = String::new();
        for c in changes {
            let k = c.port();
            let el = element(k);
            let p = chain(k);
            let now = current.ports.get(&k);
            let next = match c {
                Change::Close { .. } => None,
                Change::Open { to, .. } | Change::Retarget { to, .. } => Some(to),
            };
            match (now.map(Forward::refuses), next) {
                // Forwarding before and after: only the chain's rule changes.
                (Some(false), Some(to)) if !to.refuses() => {
                    let _ = writeln!(s, "flush chain {t} {p}");
                    let _ = writeln!(s, "add rule {t} {p} {}", self.dnat_rule(k, to));
                }
                (Some(true), Some(to)) if to.refuses() => {}
                (before, after) => {
                    match before {
                        Some(true) => {
                            let _ = writeln!(s, "delete element {t} refused {{ {el} }}");
                        }
                        Some(false) => {
                            let _ = writeln!(s, "delete element {t} ports {{ {el} }}");
                            let _ = writeln!(s, "delete chain {t} {p}");
                        }
                        None => {}
                    }
                    match after {
                        Some(to) if to.refuses() => {
                            let _ = writeln!(s, "add element {t} refused {{ {el} }}");
                        }
                        Some(to) => {
                            let _ = writeln!(s, "add chain {t} {p}");
                            let _ = writeln!(s, "add rule {t} {p} {}", self.dnat_rule(k, to));
                            let _ = writeln!(s, "add element {t} ports {{ {el} : goto {p} }}");
                        }
                        None => {}
                    }
                }
            }
        }
        s
    }

    /// Where the DNAT sends `f`'s connections for backend `b`: a task on
    /// this node at its container, only when the postrouting rules can tell
    /// where a flow came from; otherwise the host port.
    fn dnat_target(&self, f: &Forward, b: &SocketAddr) -> SocketAddr {
        if self.ext_if.is_some() {
            *f.direct.get(b).unwrap_or(b)
        } else {
            *b
        }
    }

    /// The UDP DNAT targets that `current` sends flows to and `next` no
    /// longer does, per port: conntrack would keep their flows there (a UDP
    /// "connection" never ends by itself), so they are flushed.
    pub fn udp_targets_gone(&self, current: &DesiredMesh, next: &DesiredMesh) -> Vec<(PortKey, SocketAddr)> {
        let mut out = Vec::new();
        for (k, f) in current.ports.iter().filter(|(k, _)| k.protocol == Protocol::Udp) {
            let kept: Vec<SocketAddr> = match next.ports.get(k) {
                Some(n) if next.addr == current.addr => n.backends.iter().map(|b| self.dnat_target(n, b)).collect(),
                _ => Vec::new(),
            };
            for b in &f.backends {
                let t = self.dnat_target(f, b);
                if !kept.contains(&t) && !out.contains(&(*k, t)) {
                    out.push((*k, t));
                }
            }
        }
        out
    }

    fn dnat_rule(&self, k: PortKey, f: &Forward) -> String {
        let targets: Vec<String> =
            f.backends.iter().enumerate().map(|(i, b)| format!("{i} : {}", target(&self.dnat_target(f, b)))).collect();
        format!(
            "meta mark set meta mark | {SNAT_MARK:#x} meta l4proto {} dnat to numgen inc mod {} map {{ {} }}",
            k.protocol,
            f.backends.len(),
            targets.join(", ")
        )
    }
}

/// `f_10_0_0_12`: the chain forwarding to node 10.0.0.12.
fn fwd_chain(ip: IpAddr) -> String {
    format!("f_{}", ip.to_string().replace(['.', ':'], "_"))
}

/// `tcp . 8080`.
fn element(k: PortKey) -> String {
    format!("{} . {}", k.protocol, k.port)
}

/// `p_tcp_8080`.
fn chain(k: PortKey) -> String {
    format!("p_{}_{}", k.protocol, k.port)
}

/// `127.0.0.12 . 32768`, `[::1] . 32768` is written `::1 . 32768`.
fn target(b: &SocketAddr) -> String {
    format!("{} . {}", b.ip(), b.port())
}

/// The name of the interface that holds `addr` (`lo` for a loopback
/// address), if any does.
pub fn interface_of(addr: IpAddr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs {
        let Some(a) = ifa.address else { continue };
        let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
            (Some(v4), _) => IpAddr::V4(v4.ip()),
            (_, Some(v6)) => IpAddr::V6(v6.ip()),
            _ => continue,
        };
        if ip == addr {
            return Some(ifa.interface_name);
        }
    }
    None
}

/// Deletes the conntrack entries of UDP flows to `addr`:`port` that were
/// DNATed to `to`, with Debian's `conntrack` tool, so that their clients'
/// next datagrams start new flows to the backends that remain. Returns how
/// many entries went.
pub async fn flush_udp_flows(addr: IpAddr, port: u16, to: SocketAddr) -> Result<u64, MeshError> {
    let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    let out = tokio::process::Command::new("conntrack")
        .args(["-D", "-f", family, "-p", "udp", "--orig-dst", &addr.to_string(), "--orig-port-dst", &port.to_string()])
        .args(["--reply-src", &to.ip().to_string(), "--reply-port-src", &to.port().to_string()])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                MeshError::Io("conntrack not found (apt-get install conntrack): UDP flows stay on a removed task until they idle out".into())
            } else {
                MeshError::Io(format!("cannot run conntrack: {e}"))
            }
        })?;
    // It says how many went, on stderr, and exits 1 when that is none.
    let text = String::from_utf8_lossy(&out.stderr);
    let deleted = text.split_whitespace().find_map(|w| w.parse::<u64>().ok());
    match (out.status.success(), deleted) {
        (_, Some(n)) => Ok(n),
        (true, None) => Ok(0),
        (false, None) => Err(MeshError::Io(format!("conntrack: {}", text.trim()))),
    }
}

/// Runs `nft -f -` with `script` on stdin: one atomic transaction.
pub async fn run(script: &str) -> Result<(), MeshError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(script.as_bytes()).await.map_err(|e| MeshError::Nft(format!("cannot write to nft: {e}")))?;
    }
    let out = child.wait_with_output().await.map_err(|e| MeshError::Nft(format!("nft did not finish: {e}")))?;
    check(out.status.success(), &out.stderr)
}

/// [`run`] for places that cannot await (a stopping actor, a `Drop`).
pub fn run_blocking(script: &str) -> Result<(), MeshError> {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| MeshError::Nft(format!("cannot write to nft: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| MeshError::Nft(format!("nft did not finish: {e}")))?;
    check(out.status.success(), &out.stderr)
}

/// Can this process program nftables? Creates and deletes a scratch table,
/// which needs CAP_NET_ADMIN and a kernel with nf_tables.
pub async fn probe(table: &NftTable) -> Result<(), MeshError> {
    let scratch = format!("{}_probe", table.name);
    let t = format!("{} {scratch}", table.family);
    run(&format!("add table {t}\ndelete table {t}\n")).await
}

/// Is the table there? (`nft list table` fails for a missing one.)
pub async fn exists(table: &NftTable) -> Result<bool, MeshError> {
    let out = tokio::process::Command::new("nft")
        .args(["list", "table", table.family, &table.name])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(spawn_error)?;
    Ok(out.status.success())
}

/// Tables of this family named `shoal_*`, other than `ours`, whose DNAT
/// matches `addr`: left by a node that was killed on this address (two live
/// nodes never share an advertise address). Returns their names.
pub async fn remove_stale_tables(ours: &NftTable, addr: IpAddr) -> Result<Vec<String>, MeshError> {
    let out = tokio::process::Command::new("nft")
        .args(["list", "tables", ours.family])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(spawn_error)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let daddr = if addr.is_ipv4() { "ip daddr" } else { "ip6 daddr" };
    let needle = format!("{daddr} {addr} meta l4proto");
    let mut removed = Vec::new();
    for name in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|n| n.starts_with("shoal_") && *n != ours.name)
    {
        let chain = tokio::process::Command::new("nft")
            .args(["list", "chain", ours.family, name, "output"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(spawn_error)?;
        if String::from_utf8_lossy(&chain.stdout).contains(&needle) {
            let t = format!("{} {name}", ours.family);
            let n = format!("netdev {name}");
            run(&format!("add table {t}\ndelete table {t}\nadd table {n}\ndelete table {n}\n")).await?;
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}

fn spawn_error(e: std::io::Error) -> MeshError {
    if e.kind() == std::io::ErrorKind::NotFound {
        MeshError::NftMissing
    } else {
        MeshError::Nft(format!("cannot run nft: {e}"))
    }
}

fn check(ok: bool, stderr: &[u8]) -> Result<(), MeshError> {
    if ok {
        return Ok(());
    }
    let text = String::from_utf8_lossy(stderr);
    // nft prints the failing line and a caret line under it; the first line
    // says what went wrong.
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("failed");
    if text.contains("Operation not permitted") {
        return Err(MeshError::Nft(format!(
            "nft: {first} (the kernel mesh needs root or CAP_NET_ADMIN; --mesh userspace does not)"
        )));
    }
    Err(MeshError::Nft(format!("nft: {first}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::plan::{desired, diff};
    use common::ids::ServiceId;
    use common::mesh::{MeshEntry, MeshTable, Protocol};

    fn table(entries: &[(Protocol, u16, &[&str])]) -> MeshTable {
        MeshTable {
            entries: entries
                .iter()
                .map(|(protocol, published, backends)| MeshEntry {
                    service_id: ServiceId::from("s"),
                    service_name: "web".into(),
                    protocol: *protocol,
                    published: *published,
                    backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
                    direct: Default::default(),
                    preserve_source: false,
                    proxy_protocol: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn nft() -> NftTable {
        NftTable::for_node(&NodeId::from("abcdefghijkl0123456789xyz"), "127.0.0.11".parse().unwrap())
    }

    #[test]
    fn the_table_is_named_after_the_node() {
        let t = nft();
        assert_eq!(t.name(), "shoal_abcdefghijkl");
        assert_eq!(t.qualified(), "ip shoal_abcdefghijkl");
        let v6 = NftTable::for_node(&NodeId::from("n1"), "::1".parse().unwrap());
        assert_eq!(v6.qualified(), "ip6 shoal_n1");
    }

    #[test]
    fn a_rebuild_defines_the_whole_table() {
        let mesh = desired(
            &table(&[
                (Protocol::Tcp, 8080, &["127.0.0.12:32768", "127.0.0.13:32769"]),
                (Protocol::Udp, 53, &["127.0.0.12:32770"]),
                (Protocol::Tcp, 9000, &[]),
            ]),
            "127.0.0.11".parse().unwrap(),
        );
        let want = "\
add table ip shoal_abcdefghijkl
delete table ip shoal_abcdefghijkl
add table netdev shoal_abcdefghijkl
delete table netdev shoal_abcdefghijkl
table ip shoal_abcdefghijkl {
\tset refused {
\t\ttype inet_proto . inet_service
\t\telements = { tcp . 9000 }
\t}
\tchain p_tcp_8080 {
\t\tmeta mark set meta mark | 0x20000 meta l4proto tcp dnat to numgen inc mod 2 map { 0 : 127.0.0.12 . 32768, 1 : 127.0.0.13 . 32769 }
\t}
\tchain p_udp_53 {
\t\tmeta mark set meta mark | 0x20000 meta l4proto udp dnat to numgen inc mod 1 map { 0 : 127.0.0.12 . 32770 }
\t}
\tmap ports {
\t\ttype inet_proto . inet_service : verdict
\t\telements = { tcp . 8080 : goto p_tcp_8080, udp . 53 : goto p_udp_53 }
\t}
\tchain output {
\t\ttype nat hook output priority -110; policy accept;
\t\tip daddr 127.0.0.11 meta l4proto . th dport vmap @ports
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority -110; policy accept;
\t\tip daddr 127.0.0.11 meta l4proto . th dport vmap @ports
\t}
\tchain refuse {
\t\ttype filter hook input priority -10; policy accept;
\t\tip daddr 127.0.0.11 meta l4proto tcp meta l4proto . th dport @refused reject with tcp reset
\t\tip daddr 127.0.0.11 meta l4proto udp meta l4proto . th dport @refused reject with icmp type port-unreachable
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority 90; policy accept;
\t\tmeta mark & 0x20000 == 0x20000 meta mark set meta mark & 0xfffdffff snat to 127.0.0.11
\t}
}
";
        assert_eq!(nft().rebuild(&mesh), want);
        // An empty mesh still has its hooks, and no empty element lists
        // (nft rejects `elements = { }`).
        let empty = nft().rebuild(&DesiredMesh::empty("127.0.0.11".parse().unwrap()));
        assert!(!empty.contains("elements"), "{empty}");
        assert!(empty.contains("chain output"), "{empty}");
    }

    #[test]
    fn a_task_on_this_node_is_reached_at_its_container_keeping_the_source() {
        let mut t = table(&[(Protocol::Tcp, 8080, &["127.0.0.11:32768", "127.0.0.13:32769"])]);
        t.entries[0].direct = [
            ("127.0.0.11:32768".parse().unwrap(), "172.17.0.5:80".parse().unwrap()),
            // Another node's container: not ours to reach.
            ("127.0.0.13:32769".parse().unwrap(), "172.17.0.9:80".parse().unwrap()),
        ]
        .into_iter()
        .collect();
        let mesh = desired(&t, "127.0.0.11".parse().unwrap());
        let with_if = nft().with_interface(Some("eth0".into())).rebuild(&mesh);
        assert!(
            with_if.contains("map { 0 : 172.17.0.5 . 80, 1 : 127.0.0.13 . 32769 }"),
            "the local task at its container, the remote one at its host port: {with_if}"
        );
        let post = "\
\tchain postrouting {
\t\ttype nat hook postrouting priority 90; policy accept;
\t\tmeta mark & 0x20000 == 0x20000 oifname != \"eth0\" iifname \"eth0\" meta mark set meta mark & 0xfffdffff accept
\t\tmeta mark & 0x20000 == 0x20000 oifname != \"eth0\" meta mark set meta mark & 0xfffdffff masquerade
\t\tmeta mark & 0x20000 == 0x20000 meta mark set meta mark & 0xfffdffff snat to 127.0.0.11
\t}
";
        assert!(with_if.contains(post), "{with_if}");
        // Without the interface the flows cannot be told apart: all go
        // through host ports and are SNATed, as before.
        let without = nft().rebuild(&mesh);
        assert!(without.contains("map { 0 : 127.0.0.11 . 32768, 1 : 127.0.0.13 . 32769 }"), "{without}");
        assert!(!without.contains("masquerade"), "{without}");
        // A name that could break out of nft's quotes is not used.
        assert_eq!(nft().with_interface(Some("a\"b".into())).rebuild(&mesh), without);
    }

    #[test]
    fn preserve_source_forwards_remote_flows_unchanged_and_takes_any_nodes() {
        let mut t = table(&[(Protocol::Tcp, 9300, &["10.0.0.11:32768", "10.0.0.12:32769", "10.0.0.13:32770"])]);
        t.entries[0].preserve_source = true;
        t.entries[0].direct = [("10.0.0.11:32768".parse().unwrap(), "172.17.0.5:80".parse().unwrap())].into();
        t.nodes = ["10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"].iter().map(|a| a.parse().unwrap()).collect();
        let node: IpAddr = "10.0.0.11".parse().unwrap();
        let mesh = desired(&t, node);
        let table =
            NftTable::for_node(&NodeId::from("abcdefghijkl0123456789xyz"), node).with_interface(Some("eth0".into()));
        let got = table.rebuild(&mesh);
        std::fs::write(std::env::temp_dir().join("shoal-dsr-ruleset.nft"), &got).unwrap();
        for want in [
            // A flow forwarded here, or hashed to this node: to its task, no SNAT.
            "\tchain lp_tcp_9300 {\n\t\tmeta l4proto tcp dnat to numgen inc mod 1 map { 0 : 172.17.0.5 . 80 }\n\t}",
            "elements = { tcp . 9300 : goto lp_tcp_9300 }",
            "elements = { 10.0.0.11, 10.0.0.12, 10.0.0.13, 10.0.0.14 }",
            "\t\tiifname \"eth0\" ip daddr @peers meta l4proto . th dport vmap @local_ports\n\t\tip daddr 10.0.0.11 meta l4proto . th dport vmap @ports",
            // The netdev table: the same hash for every packet of a flow.
            "table netdev shoal_abcdefghijkl {",
            "\tchain f_10_0_0_12 {\n\t\tfwd ip to 10.0.0.12 device \"eth0\"\n\t}",
            "type filter hook ingress device \"eth0\" priority -500; policy accept;",
            "ip daddr 10.0.0.11 meta l4proto tcp th dport 9300 jhash ip saddr . th sport mod 3 vmap { 0 : accept, 1 : goto f_10_0_0_12, 2 : goto f_10_0_0_13 }",
        ] {
            assert!(got.contains(want), "missing {want:?} in\n{got}");
        }
        assert_eq!(got.matches("chain prerouting").count(), 1, "{got}");
        assert!(table.needs_rebuild(&mesh, &mesh));
        // Another node with no task of its own forwards them all.
        let other =
            NftTable::for_node(&NodeId::from("n4"), "10.0.0.14".parse().unwrap()).with_interface(Some("eth0".into()));
        let got = other.rebuild(&desired(&t, "10.0.0.14".parse().unwrap()));
        assert!(got.contains("vmap { 0 : goto f_10_0_0_11, 1 : goto f_10_0_0_12, 2 : goto f_10_0_0_13 }"), "{got}");
        assert!(!got.contains("lp_tcp_9300"), "{got}");
        // On loopback addresses (one machine, no L2) it is not attempted.
        let lo = nft().with_interface(Some("lo".into()));
        assert!(!lo.rebuild(&desired(&t, "127.0.0.11".parse().unwrap())).contains("netdev shoal_abcdefghijkl {"));
    }

    #[test]
    fn the_udp_flows_of_a_backend_that_left_are_flushed() {
        let node: IpAddr = "127.0.0.11".parse().unwrap();
        let cur = desired(
            &table(&[
                (Protocol::Udp, 53, &["127.0.0.12:1", "127.0.0.13:1"]),
                (Protocol::Udp, 54, &["127.0.0.12:2"]),
                (Protocol::Udp, 55, &["127.0.0.12:3"]),
                (Protocol::Tcp, 80, &["127.0.0.12:4"]),
            ]),
            node,
        );
        let next = desired(
            &table(&[
                (Protocol::Udp, 53, &["127.0.0.13:1", "127.0.0.14:1"]),
                (Protocol::Udp, 54, &[]),
                (Protocol::Tcp, 80, &[]),
            ]),
            node,
        );
        let gone: Vec<String> = nft().udp_targets_gone(&cur, &next).iter().map(|(k, t)| format!("{k} {t}")).collect();
        // TCP connections end by themselves; a UDP flow would not.
        assert_eq!(gone, ["53/udp 127.0.0.12:1", "54/udp 127.0.0.12:2", "55/udp 127.0.0.12:3"]);
        assert!(nft().udp_targets_gone(&next, &next).is_empty());
    }

    #[test]
    fn updates_touch_only_the_changed_ports() {
        let node: IpAddr = "127.0.0.11".parse().unwrap();
        let cur = desired(
            &table(&[
                (Protocol::Tcp, 8080, &["127.0.0.12:1"]),
                (Protocol::Tcp, 8081, &["127.0.0.12:2"]),
                (Protocol::Tcp, 9000, &[]),
                (Protocol::Udp, 53, &["127.0.0.12:3"]),
            ]),
            node,
        );
        let des = desired(
            &table(&[
                (Protocol::Tcp, 8080, &["127.0.0.12:1", "127.0.0.13:1"]),
                (Protocol::Tcp, 8081, &["127.0.0.12:2"]),
                (Protocol::Tcp, 9000, &["127.0.0.12:4"]),
                (Protocol::Udp, 53, &[]),
                (Protocol::Udp, 5353, &["127.0.0.12:5"]),
            ]),
            node,
        );
        let got = nft().update(&cur, &diff(&cur, &des));
        let t = "ip shoal_abcdefghijkl";
        let m = "meta mark set meta mark | 0x20000";
        let want = format!(
            "\
flush chain {t} p_tcp_8080
add rule {t} p_tcp_8080 {m} meta l4proto tcp dnat to numgen inc mod 2 map {{ 0 : 127.0.0.12 . 1, 1 : 127.0.0.13 . 1 }}
delete element {t} refused {{ tcp . 9000 }}
add chain {t} p_tcp_9000
add rule {t} p_tcp_9000 {m} meta l4proto tcp dnat to numgen inc mod 1 map {{ 0 : 127.0.0.12 . 4 }}
add element {t} ports {{ tcp . 9000 : goto p_tcp_9000 }}
delete element {t} ports {{ udp . 53 }}
delete chain {t} p_udp_53
add element {t} refused {{ udp . 53 }}
add chain {t} p_udp_5353
add rule {t} p_udp_5353 {m} meta l4proto udp dnat to numgen inc mod 1 map {{ 0 : 127.0.0.12 . 5 }}
add element {t} ports {{ udp . 5353 : goto p_udp_5353 }}
"
        );
        assert_eq!(got, want);
        // Closing a port removes its element and chain, nothing else.
        let none = desired(&MeshTable::default(), node);
        let got = nft().update(&des, &diff(&des, &none));
        assert_eq!(got.lines().count(), 1 + 2 * 4, "{got}");
        assert!(got.starts_with(&format!("delete element {t} ports {{ tcp . 8080 }}\n")), "{got}");
        assert!(got.contains(&format!("delete element {t} refused {{ udp . 53 }}\n")), "{got}");
    }
}
