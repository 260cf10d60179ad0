//! The pure part of membership: the live set and its diff, what to publish
//! given what gossip says and the time, and when to restart dead gossip.
//! No I/O, no clock: every decision takes `now`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backoff::Backoff;
use common::NodeId;

/// After gossip (re)starts, members it has not confirmed yet are kept for this
/// long rather than reported down: a fresh chitchat needs a few rounds of
/// heartbeats before it calls anyone live.
pub const SETTLE_PERIOD: Duration = Duration::from_secs(3);
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(5);
const MIN_RESTART_BACKOFF: Duration = Duration::from_millis(200);
const RESTART_BACKOFF: Backoff = Backoff::new(MIN_RESTART_BACKOFF, MAX_RESTART_BACKOFF);
/// Gossip that ran this long before dying starts its backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Data

/// What gossip says about one live node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFacts {
    pub facts: BTreeMap<String, String>,
    pub gossip_addr: SocketAddr,
    /// Grows each time the node restarts (or its gossip does).
    pub generation: u64,
}

impl MemberFacts {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.facts.get(key).map(String::as_str)
    }
}

/// The live nodes, this node included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSet {
    pub nodes: BTreeMap<NodeId, MemberFacts>,
}

impl LiveSet {
    pub fn contains(&self, node_id: &NodeId) -> bool {
        self.nodes.contains_key(node_id)
    }

    pub fn get(&self, node_id: &NodeId) -> Option<&MemberFacts> {
        self.nodes.get(node_id)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    MemberUp {
        node_id: NodeId,
        member: MemberFacts,
    },
    MemberDown {
        node_id: NodeId,
        last: MemberFacts,
    },
    /// Facts, address or generation changed (a restart shows as a new generation).
    MemberChanged {
        node_id: NodeId,
        old: MemberFacts,
        new: MemberFacts,
    },
}

/// What changed from `old` to `new`, in node id order.
pub fn diff(old: &LiveSet, new: &LiveSet) -> Vec<MemberEvent> {
    let mut events = Vec::new();
    for (node_id, last) in &old.nodes {
        match new.nodes.get(node_id) {
            None => events.push((node_id, MemberEvent::MemberDown { node_id: node_id.clone(), last: last.clone() })),
            Some(now) if now != last => events.push((
                node_id,
                MemberEvent::MemberChanged { node_id: node_id.clone(), old: last.clone(), new: now.clone() },
            )),
            Some(_) => {}
        }
    }
    for (node_id, member) in &new.nodes {
        if !old.nodes.contains_key(node_id) {
            events.push((node_id, MemberEvent::MemberUp { node_id: node_id.clone(), member: member.clone() }));
        }
    }
    events.sort_by(|a, b| a.0.cmp(b.0));
    events.into_iter().map(|(_, event)| event).collect()
}

/// Builds a live set from gossip entries `(node id, member)`. When one node id
/// appears with several generations (a restart not yet detected), the highest
/// generation wins.
pub fn live_set_from(entries: impl IntoIterator<Item = (NodeId, MemberFacts)>) -> LiveSet {
    let mut nodes: BTreeMap<NodeId, MemberFacts> = BTreeMap::new();
    for (node_id, member) in entries {
        match nodes.get(&node_id) {
            Some(kept) if kept.generation >= member.generation => {}
            _ => {
                nodes.insert(node_id, member);
            }
        }
    }
    LiveSet { nodes }
}

/// Seeds worth a handshake: not ourselves, not already a live member.
pub fn seeds_to_contact(seeds: &[SocketAddr], live: &LiveSet, self_addr: SocketAddr) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = seeds
        .iter()
        .copied()
        .filter(|seed| *seed != self_addr)
        .filter(|seed| !live.nodes.values().any(|m| m.gossip_addr == *seed))
        .collect();
    out.sort();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------
// What to publish

/// Decides the published live set from what gossip reports, with no I/O.
#[derive(Debug)]
pub struct MembershipCore {
    self_id: NodeId,
    self_member: MemberFacts,
    /// The latest set from chitchat.
    observed: LiveSet,
    /// What was last published.
    live: LiveSet,
    /// While set and in the future, members gossip has not (re)confirmed are
    /// kept instead of reported down.
    settle_until: Option<Instant>,
}

impl MembershipCore {
    pub fn new(self_id: NodeId, self_member: MemberFacts) -> Self {
        let live = LiveSet { nodes: BTreeMap::from([(self_id.clone(), self_member.clone())]) };
        Self { self_id, self_member, observed: LiveSet::default(), live, settle_until: None }
    }

