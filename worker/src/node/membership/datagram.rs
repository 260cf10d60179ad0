//! Sealed gossip datagrams: their format, sealing and opening, and the
//! replay guard. No I/O, no clock: `now` is an argument.
//!
//! A datagram is `MAGIC`, the key id (u32, big-endian), then
//! [`SealKey::seal`] output (`[24-byte random nonce][ciphertext][tag]`,
//! XChaCha20-Poly1305) of:
//!
//! `[sender len: u8][sender node id][to: address][counter: u64 BE][chitchat bytes]`
//!
//! The associated data is `MAGIC`, the key id and the cluster id. Random
//! 192-bit nonces need no state across restarts. Replays are refused by
//! three checks on what the seal vouches for:
//! - `to` is the address the sender sent to: a datagram captured on its
//!   way to one node and sent to another is not for the latter;
//! - `counter` is the sender's clock in microseconds, bumped to stay
//!   strictly increasing: one older than [`MAX_AGE`], or sent before this
//!   receiver started ([`ReplayGuard::new`]), is refused;
//! - per sender, the last [`WINDOW`] counters accepted are remembered and
//!   anything at or below the oldest of them refused, so no datagram is
//!   taken twice.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use common::gossip_key::{GossipKey, GossipKeyRing};
use common::time::Millis;

use crate::node::seal::SealKey;

pub const MAGIC: [u8; 4] = *b"SHG1";
const HEADER_LEN: usize = MAGIC.len() + 4;
/// Counters a receiver remembers per sender.
pub const WINDOW: usize = 64;
/// Oldest datagram accepted (also how far ahead a sender's clock may be).
pub const MAX_AGE: Millis = 30_000;
/// How long before a receiver's start a datagram may have been sent and
/// still be accepted (clocks a little apart).
pub const START_SLACK: Millis = 1_000;
/// Senders a receiver keeps windows for; the least recently heard one is
/// forgotten past this. Only holders of the key get an entry.
pub const MAX_SENDERS: usize = 4096;

/// Why a datagram was dropped: the `reason` label of
/// `shoal_gossip_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// Not a sealed datagram (plain chitchat, or anything else).
    #[error("not sealed")]
    Unsealed,
    /// Sealed with a key this node does not hold, or one retired.
    #[error("sealed with an unknown or retired key")]
    UnknownKey,
    /// The seal does not open: wrong key bytes under a known id, or changed bytes.
    #[error("seal does not open")]
    Forged,
    /// Opened, but what is inside is not laid out as a datagram.
    #[error("malformed sealed datagram")]
    Malformed,
    /// Already seen, too old, sent before this node started, or sent to
    /// another address.
    #[error("replayed")]
    Replayed,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::Unsealed => "unsealed",
            Dropped::UnknownKey => "unknown_key",
            Dropped::Forged => "forged",
            Dropped::Malformed => "malformed",
            Dropped::Replayed => "replayed",
        }
    }
}

/// What a sealed datagram vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub sender: String,
    pub to: SocketAddr,
    pub counter: u64,
    pub payload: Vec<u8>,
}

fn aad(key_id: u32, cluster_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + cluster_id.len());
    aad.extend_from_slice(&MAGIC);
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(cluster_id.as_bytes());
    aad
}

/// `payload` sealed with `key`. `sender` is cut to 255 bytes (node ids are 25).
pub fn seal(key: &GossipKey, cluster_id: &str, sender: &str, to: SocketAddr, counter: u64, payload: &[u8]) -> Vec<u8> {
    let sender = &sender.as_bytes()[..sender.len().min(255)];
    let to = to.to_string();
    let mut plain = Vec::with_capacity(2 + sender.len() + to.len() + 8 + payload.len());
    plain.push(sender.len() as u8);
    plain.extend_from_slice(sender);
    plain.push(to.len() as u8);
    plain.extend_from_slice(to.as_bytes());
    plain.extend_from_slice(&counter.to_be_bytes());
    plain.extend_from_slice(payload);
    let sealed = SealKey::from_bytes(key.key).seal(&aad(key.id, cluster_id), &plain);
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&key.id.to_be_bytes());
    out.extend_from_slice(&sealed);
    out
}

