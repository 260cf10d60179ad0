//! Published ports and the routing mesh, as data.
//!
//! A service publishes ports ([`PortConfig`]); each running task exposes its
//! target ports on its node's advertise address at ephemeral host ports
//! ([`HostPort`], reported by the worker). The managers turn that into a
//! [`MeshTable`]: for every ingress-published port, the backends (node
//! address, host port) of the service's running tasks. Every node receives
//! the table and programs its data path (nftables or the userspace proxy)
//! from it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::ServiceId;

/// Ports given out to a publish without a number.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = PortError;
    fn from_str(s: &str) -> Result<Self, PortError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(PortError::Protocol(s.to_string())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Every node listens; connections spread over all tasks.
    #[default]
    Ingress,
    /// Bound only on nodes running a task, straight to that task.
    Host,
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    #[serde(default)]
    pub protocol: Protocol,
    /// The port inside the container.
    pub target: u16,
    /// The port on every node (ingress) or on the task's node (host);
    /// `None` until the managers pick one from [`DYNAMIC_PORTS`].
    #[serde(default)]
    pub published: Option<u16>,
    #[serde(default)]
    pub mode: PublishMode,
    /// `preserve-source=true`: a connection to a task on another node is
    /// forwarded without the SNAT, so the task sees the client's address
    /// (kernel path; needs nodes on one L2 segment, see the README).
    #[serde(default, skip_serializing_if = "is_false")]
    pub preserve_source: bool,
    /// `proxy-protocol=v2`: the userspace mesh opens each connection to the
    /// task with a PROXY protocol header naming the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The PROXY protocol version the mesh speaks to a backend (HAProxy's
/// spec; only the binary version 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V2,
}

impl PortConfig {
    /// An ingress port with none of the options.
    pub fn new(protocol: Protocol, target: u16, published: Option<u16>, mode: PublishMode) -> Self {
        PortConfig { protocol, target, published, mode, preserve_source: false, proxy_protocol: None }
    }
}

impl fmt::Display for PortConfig {
    /// `*:8080->80/tcp` as `service ls` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let published = self.published.map(|p| p.to_string()).unwrap_or_default();
        write!(f, "*:{published}->{}/{}", self.target, self.protocol)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("invalid publish {0:?}: {1}")]
    Syntax(String, String),
    #[error("invalid protocol {0:?}: expected tcp or udp")]
    Protocol(String),
    #[error("invalid port {0:?}: ports are 1-65535")]
    Range(String),
    #[error("invalid publish mode {0:?}: expected ingress or host")]
    Mode(String),
}

fn port(s: &str) -> Result<u16, PortError> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(PortError::Range(s.to_string())),
    }
}

/// `8080:80`, `8080:80/udp`, `80` (a port from [`DYNAMIC_PORTS`]), or the
/// long form `published=8080,target=80,protocol=tcp,mode=ingress`.
impl FromStr for PortConfig {
    type Err = PortError;
    fn from_str(s: &str) -> Result<Self, PortError> {
        let s = s.trim();
        if s.contains('=') {
            let mut pc = PortConfig::new(Protocol::Tcp, 0, None, PublishMode::Ingress);
            let mut has_target = false;
            for part in s.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| PortError::Syntax(s.to_string(), format!("{part:?} is not KEY=VALUE")))?;
                match k.trim() {
                    "published" => pc.published = Some(port(v)?),
                    "target" => {
                        pc.target = port(v)?;
                        has_target = true;
                    }
                    "protocol" => pc.protocol = v.parse()?,
                    "mode" => {
                        pc.mode = match v.trim() {
                            "ingress" => PublishMode::Ingress,
                            "host" => PublishMode::Host,
                            other => return Err(PortError::Mode(other.to_string())),
                        }
                    }
                    "preserve-source" => {
                        pc.preserve_source = match v.trim() {
                            "true" | "1" => true,
                            "false" | "0" => false,
                            other => {
                                return Err(PortError::Syntax(
                                    s.to_string(),
                                    format!("preserve-source is true or false, not {other:?}"),
                                ))
                            }
                        }
                    }
                    "proxy-protocol" => {
                        pc.proxy_protocol = match v.trim() {
                            "v2" | "2" => Some(ProxyProtocol::V2),
                            "none" | "" => None,
                            other => {
                                return Err(PortError::Syntax(
                                    s.to_string(),
                                    format!("proxy-protocol is v2 (the only version the mesh speaks), not {other:?}"),
                                ))
                            }
                        }
                    }
                    other => return Err(PortError::Syntax(s.to_string(), format!("unknown field {other:?}"))),
                }
            }
            if !has_target {
                return Err(PortError::Syntax(s.to_string(), "missing target".into()));
            }
            if pc.mode == PublishMode::Host && (pc.preserve_source || pc.proxy_protocol.is_some()) {
                return Err(PortError::Syntax(
                    s.to_string(),
                    "preserve-source and proxy-protocol are options of mode=ingress (a host-mode port goes straight to its task)".into(),
                ));
            }
            if pc.protocol == Protocol::Udp && pc.proxy_protocol.is_some() {
                return Err(PortError::Syntax(s.to_string(), "proxy-protocol is for tcp ports".into()));
            }
            return Ok(pc);
        }
        let (ports, protocol) = match s.split_once('/') {
            Some((p, proto)) => (p, proto.parse()?),
            None => (s, Protocol::Tcp),
        };
        let (published, target) = match ports.split_once(':') {
            Some((p, t)) => (Some(port(p)?), port(t)?),
            None => (None, port(ports)?),
        };
        Ok(PortConfig::new(protocol, target, published, PublishMode::Ingress))
    }
}

