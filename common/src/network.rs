//! Overlay networks, as data: what a user asks for ([`NetworkSpec`]), what
//! the store keeps ([`Network`], with the subnets the leader gave out), what
//! a service and its tasks hold ([`NetworkAttachment`], [`Vip`],
//! [`TaskAddress`]) and the table every node programs from
//! ([`NetworkEntry`], sent inside the mesh table).
//!
//! # Address layout
//!
//! A network's range (`--subnet`, or the next free /16 of
//! [`DEFAULT_POOL`]) is cut in two halves:
//!
//! - the lower half is the tasks' L2 subnet: every node's Docker bridge for
//!   the network has this subnet, and the nodes' bridges are joined by a
//!   VXLAN device, so tasks on any node reach each other directly. Each
//!   node gets its own block of it ([`Network::node_prefix`]: /24 of a /16)
//!   and gives its tasks addresses from that block only, so two nodes never
//!   hand out the same address. In a block, the first address is left
//!   unused, the second is the node's gateway (and DNS resolver) and the
//!   last is left unused; the rest are tasks';
//! - the upper half holds the services' virtual IPs. They are off the
//!   tasks' subnet on purpose: a task sends a VIP's packets to its gateway,
//!   its node, whose nftables rules DNAT them to a running task.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{NetworkId, NodeId};
use crate::time::Millis;

/// Where networks without `--subnet` get their range: one /16 each,
/// unless the cluster was made with other pools ([`AddrPool`]).
pub const DEFAULT_POOL: Subnet = Subnet { addr: Ipv4Addr::new(10, 0, 0, 0), prefix: 8 };
/// The prefix of a network carved from [`DEFAULT_POOL`].
pub const DEFAULT_PREFIX: u8 = 16;
/// A network range is at least this large (/26: two node blocks of 16) …
pub const MAX_NETWORK_PREFIX: u8 = 26;
/// … and at most this large.
pub const MIN_NETWORK_PREFIX: u8 = 8;
/// A node block is never smaller than a /28 (13 tasks).
pub const MAX_NODE_PREFIX: u8 = 28;
/// VXLAN ids given to networks start here.
pub const FIRST_VNI: u32 = 4096;
/// The reserved `--network host`: the task shares its node's network stack.
pub const HOST_NETWORK: &str = "host";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.20.0.0/16")]
    Subnet(String),
    #[error("subnet {0} is too small or too large: a network's subnet must be /{MIN_NETWORK_PREFIX} to /{MAX_NETWORK_PREFIX}")]
    SubnetSize(Subnet),
    #[error(
        "invalid network name {0:?}: a network name starts with a letter or digit and has only letters, \
         digits, '_', '.' and '-' (at most 255), as in Docker"
    )]
    Name(String),
    #[error("network name {0:?} is reserved")]
    Reserved(String),
    #[error("unknown network driver {0:?}: shoal has the overlay driver")]
    Driver(String),
    #[error("invalid network attachment {0:?}: {1}")]
    Attachment(String, String),
    #[error("invalid endpoint mode {0:?}: expected vip or dnsrr")]
    EndpointMode(String),
    #[error(
        "invalid --default-addr-pool-mask-length {mask}: a network's subnet must be /{MIN_NETWORK_PREFIX} to \
         /{MAX_NETWORK_PREFIX}, and no larger than the pool {pool}"
    )]
    PoolMask { mask: u8, pool: Subnet },
    #[error("address pools {0} and {1} overlap")]
    PoolOverlap(Subnet, Subnet),
    #[error("invalid --opt routing={0:?}: expected vxlan (the default) or direct")]
    Routing(String),
    #[error(
        "--opt encrypted needs the VXLAN overlay: it cannot be combined with --opt routing=direct \
         (direct routing sends task traffic between hosts as it is)"
    )]
    EncryptedDirect,
}

