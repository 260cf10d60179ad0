//! The node runtime: what every node runs beneath its work, managers
//! included — the cluster port, the node's TLS identity, gossip and metrics.
//! Nothing here knows about tasks, containers or the store.

pub mod membership;
pub mod metrics;
pub mod net;
pub mod tls;