/// Opens a datagram with the key of `ring` it names, if that key is
/// accepted at `now`. Replays are for the [`ReplayGuard`].
pub fn open(ring: &GossipKeyRing, cluster_id: &str, datagram: &[u8], now: Millis) -> Result<Opened, Dropped> {
    if datagram.len() < HEADER_LEN || datagram[..MAGIC.len()] != MAGIC {
        return Err(Dropped::Unsealed);
    }
    let key_id = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    let key = ring.opening_key(key_id, now).ok_or(Dropped::UnknownKey)?;
    let plain = SealKey::from_bytes(key.key)
        .open(&aad(key_id, cluster_id), &datagram[HEADER_LEN..])
        .map_err(|_| Dropped::Forged)?;
    parse(plain).ok_or(Dropped::Malformed)
}

fn parse(plain: Vec<u8>) -> Option<Opened> {
    let mut rest = plain.as_slice();
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let n = *take(1)?.first()? as usize;
    let sender = String::from_utf8(take(n)?.to_vec()).ok()?;
    let n = *take(1)?.first()? as usize;
    let to: SocketAddr = std::str::from_utf8(take(n)?).ok()?.parse().ok()?;
    let counter = u64::from_be_bytes(take(8)?.try_into().ok()?);
    Some(Opened { sender, to, counter, payload: rest.to_vec() })
}

/// A sender's counters: strictly increasing microseconds of its clock.
#[derive(Debug, Default)]
pub struct Counter {
    last: u64,
}

impl Counter {
    pub fn next(&mut self, now: Millis) -> u64 {
        self.last = (self.last + 1).max(now.saturating_mul(1000));
        self.last
    }
}

#[derive(Debug, Default)]
struct Window {
    /// Counters at or below this are refused.
    floor: u64,
    recent: BTreeSet<u64>,
    /// When this sender was last heard (for eviction).
    heard: Millis,
}

/// What a receiver remembers to refuse replays (see the module doc).
#[derive(Debug)]
pub struct ReplayGuard {
    me: SocketAddr,
    started: Millis,
    senders: HashMap<String, Window>,
}

impl ReplayGuard {
    /// For the receiver listening on `me`, started at `started`.
    pub fn new(me: SocketAddr, started: Millis) -> ReplayGuard {
        ReplayGuard { me, started, senders: HashMap::new() }
    }

    /// Accepts `opened` once; refuses it as [`Dropped::Replayed`] if it was
    /// for another address, is too old, or was seen.
    pub fn check(&mut self, opened: &Opened, now: Millis) -> Result<(), Dropped> {
        let sent = opened.counter / 1000;
        let oldest = now.saturating_sub(MAX_AGE).max(self.started.saturating_sub(START_SLACK));
        if opened.to != self.me || sent < oldest || sent > now.saturating_add(MAX_AGE) {
            return Err(Dropped::Replayed);
        }
        if !self.senders.contains_key(&opened.sender) && self.senders.len() >= MAX_SENDERS {
            let quietest = self.senders.iter().min_by_key(|(_, w)| w.heard).map(|(s, _)| s.clone());
            if let Some(s) = quietest {
                self.senders.remove(&s);
            }
        }
        let w = self.senders.entry(opened.sender.clone()).or_default();
        if opened.counter <= w.floor || !w.recent.insert(opened.counter) {
            return Err(Dropped::Replayed);
        }
        if w.recent.len() > WINDOW {
            if let Some(oldest) = w.recent.pop_first() {
                w.floor = oldest;
            }
        }
        w.heard = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_800_000_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_datagram_opens_with_its_key_only() {
        let ring = GossipKeyRing::first();
        let key = ring.current.clone().unwrap();
        let d = seal(&key, "c1", "node-a", addr("10.0.0.2:4242"), 42, b"chitchat bytes");
        assert!(!d.windows(8).any(|w| w == b"chitchat"), "the payload is encrypted");
        let opened = open(&ring, "c1", &d, NOW).unwrap();
        assert_eq!(
            opened,
            Opened {
                sender: "node-a".into(),
                to: addr("10.0.0.2:4242"),
                counter: 42,
                payload: b"chitchat bytes".to_vec()
            }
        );
        // The same format, another key under the same id: forged.
        let forger = GossipKey::generate(key.id);
        let forged = seal(&forger, "c1", "node-a", addr("10.0.0.2:4242"), 43, b"leader down");
        assert_eq!(open(&ring, "c1", &forged, NOW), Err(Dropped::Forged));
        // Another key id: unknown.
        assert_eq!(
            open(&ring, "c1", &seal(&GossipKey::generate(9), "c1", "x", addr("1.1.1.1:1"), 1, b""), NOW),
            Err(Dropped::UnknownKey)
        );
        // Another cluster, a changed byte, plain chitchat, junk.
        assert_eq!(open(&ring, "c2", &d, NOW), Err(Dropped::Forged));
        let mut flipped = d.clone();
        flipped[20] ^= 1;
        assert_eq!(open(&ring, "c1", &flipped, NOW), Err(Dropped::Forged));
        assert_eq!(open(&ring, "c1", &[0x2a, 0x2a, 1, 0], NOW), Err(Dropped::Unsealed));
        assert_eq!(open(&ring, "c1", b"SHG1\0\0\0\x01short", NOW), Err(Dropped::Forged));
        assert_eq!(open(&ring, "c1", b"", NOW), Err(Dropped::Unsealed));
    }

    #[test]
    fn a_seal_over_bad_contents_is_malformed_not_a_panic() {
        let ring = GossipKeyRing::first();
        let key = ring.current.clone().unwrap();
        let aad = aad(key.id, "c1");
        for plain in [&b""[..], b"\x05ab", b"\x01a\x03xyz", b"\x01a\x0b10.0.0.1:99\x01"] {
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&key.id.to_be_bytes());
            d.extend_from_slice(&SealKey::from_bytes(key.key).seal(&aad, plain));
            assert_eq!(open(&ring, "c1", &d, NOW), Err(Dropped::Malformed), "{plain:?}");
        }
    }