/// Where networks created without `--subnet` get their range: the lowest
/// free subnet of `mask_length` in the first pool that has one. Chosen at
/// `shoal daemon --init` (`--default-addr-pool`, repeatable, and
/// `--default-addr-pool-mask-length`, as `docker swarm init` takes them);
/// by default [`DEFAULT_POOL`] in /[`DEFAULT_PREFIX`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrPool {
    pub pools: Vec<Subnet>,
    pub mask_length: u8,
}

impl Default for AddrPool {
    fn default() -> AddrPool {
        AddrPool { pools: vec![DEFAULT_POOL], mask_length: DEFAULT_PREFIX }
    }
}

impl AddrPool {
    /// `pools` (the default one if empty) cut in `mask_length` subnets
    /// (the default's /16 if `None`), checked.
    pub fn new(pools: Vec<Subnet>, mask_length: Option<u8>) -> Result<AddrPool, NetworkError> {
        let default = AddrPool::default();
        let pools = if pools.is_empty() { default.pools } else { pools };
        let mask = mask_length.unwrap_or(default.mask_length);
        for (i, a) in pools.iter().enumerate() {
            if !(MIN_NETWORK_PREFIX..=MAX_NETWORK_PREFIX).contains(&mask) || mask < a.prefix {
                return Err(NetworkError::PoolMask { mask, pool: *a });
            }
            if let Some(b) = pools[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(NetworkError::PoolOverlap(*a, *b));
            }
        }
        Ok(AddrPool { pools, mask_length: mask })
    }

    pub fn is_default(&self) -> bool {
        *self == AddrPool::default()
    }

    /// Every subnet a network may be given, in the order they are tried.
    pub fn subnets(&self) -> impl Iterator<Item = Subnet> + '_ {
        self.pools
            .iter()
            .flat_map(move |p| (0..p.children(self.mask_length)).filter_map(move |i| p.child(self.mask_length, i)))
    }
}

impl fmt::Display for AddrPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pools: Vec<String> = self.pools.iter().map(Subnet::to_string).collect();
        write!(f, "{}", pools.join(", "))
    }
}

/// An IPv4 range, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// `addr/prefix` with the host bits cleared; `None` past /32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Subnet> {
        (prefix <= 32).then(|| Subnet { addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix })
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    fn start(&self) -> u32 {
        u32::from(self.addr)
    }

    fn end(&self) -> u32 {
        self.start() | !mask(self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.start()
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.start() <= other.end() && other.start() <= self.end()
    }

    /// The `i`th address, if the range has one.
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(self.start() + i as u32))
    }

    /// The `i`th sub-range of prefix `prefix`.
    pub fn child(&self, prefix: u8, i: u64) -> Option<Subnet> {
        if prefix < self.prefix || prefix > 32 || i >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        Subnet::new(Ipv4Addr::from(self.start() + (i << (32 - prefix)) as u32), prefix)
    }

    /// How many sub-ranges of prefix `prefix` it holds.
    pub fn children(&self, prefix: u8) -> u64 {
        if prefix < self.prefix {
            0
        } else {
            1u64 << (prefix - self.prefix)
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        let bad = || NetworkError::Subnet(s.to_string());
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let net = Subnet::new(ip, prefix).ok_or_else(bad)?;
        if net.addr != ip {
            // 10.0.0.1/16 is most likely a typo for 10.0.0.0/16: say so.
            return Err(bad());
        }
        Ok(net)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Overlay,
}

impl FromStr for Driver {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        match s {
            "overlay" => Ok(Driver::Overlay),
            other => Err(NetworkError::Driver(other.to_string())),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("overlay")
    }
}

/// What `network create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default)]
    pub driver: Driver,
    /// `None`: the next free subnet of the cluster's [`AddrPool`].
    #[serde(default)]
    pub subnet: Option<Subnet>,
    /// Containers not started by shoal may join (recorded; shoal starts
    /// only its own tasks' containers).
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver options (`--opt k=v`), as given.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl NetworkSpec {
    /// A name of Docker's form, not `host`; a subnet of a usable size.
    pub fn validate(&self) -> Result<(), NetworkError> {
        if !is_network_name(&self.name) {
            return Err(NetworkError::Name(self.name.clone()));
        }
        if self.name == HOST_NETWORK || self.name == "bridge" || self.name == "none" || self.name == "ingress" {
            return Err(NetworkError::Reserved(self.name.clone()));
        }
        if let Some(s) = self.subnet {
            if !(MIN_NETWORK_PREFIX..=MAX_NETWORK_PREFIX).contains(&s.prefix) {
                return Err(NetworkError::SubnetSize(s));
            }
        }
        if self.routing()? == Routing::Direct && self.encrypted() {
            return Err(NetworkError::EncryptedDirect);
        }
        Ok(())
    }

    /// `--opt routing=vxlan|direct` (absent: vxlan).
    pub fn routing(&self) -> Result<Routing, NetworkError> {
        match self.options.get(ROUTING_OPTION).map(String::as_str) {
            None | Some("vxlan") => Ok(Routing::Vxlan),
            Some("direct") => Ok(Routing::Direct),
            Some(other) => Err(NetworkError::Routing(other.to_string())),
        }
    }

    /// `--opt encrypted` (Docker's test is the key's presence): the
    /// network's traffic between nodes is sealed.
    pub fn encrypted(&self) -> bool {
        self.options.contains_key(ENCRYPTED_OPTION)
    }
}

/// The driver option that asks for encryption between nodes.
pub const ENCRYPTED_OPTION: &str = "encrypted";
/// The driver option that chooses how task traffic crosses between nodes.
pub const ROUTING_OPTION: &str = "routing";

/// How a network's task traffic crosses between nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// A VXLAN device per network (Swarm's overlay): works over any IP
    /// network between the nodes.
    #[default]
    Vxlan,
    /// Plain routes: each node's block is routed via that node's underlay
    /// address, and packets cross as they are (no tunnel, no VXLAN header,
    /// a full MTU). Needs the nodes on one L2 segment (each node's address
    /// a next hop the others reach directly) and a network between them
    /// that forwards the tasks' addresses.
    Direct,
}