    pub fn live(&self) -> &LiveSet {
        &self.live
    }

    /// Gossip reported a new live set.
    pub fn observe(&mut self, observed: LiveSet, now: Instant) -> Vec<MemberEvent> {
        self.observed = observed;
        self.recompute(now)
    }

    /// Time passed (ends a settle period).
    pub fn tick(&mut self, now: Instant) -> Vec<MemberEvent> {
        self.recompute(now)
    }

    /// Our own facts changed; gossip will echo them back shortly.
    pub fn set_self_facts(&mut self, facts: BTreeMap<String, String>) {
        self.self_member.facts = facts;
    }

    /// Gossip died: we know nothing now. Keep the others for the settle
    /// period (a restart usually brings them back), then report them down.
    pub fn gossip_stopped(&mut self, now: Instant) -> Vec<MemberEvent> {
        self.observed = LiveSet::default();
        self.settle_until = Some(now + SETTLE_PERIOD);
        self.recompute(now)
    }

    /// Gossip started again, as `self_member` (a new generation).
    pub fn gossip_restarted(&mut self, self_member: MemberFacts, now: Instant) -> Vec<MemberEvent> {
        self.self_member = self_member;
        self.observed = LiveSet::default();
        self.settle_until = Some(now + SETTLE_PERIOD);
        self.recompute(now)
    }

    fn recompute(&mut self, now: Instant) -> Vec<MemberEvent> {
        let mut next = self.observed.clone();
        // Chitchat's watcher starts empty; we are alive regardless.
        next.nodes.entry(self.self_id.clone()).or_insert_with(|| self.self_member.clone());
        match self.settle_until {
            Some(until) if now < until => {
                for (node_id, member) in &self.live.nodes {
                    next.nodes.entry(node_id.clone()).or_insert_with(|| member.clone());
                }
            }
            Some(_) => self.settle_until = None,
            None => {}
        }
        let events = diff(&self.live, &next);
        self.live = next;
        events
    }
}

// ---------------------------------------------------------------------------
// Restart decisions

/// When to restart gossip that died: after a backoff that doubles with each
/// failed try and starts afresh once gossip has run for [`HEALTHY_RUN`].
#[derive(Debug)]
pub(super) struct Restarts {
    attempts: u32,
    running_since: Instant,
}

impl Restarts {
    /// Gossip started at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self { attempts: 0, running_since: now }
    }

    /// Gossip died at `now`: how long to wait before restarting it.
    pub(super) fn stopped(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.running_since) >= HEALTHY_RUN {
            self.attempts = 0;
        }
        RESTART_BACKOFF.delay(self.attempts)
    }

    /// A restart is being tried.
    pub(super) fn trying(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    /// The try failed: how long to wait before the next one.
    pub(super) fn failed(&self) -> Duration {
        RESTART_BACKOFF.delay(self.attempts)
    }

    /// The try worked: gossip runs again since `now`.
    pub(super) fn running(&mut self, now: Instant) {
        self.running_since = now;
    }
}

