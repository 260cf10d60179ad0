//! The Docker bridge network of a shoal network on this node.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::Docker;
use common::network::{bridge_name, gateway_of, Subnet};
use common::NodeId;

use super::NetError;

/// The VXLAN header costs 50 bytes of a 1500-byte underlay MTU.
pub const MTU: u32 = 1450;
/// Direct routing: packets cross as they are.
pub const DIRECT_MTU: u32 = 1500;

/// What a node's Docker network of a shoal network is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerNetwork {
    /// The network's subnet: the tasks' subnet (VXLAN), or the node's
    /// block (direct routing).
    pub subnet: Subnet,
    /// The node's block: its tasks' addresses, the gateway its second.
    pub block: Subnet,
    pub vni: u32,
    pub mtu: u32,
    /// Docker masquerades what leaves the bridge (VXLAN: task traffic never
    /// leaves it routed). Direct routing turns Docker's off: task traffic
    /// to other blocks must keep its address, and
    /// `link::ensure_routes` masquerades the rest.
    pub masquerade: bool,
}

impl DockerNetwork {
    pub fn of(n: &super::plan::NodeNetwork) -> DockerNetwork {
        DockerNetwork {
            subnet: n.docker_subnet(),
            block: n.block,
            vni: n.vni,
            mtu: n.mtu(),
            masquerade: n.routing.is_vxlan(),
        }
    }

    pub fn of_task(a: &common::network::TaskAddress) -> DockerNetwork {
        DockerNetwork {
            subnet: a.docker_subnet(),
            block: a.block,
            vni: a.vni,
            mtu: super::mtu(a.encrypted, a.routing),
            masquerade: a.routing.is_vxlan(),
        }
    }
}

/// Makes the network unless it exists (a network removed and made again
/// under the same name has a new id, hence a new Docker name).
/// Makes the node's Docker network `name` of a shoal network if missing;
/// labelled with the node that made it (`shoal.node.id`), as its
/// containers are, so what a node leaves behind can be found.
pub async fn ensure(docker: &Docker, node: &NodeId, name: &str, net: &DockerNetwork) -> Result<(), NetError> {
    let err = |e: BollardError| NetError::Docker { name: name.to_string(), message: e.to_string() };
    match docker.inspect_network(name, None::<bollard::query_parameters::InspectNetworkOptions>).await {
        Ok(_) => return Ok(()),
        Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => return Err(err(e)),
    }
    let mut options: HashMap<String, String> = [
        ("com.docker.network.bridge.name".to_string(), bridge_name(net.vni)),
        ("com.docker.network.driver.mtu".to_string(), net.mtu.to_string()),
    ]
    .into();
    if !net.masquerade {
        options.insert("com.docker.network.bridge.enable_ip_masquerade".to_string(), "false".to_string());
    }
    let body = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(net.subnet.to_string()),
                ip_range: Some(net.block.to_string()),
                gateway: Some(gateway_of(&net.block).to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        options: Some(options),
        labels: Some(
            [("shoal.network".to_string(), "true".to_string()), ("shoal.node.id".to_string(), node.to_string())].into(),
        ),
        ..Default::default()
    };
    match docker.create_network(body).await {
        Ok(_) => Ok(()),
        // Made meanwhile by the other caller (Docker may then say the pool
        // overlaps rather than that the name is taken).
        Err(e) => match docker.inspect_network(name, None::<bollard::query_parameters::InspectNetworkOptions>).await {
            Ok(_) => Ok(()),
            Err(_) => Err(err(e)),
        },
    }
}

pub async fn remove(docker: &Docker, name: &str) -> Result<(), NetError> {
    match docker.remove_network(name).await {
        Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(NetError::Docker { name: name.to_string(), message: e.to_string() }),
    }
}
