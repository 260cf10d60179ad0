//! `worker` is what every node runs, managers included. Two layers:
//!
//! - [`node`], the node runtime: what makes a process a member of the
//!   cluster, whatever its role — the cluster port ([`node::net`]: framed
//!   mutual TLS over TCP, the hello handshake, routing), its TLS identity
//!   ([`node::tls`]: node certificates, join tokens that pin the CA, rustls
//!   configs), gossip ([`node::membership`]: who is alive) and the per-actor
//!   figures for `/metrics` ([`node::metrics`]). The manager crate builds on
//!   this layer too.
//! - The node's work: [`agent`], the session with the leader's dispatcher;
//!   [`supervisor`], the TaskSupervisor reconciling assigned tasks with local
//!   containers over a [`runtime`] (Docker through bollard); and [`mesh`],
//!   the MeshProgrammer serving published ports on this node (nftables or a
//!   userspace proxy), round robin over running tasks.
//!
//! What only managers do (raft, the store, the control loops, the cluster
//! CA that signs certificates and makes join tokens) is in `manager`.

pub mod agent;
#[doc(hidden)]
pub mod fuzzing;
pub mod mesh;
pub mod net;
pub mod node;
pub mod runtime;
pub mod supervisor;