/// The generation a restarted gossip runs as: peers must see a higher one than
/// any used before; the wall clock in ms keeps it growing across node restarts.
pub(super) fn restart_generation(previous: u64, now_ms: u64) -> u64 {
    previous.saturating_add(1).max(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    fn member(last: u8, generation: u64, facts: &[(&str, &str)]) -> MemberFacts {
        MemberFacts {
            facts: facts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            gossip_addr: addr(last, 4242),
            generation,
        }
    }

    fn set(members: &[(&str, MemberFacts)]) -> LiveSet {
        LiveSet { nodes: members.iter().map(|(id, m)| (NodeId::from(*id), m.clone())).collect() }
    }

    // ---- diff

    #[test]
    fn diff_of_equal_sets_is_empty() {
        let a = set(&[("a", member(1, 1, &[("role", "manager")]))]);
        assert!(diff(&a, &a).is_empty());
        assert!(diff(&LiveSet::default(), &LiveSet::default()).is_empty());
    }

    #[test]
    fn diff_reports_up_down_and_changed_in_node_order() {
        let old = set(&[
            ("a", member(1, 1, &[("role", "manager")])),
            ("b", member(2, 1, &[("role", "worker")])),
            ("c", member(3, 1, &[("role", "worker")])),
        ]);
        let new = set(&[
            ("a", member(1, 1, &[("role", "manager")])),
            ("b", member(2, 1, &[("role", "worker"), ("ready", "true")])),
            ("d", member(4, 1, &[])),
        ]);
        assert_eq!(
            diff(&old, &new),
            vec![
                MemberEvent::MemberChanged {
                    node_id: "b".into(),
                    old: member(2, 1, &[("role", "worker")]),
                    new: member(2, 1, &[("role", "worker"), ("ready", "true")]),
                },
                MemberEvent::MemberDown { node_id: "c".into(), last: member(3, 1, &[("role", "worker")]) },
                MemberEvent::MemberUp { node_id: "d".into(), member: member(4, 1, &[]) },
            ]
        );
    }

    #[test]
    fn diff_from_empty_is_all_up_and_to_empty_all_down() {
        let s = set(&[("a", member(1, 1, &[])), ("b", member(2, 1, &[]))]);
        let up = diff(&LiveSet::default(), &s);
        assert_eq!(up.len(), 2);
        assert!(up.iter().all(|e| matches!(e, MemberEvent::MemberUp { .. })));
        let down = diff(&s, &LiveSet::default());
        assert_eq!(down.len(), 2);
        assert!(down.iter().all(|e| matches!(e, MemberEvent::MemberDown { .. })));
    }

    #[test]
    fn restart_is_a_change_of_generation() {
        let old = set(&[("a", member(1, 1, &[]))]);
        let new = set(&[("a", member(1, 2, &[]))]);
        assert!(matches!(
            &diff(&old, &new)[..],
            [MemberEvent::MemberChanged { old, new, .. }] if old.generation == 1 && new.generation == 2
        ));
    }

    // ---- building the live set from gossip

    #[test]
    fn highest_generation_wins_whatever_the_order() {
        let entries = vec![
            (NodeId::from("a"), member(1, 7, &[("v", "new")])),
            (NodeId::from("a"), member(1, 3, &[("v", "old")])),
            (NodeId::from("b"), member(2, 1, &[])),
        ];
        let forward = live_set_from(entries.clone());
        let backward = live_set_from(entries.into_iter().rev());
        assert_eq!(forward, backward);
        assert_eq!(forward.len(), 2);
        assert_eq!(forward.get(&"a".into()).and_then(|m| m.get("v")), Some("new"));
    }

    #[test]
    fn seeds_to_contact_skips_self_and_live_members() {
        let live = set(&[("a", member(1, 1, &[])), ("b", member(2, 1, &[]))]);
        let seeds = [addr(2, 4242), addr(3, 4242), addr(9, 4242), addr(3, 4242), addr(1, 4242)];
        assert_eq!(seeds_to_contact(&seeds, &live, addr(9, 4242)), vec![addr(3, 4242)]);
    }

    // ---- restart decisions

    #[test]
    fn restart_backoff_doubles_up_to_the_cap() {
        assert_eq!(RESTART_BACKOFF.delay(0), Duration::from_millis(200));
        assert_eq!(RESTART_BACKOFF.delay(1), Duration::from_millis(400));
        assert_eq!(RESTART_BACKOFF.delay(4), Duration::from_millis(3200));
        assert_eq!(RESTART_BACKOFF.delay(5), MAX_RESTART_BACKOFF);
        assert_eq!(RESTART_BACKOFF.delay(u32::MAX), MAX_RESTART_BACKOFF);
    }

    #[test]
    fn failed_restarts_back_off_and_a_healthy_run_starts_afresh() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut restarts = Restarts::new(t0);

        // Dies at once: the first restart comes after the base delay.
        assert_eq!(restarts.stopped(t0 + ms(10)), ms(200));
        // Each failed try doubles the wait, up to the cap.
        let waits: Vec<Duration> = (0..6)
            .map(|_| {
                restarts.trying();
                restarts.failed()
            })
            .collect();
        assert_eq!(waits, [ms(400), ms(800), ms(1_600), ms(3_200), ms(5_000), ms(5_000)]);

        // A restart that works but dies again soon keeps backing off.
        let t1 = t0 + Duration::from_secs(20);
        restarts.trying();
        restarts.running(t1);
        assert_eq!(restarts.stopped(t1 + HEALTHY_RUN - ms(1)), MAX_RESTART_BACKOFF);

        // Gossip that ran for HEALTHY_RUN before dying waits the base delay again.
        restarts.trying();
        let t2 = t1 + HEALTHY_RUN;
        restarts.running(t2);
        assert_eq!(restarts.stopped(t2 + HEALTHY_RUN), ms(200));
    }

    #[test]
    fn a_restart_runs_as_a_higher_generation() {
        // Normally the clock is ahead of the generation.
        assert_eq!(restart_generation(1_000, 5_000), 5_000);
        // A clock that went back, or restarts within one ms, still move forward.
        assert_eq!(restart_generation(5_000, 4_000), 5_001);
        assert_eq!(restart_generation(5_000, 5_000), 5_001);
        assert_eq!(restart_generation(u64::MAX, 0), u64::MAX);
    }

    // ---- what to publish

    fn core_for(self_last: u8) -> MembershipCore {
        MembershipCore::new(NodeId::from("self"), member(self_last, 1, &[("role", "worker")]))
    }

    #[test]
    fn core_always_includes_self() {
        let now = Instant::now();
        let mut core = core_for(1);
        assert!(core.live().contains(&"self".into()));
        // Chitchat's first watcher value is empty: nothing changes.
        assert!(core.observe(LiveSet::default(), now).is_empty());
        assert_eq!(core.live().len(), 1);
        let events = core.observe(set(&[("self", member(1, 1, &[("role", "worker")])), ("b", member(2, 1, &[]))]), now);
        assert_eq!(events.len(), 1);
        assert!(matches!(&events[0], MemberEvent::MemberUp { node_id, .. } if node_id.as_str() == "b"));
        assert_eq!(core.live().len(), 2);
    }

    #[test]
    fn members_go_down_at_once_outside_a_settle_period() {
        let now = Instant::now();
        let mut core = core_for(1);
        core.observe(set(&[("b", member(2, 1, &[]))]), now);
        let events = core.observe(LiveSet::default(), now);
        assert!(matches!(&events[..], [MemberEvent::MemberDown { node_id, .. }] if node_id.as_str() == "b"));
    }

    #[test]
    fn gossip_restart_keeps_members_for_the_settle_period() {
        let t0 = Instant::now();
        let mut core = core_for(1);
        core.observe(set(&[("b", member(2, 1, &[])), ("c", member(3, 1, &[]))]), t0);

        // Gossip dies: nobody is reported down yet.
        assert!(core.gossip_stopped(t0).is_empty());
        assert_eq!(core.live().len(), 3);

        // It restarts with a new generation: only self changes.
        let t1 = t0 + Duration::from_millis(200);
        let events = core.gossip_restarted(member(1, 2, &[("role", "worker")]), t1);
        assert!(matches!(
            &events[..],
            [MemberEvent::MemberChanged { node_id, new, .. }] if node_id.as_str() == "self" && new.generation == 2
        ));
        // The fresh chitchat has seen b again, not c yet: still no down.
        let t2 = t1 + Duration::from_secs(1);
        assert!(core.observe(set(&[("b", member(2, 1, &[]))]), t2).is_empty());
        assert_eq!(core.live().len(), 3);

        // Settle period over and c never came back: now it is down.
        let t3 = t1 + SETTLE_PERIOD;
        let events = core.tick(t3);
        assert!(matches!(&events[..], [MemberEvent::MemberDown { node_id, .. }] if node_id.as_str() == "c"));
        assert_eq!(core.live().len(), 2);
        // And later downs are immediate again.
        assert!(core.tick(t3 + Duration::from_secs(10)).is_empty());
        let events = core.observe(LiveSet::default(), t3 + Duration::from_secs(11));
        assert!(matches!(&events[..], [MemberEvent::MemberDown { node_id, .. }] if node_id.as_str() == "b"));
    }

    #[test]
    fn gossip_that_stays_down_reports_everyone_else_down() {
        let t0 = Instant::now();
        let mut core = core_for(1);
        core.observe(set(&[("b", member(2, 1, &[]))]), t0);
        assert!(core.gossip_stopped(t0).is_empty());
        assert!(core.tick(t0 + SETTLE_PERIOD / 2).is_empty());
        let events = core.tick(t0 + SETTLE_PERIOD);
        assert_eq!(events.len(), 1);
        assert_eq!(core.live().len(), 1);
        assert!(core.live().contains(&"self".into()));
    }
}