impl Routing {
    pub fn is_vxlan(&self) -> bool {
        *self == Routing::Vxlan
    }
}

/// Docker's rule for object names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`): what
/// `docker stack deploy` makes (`STACK_default`) must pass. Network names
/// are never looked up in DNS; service names and aliases are.
pub fn is_network_name(s: &str) -> bool {
    s.len() <= 255
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A DNS label (RFC 1123): 1-63 letters, digits and `-`, not at either end.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A network in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: NetworkId,
    pub spec: NetworkSpec,
    /// The whole range: the spec's, or the one allocated from the pool.
    pub subnet: Subnet,
    pub vni: u32,
    /// Each node's block of the tasks' half, given out when a task on this
    /// network is first assigned there.
    #[serde(default)]
    pub nodes: BTreeMap<NodeId, Subnet>,
    pub created_at: Millis,
}

impl Network {
    /// The tasks' L2 subnet: the lower half.
    pub fn task_range(&self) -> Subnet {
        self.subnet.child(self.subnet.prefix + 1, 0).unwrap_or(self.subnet)
    }

    /// Where VIPs come from: the upper half.
    pub fn vip_range(&self) -> Subnet {
        self.subnet.child(self.subnet.prefix + 1, 1).unwrap_or(self.subnet)
    }

    /// The prefix of a node's block: 8 bits past the network's (a /24 of a
    /// /16), but never smaller than a /28.
    pub fn node_prefix(&self) -> u8 {
        (self.subnet.prefix + 8).min(MAX_NODE_PREFIX).max(self.subnet.prefix + 1)
    }

    /// The name of the Docker network, the bridge and the VXLAN device for
    /// this network on a node (device names are at most 15 bytes).
    pub fn docker_name(&self) -> String {
        docker_network_name(&self.spec.name, &self.id)
    }
}

pub fn docker_network_name(name: &str, id: &NetworkId) -> String {
    format!("shoal-{name}-{}", &id.short()[..6.min(id.short().len())])
}

