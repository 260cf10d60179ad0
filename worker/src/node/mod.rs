//! The node runtime: what every node runs beneath its work, managers
//! included — the cluster port, the node's TLS identity, gossip and metrics,
//! and [`seal`], the AEAD that seals gossip and the managers' raft files.
//! Nothing here knows about tasks, containers or the store.

pub mod api_tls;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod seal;
pub mod tls;
