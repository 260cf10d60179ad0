//! `common` is data: the types every part of shoal agrees on and nothing that
//! does I/O. No actix, bollard or sockets live here.
//!
//! - [`ids`]: typed identifiers (`NodeId`, `ServiceId`, `TaskId`).
//! - [`spec`]: what a user asks for (`ServiceSpec` and its parts) and its validation.
//! - [`container`]: container settings beyond the basics (health checks, …) and docker's parsers for them.
//! - [`task`]: tasks and their forward-only state machine.
//! - [`node`]: nodes, roles and availability.
//! - [`mesh`]: published ports and the routing-mesh table.
//! - [`secret`]: secrets and configs, and the files they become in a task.
//! - [`network`]: overlay networks, their subnets, VIPs and the per-node network table.
//! - [`constraint`]: placement constraints, parsed and matched.
//! - [`sched`]: reservations, placement preferences, node descriptions.
//! - [`gossip_key`]: the cluster's gossip keys and their rotation.
//! - [`wire`]: frames exchanged between nodes on the cluster port, and their codec.
//! - [`api`]: the JSON bodies of the HTTP API shared by the daemon and the CLI.
//! - [`time`]: wall-clock milliseconds and duration parsing.
//! - [`backoff`]: the exponential backoff every retry loop uses.

pub mod api;
pub mod backoff;
pub mod constraint;
pub mod container;
pub mod gossip_key;
pub mod ids;
pub mod mesh;
pub mod network;
pub mod node;
pub mod sched;
pub mod secret;
pub mod spec;
pub mod task;
pub mod time;
pub mod wire;

pub use ids::{ConfigId, NetworkId, NodeId, SecretId, ServiceId, TaskId};