pub fn bridge_name(vni: u32) -> String {
    format!("shbr{vni}")
}

pub fn vxlan_name(vni: u32) -> String {
    format!("shvx{vni}")
}

/// A node block's gateway: its second address.
pub fn gateway_of(block: &Subnet) -> Ipv4Addr {
    block.nth(1).unwrap_or(block.addr)
}

/// `--network NAME` or `--network name=NAME,alias=A,alias=B`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network's name (an id or prefix given by a client is turned
    /// into the name when the service is written).
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl FromStr for NetworkAttachment {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        let s = s.trim();
        let err = |why: &str| NetworkError::Attachment(s.to_string(), why.to_string());
        if !s.contains('=') {
            if s.is_empty() {
                return Err(err("empty"));
            }
            return Ok(NetworkAttachment { network: s.to_string(), aliases: vec![] });
        }
        let mut network = None;
        let mut aliases = vec![];
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| err(&format!("{part:?} is not KEY=VALUE")))?;
            match k.trim() {
                "name" | "target" => network = Some(v.trim().to_string()),
                "alias" => {
                    if !is_dns_label(v.trim()) {
                        return Err(err(&format!("alias {v:?} is not a DNS label")));
                    }
                    aliases.push(v.trim().to_string())
                }
                other => return Err(err(&format!("unknown field {other:?}"))),
            }
        }
        let network = network.filter(|n| !n.is_empty()).ok_or_else(|| err("missing name"))?;
        Ok(NetworkAttachment { network, aliases })
    }
}

/// How a service's name resolves on its networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// To one virtual IP, spread over the running tasks.
    #[default]
    Vip,
    /// To the running tasks' own addresses.
    Dnsrr,
}

impl EndpointMode {
    pub fn is_default(&self) -> bool {
        *self == EndpointMode::Vip
    }
}

impl FromStr for EndpointMode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        match s {
            "vip" => Ok(EndpointMode::Vip),
            "dnsrr" => Ok(EndpointMode::Dnsrr),
            other => Err(NetworkError::EndpointMode(other.to_string())),
        }
    }
}

/// A service's virtual IP on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    pub network: NetworkId,
    pub addr: Ipv4Addr,
}

/// A task's address on one network, and what its node needs to attach it
/// (the Docker network's subnet and the node's block and gateway).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAddress {
    pub network: NetworkId,
    pub name: String,
    pub addr: Ipv4Addr,
    /// The tasks' L2 subnet ([`Network::task_range`]).
    pub range: Subnet,
    /// The node's block of it.
    pub block: Subnet,
    pub vni: u32,
    /// The network is `--opt encrypted` (its Docker network has a
    /// smaller MTU).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// `--opt routing=direct`: the Docker network's subnet is the node's
    /// block, other blocks are routed.
    #[serde(default, skip_serializing_if = "Routing::is_vxlan")]
    pub routing: Routing,
}

impl TaskAddress {
    pub fn docker_network(&self) -> String {
        docker_network_name(&self.name, &self.network)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(&self.block)
    }

    /// The subnet of the node's Docker network: the tasks' whole subnet
    /// (one L2 segment over VXLAN), or with direct routing only the node's
    /// block (the others are routed through the node).
    pub fn docker_subnet(&self) -> Subnet {
        match self.routing {
            Routing::Vxlan => self.range,
            Routing::Direct => self.block,
        }
    }

    /// The network's VIPs: the upper half, next to the tasks' subnet.
    pub fn vip_range(&self) -> Subnet {
        let next = u64::from(u32::from(self.range.addr)) + self.range.size();
        Subnet::new(Ipv4Addr::from(next.min(u64::from(u32::MAX)) as u32), self.range.prefix).unwrap_or(self.range)
    }
}

