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

/// Makes the network unless it exists (a network removed and made again
/// under the same name has a new id, hence a new Docker name).
/// Makes the node's Docker network `name` of a shoal network if missing;
/// labelled with the node that made it (`shoal.node.id`), as its
/// containers are, so what a node leaves behind can be found.
pub async fn ensure(
    docker: &Docker,
    node: &NodeId,
    name: &str,
    range: Subnet,
    block: Subnet,
    vni: u32,
    mtu: u32,
) -> Result<(), NetError> {
    let err = |e: BollardError| NetError::Docker { name: name.to_string(), message: e.to_string() };
    match docker.inspect_network(name, None::<bollard::query_parameters::InspectNetworkOptions>).await {
        Ok(_) => return Ok(()),
        Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => return Err(err(e)),
    }
    let options: HashMap<String, String> = [
        ("com.docker.network.bridge.name".to_string(), bridge_name(vni)),
        ("com.docker.network.driver.mtu".to_string(), mtu.to_string()),
    ]
    .into();
    let body = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(range.to_string()),
                ip_range: Some(block.to_string()),
                gateway: Some(gateway_of(&block).to_string()),
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
