//! Membership: who is alive, through chitchat gossip over UDP, every
//! datagram sealed with the cluster's gossip key.
//!
//! Every node runs one [`Membership`] actor. It owns the chitchat handle,
//! publishes this node's small facts (role, hostname, …) as gossip keys, and
//! turns chitchat's live-node set into a [`LiveSet`] keyed by [`NodeId`](common::NodeId),
//! published on a `tokio::sync::watch` channel. Changes are also logged as
//! [`MemberEvent`]s computed by the pure [`diff`].
//!
//! Layout:
//! - `keys`: every gossip key this module reads or writes ([`fact`] for the
//!   caller's, the reserved `shoal.` ones for its own), and the filter from a
//!   node's key-values to its [`MemberFacts`].
//! - `core`: the data types, [`diff`], [`MembershipCore`] (what to publish,
//!   given what gossip says and the time) and the restart decisions (when to
//!   restart dead gossip, as which generation). No I/O.
//! - `actor`: a thin shell that feeds chitchat's watcher into the core and
//!   carries out the rest (publishing, logging, contacting seeds, restarting
//!   gossip). Gossip runs over chitchat's `UdpTransport` ([`start`]) or any
//!   other [`Transport`](chitchat::transport::Transport) ([`start_with_transport`]).
//! - `datagram`: the sealed datagram format (XChaCha20-Poly1305 under the
//!   cluster's gossip key, see `common::gossip_key`) and the replay guard. No I/O.
//! - `sealed`: [`SealedTransport`], the transport [`start`] uses: every
//!   datagram sealed, and forged, replayed or unsealed ones dropped and
//!   counted in `shoal_gossip_dropped_total{reason}`.
//! - `board`: [`Board`], a stand-in for gossip (liveness only) for many
//!   nodes in one process (`shoal sim`), where real gossip does not fit.
//! - `tests`: the actor, several nodes in one process over chitchat's
//!   in-memory `ChannelTransport` (which can cut links), and one real-UDP test.
//!
//! chitchat 0.13 facts this module relies on:
//! - Its live set includes the node itself, but its watcher starts empty and is
//!   first filled after a gossip round; the core always puts self in.
//! - A node is keyed by (node id, generation, address); after a restart both
//!   generations can be live for a moment. The highest generation wins.
//! - Seeds are fixed when gossip starts (only DNS seeds are re-resolved);
//!   there is no API to add one. [`SetSeeds`] therefore sends a gossip
//!   handshake (`ChitchatHandle::gossip`) to each new seed that is not yet a
//!   live member, now and every [`SEED_RETRY`], and a gossip restart uses them
//!   as real seeds.
//! - The gossip task can stop while its handle lives (its socket failed): the
//!   actor watches `termination_watcher()`, logs an error and restarts gossip
//!   with a higher generation, backing off up to [`MAX_RESTART_BACKOFF`].

use std::net::SocketAddr;

mod actor;
mod board;
mod core;
pub mod datagram;
mod keys;
mod sealed;
#[cfg(test)]
mod tests;

pub use self::actor::{
    start, start_with_transport, Membership, MembershipConfig, SetFacts, SetSeeds, Shutdown, Subscribe,
    DEAD_NODE_GRACE_PERIOD, GOSSIP_INTERVAL, MARKED_FOR_DELETION_GRACE_PERIOD, SEED_RETRY,
};
pub use self::board::{Board, OnBoard};
pub use self::core::{
    diff, live_set_from, seeds_to_contact, LiveSet, MemberEvent, MemberFacts, MembershipCore, MAX_RESTART_BACKOFF,
    SETTLE_PERIOD,
};
pub use self::keys::fact;
pub use self::sealed::{dropped_counter, GossipKeys, SealedTransport};
// For the siblings, which import only this parent.
use self::core::{restart_generation, Restarts};
use self::keys::{check_facts, initial_key_values, is_reserved, member_facts, MEMBER_KEY};

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Gossip could not start, usually the UDP port is taken. Retryable.
    #[error("gossip failed to start on {addr}: {reason}")]
    Start { addr: SocketAddr, reason: String },
    /// Fatal: a caller bug.
    #[error("fact key {0:?} is reserved (keys starting with \"shoal.\" belong to membership)")]
    ReservedKey(String),
    /// Gossip is down (it is being restarted). Retryable.
    #[error("gossip is not running")]
    GossipDown,
}

impl MembershipError {
    pub fn is_retryable(&self) -> bool {
        match self {
            MembershipError::Start { .. } | MembershipError::GossipDown => true,
            MembershipError::ReservedKey(_) => false,
        }
    }
}
