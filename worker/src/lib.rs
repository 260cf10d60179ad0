//! `worker` is what every node runs, managers included:
//!
//! - [`net`]: the cluster port (framed TLS over TCP, the hello handshake, routing).
//! - [`tls`]: the cluster CA, node certificates, join tokens, rustls configs.
//! - [`membership`]: gossip over chitchat; who is alive.
//! - [`supervisor`]: the TaskSupervisor reconciling assigned tasks with local
//!   containers, over a [`runtime`] (Docker through bollard).
//! - [`mesh`]: the MeshProgrammer serving published ports on this node
//!   (nftables or a userspace proxy), round robin over running tasks.
//! - [`agent`]: the node's session with the leader's dispatcher.
//! - [`metrics`]: per-actor figures for `/metrics`.

pub mod agent;
pub mod membership;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod runtime;
pub mod supervisor;
pub mod tls;