/// One network as every node programs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEntry {
    pub id: NetworkId,
    pub name: String,
    pub vni: u32,
    pub range: Subnet,
    /// `--opt encrypted`: VXLAN between nodes only through the sealed
    /// tunnel (`worker::net::tunnel`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// `--opt routing=direct`: routes between nodes instead of VXLAN.
    #[serde(default, skip_serializing_if = "Routing::is_vxlan")]
    pub routing: Routing,
    /// Every node with a block, and its underlay (advertise) address.
    pub nodes: Vec<NodeBlock>,
    /// The services attached, by name.
    pub services: Vec<ServiceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBlock {
    pub node: NodeId,
    pub underlay: IpAddr,
    pub block: Subnet,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `None` for dnsrr.
    pub vip: Option<Ipv4Addr>,
    /// The running tasks' addresses, sorted: a task leaves as soon as it is
    /// no longer meant to run, before its node stops it.
    pub tasks: Vec<Ipv4Addr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_split() {
        let s: Subnet = "10.1.0.0/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.1.0.0/16");
        assert_eq!(s.child(24, 3).unwrap().to_string(), "10.1.3.0/24");
        assert_eq!(s.children(24), 256);
        assert!(s.contains("10.1.200.3".parse().unwrap()));
        assert!(!s.contains("10.2.0.1".parse().unwrap()));
        assert!(s.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!s.overlaps(&"10.2.0.0/16".parse().unwrap()));
        for bad in ["10.1.0.1/16", "10.1.0.0", "10.1.0.0/33", "fe80::/64", "x/8"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn halves_and_node_blocks() {
        let n = Network {
            id: "n".into(),
            spec: NetworkSpec::default(),
            subnet: "10.3.0.0/16".parse().unwrap(),
            vni: FIRST_VNI,
            nodes: BTreeMap::new(),
            created_at: 0,
        };
        assert_eq!(n.task_range().to_string(), "10.3.0.0/17");
        assert_eq!(n.vip_range().to_string(), "10.3.128.0/17");
        let a = TaskAddress {
            network: n.id.clone(),
            name: "app".into(),
            addr: "10.3.0.2".parse().unwrap(),
            range: n.task_range(),
            block: "10.3.0.0/24".parse().unwrap(),
            vni: n.vni,
            encrypted: false,
            routing: Routing::Vxlan,
        };
        assert_eq!(a.vip_range(), n.vip_range(), "a task knows where its network's VIPs are");
        assert_eq!(n.node_prefix(), 24);
        let small = Network { subnet: "192.168.5.0/24".parse().unwrap(), ..n };
        assert_eq!(small.node_prefix(), 28);
        assert_eq!(small.task_range().children(small.node_prefix()), 8);
    }

    #[test]
    fn attachments_and_names() {
        let a: NetworkAttachment = "app".parse().unwrap();
        assert_eq!(a, NetworkAttachment { network: "app".into(), aliases: vec![] });
        let a: NetworkAttachment = "name=app,alias=db,alias=primary".parse().unwrap();
        assert_eq!(a.aliases, ["db", "primary"]);
        let e = "alias=db".parse::<NetworkAttachment>().unwrap_err().to_string();
        assert!(e.contains("missing name"), "{e}");
        let e = "name=app,colour=red".parse::<NetworkAttachment>().unwrap_err().to_string();
        assert!(e.contains("unknown field \"colour\""), "{e}");
        let spec = |name: &str| NetworkSpec { name: name.into(), ..Default::default() };
        assert!(spec("app-1").validate().is_ok());
        // Docker's names, `docker stack deploy`'s `st_default` among them.
        for good in ["App_1", "st_default", "a.b"] {
            assert!(spec(good).validate().is_ok(), "{good}");
        }
        for bad in ["-app", "_a", "a b", "a/b", ""] {
            let e = spec(bad).validate().unwrap_err().to_string();
            assert!(e.contains("starts with a letter or digit and has only letters"), "{bad}: {e}");
        }
        assert_eq!(spec("host").validate().unwrap_err().to_string(), "network name \"host\" is reserved");
        let mut s = spec("app");
        s.subnet = Some("10.0.0.0/28".parse().unwrap());
        assert!(s.validate().unwrap_err().to_string().contains("must be /8 to /26"));
    }
}
