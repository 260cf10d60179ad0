//! Overlay networks on one node: for every network this node has a block
//! of, a Docker bridge network (the tasks' L2 subnet, this node's block as
//! its address pool, the block's gateway on the bridge) and a VXLAN device
//! in that bridge, flooding to every other node with a block, so that the
//! tasks of all nodes share one L2 segment per network. Networks are kept
//! apart by being separate bridges and VXLAN ids (Docker's own isolation
//! rules drop traffic routed between its bridges).
//!
//! - [`plan`]: pure. What this node should have for a network table
//!   ([`plan::desired`]), and what to change from what it has
//!   ([`plan::diff`]).
//! - [`docker`]: the Docker network of a task's network, made on demand
//!   (by the supervisor's runtime before it creates a container, and by
//!   [`Programmer`]).
//! - [`link`]: the VXLAN device and its flood entries, through `ip` and
//!   `bridge`.
//! - [`Programmer`]: a task that takes each table, applies the difference,
//!   and tries again on failure.
//! - [`vip`]: the services' virtual IPs, nftables DNAT over their running
//!   tasks, programmed by a task of its own from the same table.
//! - [`tunnel`]: encrypted networks' VXLAN packets, sealed between nodes
//!   through a TUN device (run while this node has an encrypted network).
//! - [`dns`] (pure: the names of each network and the answer to a query)
//!   and [`resolver`] (a UDP server on each network's gateway, forwarding
//!   other names to the host's resolvers): service discovery.

pub mod dns;
pub mod docker;
pub mod link;
pub mod plan;
pub mod resolver;
pub mod tunnel;
pub mod vip;

use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use common::network::{NetworkEntry, Routing};
use common::NodeId;
use tokio::sync::{oneshot, watch};

use self::plan::{Change, NodeNetwork};
use self::tunnel::{Tunnel, TunnelConfig};

/// The MTU of a network's Docker bridge (and its tasks' interfaces):
/// VXLAN's header comes off the underlay's 1500, and the tunnel's seal off
/// that; direct routing adds no header.
pub fn mtu(encrypted: bool, routing: Routing) -> u32 {
    match (routing, encrypted) {
        (Routing::Direct, _) => docker::DIRECT_MTU,
        (Routing::Vxlan, true) => docker::MTU - tunnel::OVERHEAD,
        (Routing::Vxlan, false) => docker::MTU,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("docker network {name}: {message}")]
    Docker { name: String, message: String },
    /// `ip`/`bridge` ran and failed: the command and its complaint.
    #[error("{0}")]
    Link(String),
}

/// Applies each network table this node receives.
pub struct Programmer {
    pub node: NodeId,
    /// This node's underlay (advertise) address.
    pub underlay: IpAddr,
    pub docker: Docker,
    /// What the encrypted networks' tunnel needs.
    pub tunnel: TunnelConfig,
}

impl Programmer {
    /// Runs until `tables` closes or `stop` fires: the latest table is
    /// applied as a diff from what was applied; a failed change is tried
    /// again a second later. The tunnel runs while this node has an
    /// encrypted network, and goes on `stop`.
    pub async fn run(self, mut tables: watch::Receiver<Vec<NetworkEntry>>, mut stop: oneshot::Receiver<()>) {
        let mut have: Vec<NodeNetwork> = Vec::new();
        let mut tunnel: Option<Tunnel> = None;
        loop {
            let want = plan::desired(&self.node, &tables.borrow_and_update());
            let mut failed = false;
            let encrypted = want.iter().any(|n| n.encrypted);
            if encrypted && tunnel.is_none() {
                match Tunnel::start(self.tunnel.clone()).await {
                    Ok(t) => tunnel = Some(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "network: the encrypted tunnel did not start; trying again");
                        tunnel::clean().await;
                        failed = true;
                    }
                }
            }
            for change in plan::diff(&have, &want) {
                if let Err(e) = self.apply(&change).await {
                    tracing::warn!(error = %e, ?change, "network: change not applied; trying again");
                    failed = true;
                }
            }
            if !failed {
                have = want;
            }
            if !encrypted {
                if let Some(t) = tunnel.take() {
                    t.stop().await;
                }
            }
            let wait = if failed { Duration::from_secs(1) } else { Duration::from_secs(3600) };
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { break },
                _ = &mut stop => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(t) = tunnel {
            t.stop().await;
        }
    }

    async fn apply(&self, change: &Change) -> Result<(), NetError> {
        match change {
            Change::Add(n) | Change::Update(n) => {
                let docker_net = docker::DockerNetwork::of(n);
                docker::ensure(&self.docker, &self.node, &n.docker_name, &docker_net).await?;
                match n.routing {
                    Routing::Vxlan => link::ensure_vxlan(n.vni, self.underlay, &n.peers, n.vxlan_port()).await,
                    Routing::Direct => link::ensure_routes(n.vni, n.range, n.block, &n.routes).await,
                }
            }
            Change::Remove(n) => {
                match n.routing {
                    Routing::Vxlan => link::remove_vxlan(n.vni).await?,
                    Routing::Direct => link::remove_routes(n.vni, n.range, n.block).await?,
                }
                docker::remove(&self.docker, &n.docker_name).await
            }
        }
    }
}