/// Where a task's target port is reachable on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostPort {
    pub protocol: Protocol,
    pub target: u16,
    /// On the node's advertise address.
    pub host_port: u16,
}

/// One ingress-published port and where its connections go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshEntry {
    pub service_id: ServiceId,
    pub service_name: String,
    pub protocol: Protocol,
    pub published: u16,
    /// Running tasks' (node address, host port), in a stable order; empty
    /// means "refuse connections at once".
    pub backends: Vec<SocketAddr>,
    /// For a backend whose container has a single network: the container's
    /// own (address, target port), which only the backend's node can reach.
    /// That node's kernel mesh DNATs there instead of to the host port, so
    /// the task sees the client's address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub direct: BTreeMap<SocketAddr, SocketAddr>,
    /// The port's `preserve-source` and `proxy-protocol` options.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preserve_source: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// A published port a node cannot serve (another process holds it), as the
/// node reports it to the managers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshFailure {
    pub service_name: String,
    pub protocol: Protocol,
    pub published: u16,
    pub error: String,
}

/// The whole routing mesh, as every node should program it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshTable {
    pub entries: Vec<MeshEntry>,
    /// The overlay networks (VIPs, task addresses, node blocks): sent with
    /// the mesh so that a task leaves a VIP's rotation before it is stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::network::NetworkEntry>,
    /// Every node's address, sorted: a node takes a `preserve-source`
    /// connection forwarded by any of them (see `MeshEntry::preserve_source`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<std::net::IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms() {
        let p: PortConfig = "8080:80".parse().unwrap();
        assert_eq!(p, PortConfig::new(Protocol::Tcp, 80, Some(8080), PublishMode::Ingress));
        assert_eq!(p.to_string(), "*:8080->80/tcp");
        let p: PortConfig = "53:5353/udp".parse().unwrap();
        assert_eq!((p.protocol, p.published, p.target), (Protocol::Udp, Some(53), 5353));
        let p: PortConfig = "80".parse().unwrap();
        assert_eq!((p.published, p.target), (None, 80));
        let p: PortConfig = "published=9200,target=9200,protocol=udp,mode=host".parse().unwrap();
        assert_eq!(p, PortConfig::new(Protocol::Udp, 9200, Some(9200), PublishMode::Host));
        let p: PortConfig = "published=8080,target=80,preserve-source=true,proxy-protocol=v2".parse().unwrap();
        assert!(p.preserve_source);
        assert_eq!(p.proxy_protocol, Some(ProxyProtocol::V2));
        assert_eq!(p.mode, PublishMode::Ingress);
        let p: PortConfig = "target=80".parse().unwrap();
        assert_eq!((p.published, p.mode), (None, PublishMode::Ingress));
    }

    #[test]
    fn bad_publishes_say_why() {
        for (bad, needle) in [
            ("70000:80", "ports are 1-65535"),
            ("0:80", "ports are 1-65535"),
            ("8080:80/sctp", "expected tcp or udp"),
            ("published=1,target=2,mode=dr", "expected ingress or host"),
            ("published=8080", "missing target"),
            ("published=8080,target=80,colour=red", "unknown field"),
            ("http", "ports are 1-65535"),
            ("published=1,target=2,preserve-source=yes", "preserve-source is true or false"),
            ("published=1,target=2,proxy-protocol=v1", "proxy-protocol is v2"),
            ("published=1,target=2,mode=host,preserve-source=true", "options of mode=ingress"),
            ("published=1,target=2,protocol=udp,proxy-protocol=v2", "proxy-protocol is for tcp ports"),
        ] {
            let e = bad.parse::<PortConfig>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