    #[test]
    fn the_guard_takes_each_datagram_once() {
        let me = addr("10.0.0.2:4242");
        let mut guard = ReplayGuard::new(me, NOW - 60_000);
        let mut counter = Counter::default();
        let dg = |c: u64| Opened { sender: "a".into(), to: me, counter: c, payload: vec![] };
        let c1 = counter.next(NOW);
        let c2 = counter.next(NOW);
        assert!(c2 > c1, "counters grow within one millisecond");
        assert_eq!(guard.check(&dg(c2), NOW), Ok(()));
        assert_eq!(guard.check(&dg(c1), NOW), Ok(()), "late but unseen: taken");
        assert_eq!(guard.check(&dg(c1), NOW), Err(Dropped::Replayed));
        assert_eq!(guard.check(&dg(c2), NOW), Err(Dropped::Replayed));
        // Another sender's counters are its own.
        assert_eq!(guard.check(&Opened { sender: "b".into(), ..dg(c1) }, NOW), Ok(()));
        // Once a window's worth of later ones came, an unseen one is refused.
        let skipped = counter.next(NOW);
        for _ in 0..=WINDOW {
            guard.check(&dg(counter.next(NOW)), NOW).unwrap();
        }
        assert_eq!(guard.check(&dg(skipped), NOW), Err(Dropped::Replayed));
        // Too old, from the future, for another address.
        assert_eq!(guard.check(&dg((NOW - MAX_AGE - 1) * 1000), NOW), Err(Dropped::Replayed));
        assert_eq!(guard.check(&dg((NOW + MAX_AGE + 1) * 1000), NOW), Err(Dropped::Replayed));
        let elsewhere = Opened { to: addr("10.0.0.3:4242"), ..dg(counter.next(NOW)) };
        assert_eq!(guard.check(&elsewhere, NOW), Err(Dropped::Replayed));
    }

    #[test]
    fn a_restarted_receiver_refuses_what_was_sent_before_it_started() {
        let me = addr("10.0.0.2:4242");
        let before = Opened { sender: "a".into(), to: me, counter: (NOW - START_SLACK - 1) * 1000, payload: vec![] };
        let mut guard = ReplayGuard::new(me, NOW);
        assert_eq!(guard.check(&before, NOW + 10), Err(Dropped::Replayed));
        let just_after = Opened { counter: NOW * 1000 + 5, ..before };
        assert_eq!(guard.check(&just_after, NOW + 10), Ok(()));
    }

    #[test]
    fn a_sender_clock_going_back_keeps_counters_increasing() {
        let mut c = Counter::default();
        let a = c.next(NOW);
        let b = c.next(NOW - 5_000);
        assert!(b > a);
    }

    #[test]
    fn senders_are_bounded() {
        let me = addr("10.0.0.2:4242");
        let mut guard = ReplayGuard::new(me, 0);
        for i in 0..MAX_SENDERS + 10 {
            let o = Opened { sender: format!("s{i}"), to: me, counter: NOW * 1000, payload: vec![] };
            guard.check(&o, NOW + i as u64).unwrap();
        }
        assert_eq!(guard.senders.len(), MAX_SENDERS);
    }
}
