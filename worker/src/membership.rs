//! Membership: who is alive, through chitchat gossip over UDP.
//!
//! Every node runs one [`Membership`] actor. It owns the chitchat handle,
//! publishes this node's small facts (role, hostname, …) as gossip keys, and
//! turns chitchat's live-node set into a [`LiveSet`] keyed by [`NodeId`],
//! published on a `tokio::sync::watch` channel. Changes are also logged as
//! [`MemberEvent`]s computed by the pure [`diff`].
//!
//! Layout: data types and [`diff`] first, then [`MembershipCore`] (what to
//! publish, given what gossip says and the time — no I/O), then the actor, a
//! thin shell that feeds chitchat's watcher into the core and carries out the
//! rest (publishing, logging, contacting seeds, restarting gossip).
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::prelude::*;
use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion,
};
use common::NodeId;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{watch, Mutex};
use tracing::{debug, error, info, warn};

use crate::metrics::{metrics, ActorMetrics};

/// How often chitchat gossips.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// How long a dead node's state is kept before it is forgotten (a node coming
/// back after that rejoins as new, which is fine: its generation is higher).
pub const DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
/// How long deleted facts stay as tombstones, so a node that was away for
/// less than this learns about the deletion instead of being reset.
pub const MARKED_FOR_DELETION_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
/// After gossip (re)starts, members it has not confirmed yet are kept for this
/// long rather than reported down: a fresh chitchat needs a few rounds of
/// heartbeats before it calls anyone live.
pub const SETTLE_PERIOD: Duration = Duration::from_secs(3);
/// How often seeds that are not live members are sent a handshake.
pub const SEED_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(5);
const MIN_RESTART_BACKOFF: Duration = Duration::from_millis(200);
/// Gossip that ran this long before dying starts its backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Well-known fact keys, so every module spells them the same way.
pub mod fact {
    /// `manager` or `worker`.
    pub const ROLE: &str = "role";
    pub const HOSTNAME: &str = "hostname";
    /// The TCP cluster address (`ip:port`).
    pub const CLUSTER_ADDR: &str = "cluster_addr";
    /// `true` once the node can take tasks.
    pub const READY: &str = "ready";
}

/// Keys starting with this are the module's own and never reach callers.
const RESERVED_PREFIX: &str = "shoal.";
/// Set on every node; a node is live only once this key has reached us, so a
/// member never shows up before its facts do. The value is the schema version.
const MEMBER_KEY: &str = "shoal.member";
const MEMBER_SCHEMA: &str = "1";

// ---------------------------------------------------------------------------
// Data

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    pub node_id: NodeId,
    /// Nodes only gossip with nodes of the same cluster id.
    pub cluster_id: String,
    /// UDP; listened on and advertised. Same port number as the TCP cluster port.
    pub gossip_addr: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    /// Must grow on every restart of the node; the start time in ms works.
    pub generation: u64,
    /// Small typed facts (see [`fact`]); keys must not start with `shoal.`.
    pub facts: BTreeMap<String, String>,
}

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

/// The caller-visible facts among a node's gossip keys.
fn member_facts<'a>(
    key_values: impl Iterator<Item = (&'a str, &'a str)>,
    gossip_addr: SocketAddr,
    generation: u64,
) -> MemberFacts {
    MemberFacts {
        facts: key_values
            .filter(|(key, _)| !key.starts_with(RESERVED_PREFIX))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        gossip_addr,
        generation,
    }
}

fn live_set_from_chitchat(live: &BTreeMap<ChitchatId, NodeState>) -> LiveSet {
    live_set_from(live.iter().map(|(id, state)| {
        (NodeId::from(&*id.node_id), member_facts(state.key_values(), id.gossip_advertise_addr, id.generation_id))
    }))
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

fn next_backoff(attempts: u32) -> Duration {
    MIN_RESTART_BACKOFF.saturating_mul(1u32 << attempts.min(8)).min(MAX_RESTART_BACKOFF)
}

// ---------------------------------------------------------------------------
// Core

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
// Errors

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

fn check_facts(facts: &BTreeMap<String, String>) -> Result<(), MembershipError> {
    match facts.keys().find(|key| key.starts_with(RESERVED_PREFIX)) {
        Some(key) => Err(MembershipError::ReservedKey(key.clone())),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Actor

/// Replaces the seeds learned after start (e.g. the managers' addresses).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetSeeds(pub Vec<SocketAddr>);

/// Replaces this node's facts: keys not in the map are deleted.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), MembershipError>")]
pub struct SetFacts(pub BTreeMap<String, String>);

/// Another receiver of the live set, for a subscriber that only has the `Addr`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "watch::Receiver<LiveSet>")]
pub struct Subscribe;

/// Stops gossip, waits until its socket is closed, then stops the actor.
/// Receivers of the live set see the channel close.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Chitchat's live set changed (sent by the actor's own watcher task).
#[derive(Message)]
#[rtype(result = "()")]
struct Observed {
    epoch: u64,
    live: LiveSet,
}

pub struct Membership {
    config: MembershipConfig,
    /// Seeds learned after start, from [`SetSeeds`].
    learned_seeds: Vec<SocketAddr>,
    generation: u64,
    /// Dropping the handle stops gossip: keep it for as long as we run.
    handle: Option<ChitchatHandle>,
    /// Bumped at each gossip (re)start so stale watcher events are ignored.
    epoch: u64,
    gossip_started: Instant,
    restart_attempts: u32,
    stopping: bool,
    core: MembershipCore,
    live_tx: watch::Sender<LiveSet>,
    metrics: ActorMetrics,
    live_gauge: Gauge,
}

/// Starts gossip on `config.gossip_addr` and the actor that owns it. The
/// receiver holds this node alone until gossip reports others; it closes
/// when the actor stops ([`Shutdown`], or a panic): treat that as fatal.
pub async fn start(config: MembershipConfig) -> Result<(Addr<Membership>, watch::Receiver<LiveSet>), MembershipError> {
    check_facts(&config.facts)?;
    let handle = spawn_gossip(&config, &config.seeds, config.generation).await?;
    let self_member =
        MemberFacts { facts: config.facts.clone(), gossip_addr: config.gossip_addr, generation: config.generation };
    let core = MembershipCore::new(config.node_id.clone(), self_member);
    let (live_tx, live_rx) = watch::channel(core.live().clone());
    info!(
        node_id = %config.node_id,
        gossip_addr = %config.gossip_addr,
        generation = config.generation,
        seeds = ?config.seeds,
        "gossip started"
    );
    let membership = Membership {
        generation: config.generation,
        config,
        learned_seeds: Vec::new(),
        handle: Some(handle),
        epoch: 0,
        gossip_started: Instant::now(),
        restart_attempts: 0,
        stopping: false,
        core,
        live_tx,
        metrics: metrics().actor("membership"),
        live_gauge: metrics()
            .gauge("shoal_gossip_live_members", "Nodes this node sees alive through gossip, itself included"),
    };
    Ok((membership.start(), live_rx))
}

async fn spawn_gossip(
    config: &MembershipConfig,
    seeds: &[SocketAddr],
    generation: u64,
) -> Result<ChitchatHandle, MembershipError> {
    let chitchat_config = ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_id.as_str(), generation, config.gossip_addr),
        cluster_id: config.cluster_id.clone(),
        gossip_interval: GOSSIP_INTERVAL,
        listen_addr: config.gossip_addr,
        seed_nodes: seeds.iter().map(SocketAddr::to_string).collect(),
        failure_detector_config: FailureDetectorConfig {
            // The default initial interval (5 s) makes a young cluster take
            // ~6 s to see a node die; starting from the real gossip interval
            // brings that to about a second.
            initial_interval: GOSSIP_INTERVAL,
            dead_node_grace_period: DEAD_NODE_GRACE_PERIOD,
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: MARKED_FOR_DELETION_GRACE_PERIOD,
        catchup_callback: None,
        extra_liveness_predicate: Some(Box::new(|state: &NodeState| state.get(MEMBER_KEY).is_some())),
        // Every shoal node runs chitchat 0.13, which reads both versions; V1
        // compresses the digest.
        protocol_version: ProtocolVersion::V1,
    };
    let mut key_values: Vec<(String, String)> =
        config.facts.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
    key_values.push((MEMBER_KEY.to_string(), MEMBER_SCHEMA.to_string()));
    spawn_chitchat(chitchat_config, key_values, &UdpTransport)
        .await
        .map_err(|err| MembershipError::Start { addr: config.gossip_addr, reason: format!("{err:#}") })
}

impl Membership {
    fn all_seeds(&self) -> Vec<SocketAddr> {
        let mut seeds = self.config.seeds.clone();
        seeds.extend(self.learned_seeds.iter().copied());
        seeds.sort();
        seeds.dedup();
        seeds
    }

    /// Wires a freshly spawned chitchat to the actor: its live set feeds
    /// [`Observed`], its termination triggers a restart.
    fn watch_gossip(&mut self, ctx: &mut Context<Self>) {
        let Some(handle) = self.handle.as_ref() else {
            return;
        };
        self.epoch += 1;
        let epoch = self.epoch;

        let chitchat: Arc<Mutex<Chitchat>> = handle.chitchat();
        let addr = ctx.address();
        let metrics = self.metrics.clone();
        ctx.spawn(wrap_future(async move {
            // Taken under the async mutex and released at once.
            let mut live_rx = chitchat.lock().await.live_nodes_watcher();
            drop(chitchat);
            loop {
                let live = live_set_from_chitchat(&live_rx.borrow_and_update());
                metrics.enqueued();
                addr.do_send(Observed { epoch, live });
                if live_rx.changed().await.is_err() {
                    break;
                }
            }
        }));

        let terminated = handle.termination_watcher();
        ctx.spawn(wrap_future::<_, Self>(terminated).map(move |result, act, ctx| {
            // An anyhow error; only its text is kept.
            let result = result.map_err(|err| format!("{err:#}"));
            act.gossip_terminated(epoch, result, ctx);
        }));
    }

    fn gossip_terminated(&mut self, epoch: u64, result: Result<(), String>, ctx: &mut Context<Self>) {
        if self.stopping || epoch != self.epoch {
            return;
        }
        let reason = match result {
            Ok(()) => "gossip loop returned".to_string(),
            Err(err) => err,
        };
        if self.gossip_started.elapsed() >= HEALTHY_RUN {
            self.restart_attempts = 0;
        }
        let backoff = next_backoff(self.restart_attempts);
        error!(
            node_id = %self.config.node_id,
            gossip_addr = %self.config.gossip_addr,
            generation = self.generation,
            reason = %reason,
            retry_in_ms = backoff.as_millis() as u64,
            "gossip stopped; restarting it"
        );
        self.handle = None;
        self.epoch += 1; // whatever the dead instance still says is stale
        let events = self.core.gossip_stopped(Instant::now());
        self.publish(events);
        ctx.run_later(backoff, |act, ctx| act.restart_gossip(ctx));
    }

    fn restart_gossip(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.restart_attempts = self.restart_attempts.saturating_add(1);
        // Peers must see a higher generation than any we used before.
        let generation = (self.generation + 1).max(common::time::now_ms());
        let config = self.config.clone();
        let seeds = self.all_seeds();
        let fut = async move { spawn_gossip(&config, &seeds, generation).await };
        ctx.spawn(wrap_future::<_, Self>(fut).map(move |result, act, ctx| {
            if act.stopping {
                return;
            }
            match result {
                Ok(handle) => {
                    act.metrics.restarted();
                    act.generation = generation;
                    act.handle = Some(handle);
                    act.gossip_started = Instant::now();
                    info!(
                        node_id = %act.config.node_id,
                        gossip_addr = %act.config.gossip_addr,
                        generation,
                        "gossip restarted"
                    );
                    let self_member = MemberFacts {
                        facts: act.config.facts.clone(),
                        gossip_addr: act.config.gossip_addr,
                        generation,
                    };
                    let events = act.core.gossip_restarted(self_member, Instant::now());
                    act.publish(events);
                    act.watch_gossip(ctx);
                }
                Err(err) => {
                    let backoff = next_backoff(act.restart_attempts);
                    error!(
                        node_id = %act.config.node_id,
                        error = %err,
                        retry_in_ms = backoff.as_millis() as u64,
                        "gossip restart failed"
                    );
                    ctx.run_later(backoff, |act, ctx| act.restart_gossip(ctx));
                }
            }
        }));
    }

    fn publish(&mut self, events: Vec<MemberEvent>) {
        if events.is_empty() {
            return;
        }
        for event in &events {
            log_event(&self.config.node_id, event);
        }
        let live = self.core.live().clone();
        self.live_gauge.set(live.len() as i64);
        self.live_tx.send_replace(live);
    }

    fn contact_seeds(&self, seeds: &[SocketAddr]) {
        let Some(handle) = self.handle.as_ref() else {
            return;
        };
        for seed in seeds_to_contact(seeds, self.core.live(), self.config.gossip_addr) {
            debug!(seed = %seed, "gossip handshake with seed");
            if let Err(err) = handle.gossip(seed) {
                debug!(seed = %seed, error = %err, "gossip handshake not sent");
            }
        }
    }
}

fn log_event(self_id: &NodeId, event: &MemberEvent) {
    match event {
        MemberEvent::MemberUp { node_id, member } => info!(
            node_id = %self_id,
            member = %node_id,
            gossip_addr = %member.gossip_addr,
            generation = member.generation,
            facts = ?member.facts,
            "member up"
        ),
        MemberEvent::MemberDown { node_id, last } => warn!(
            node_id = %self_id,
            member = %node_id,
            gossip_addr = %last.gossip_addr,
            generation = last.generation,
            "member down"
        ),
        MemberEvent::MemberChanged { node_id, old, new } => info!(
            node_id = %self_id,
            member = %node_id,
            old_generation = old.generation,
            generation = new.generation,
            facts = ?new.facts,
            "member changed"
        ),
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.live_gauge.set(self.core.live().len() as i64);
        self.watch_gossip(ctx);
        ctx.run_interval(SEED_RETRY, |act, _ctx| {
            let events = act.core.tick(Instant::now());
            act.publish(events);
            let seeds = act.all_seeds();
            act.contact_seeds(&seeds);
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.initiate_shutdown();
        }
        info!(node_id = %self.config.node_id, "membership stopped");
    }
}

impl Handler<Observed> for Membership {
    type Result = ();

    fn handle(&mut self, msg: Observed, _ctx: &mut Context<Self>) {
        let started = Instant::now();
        if msg.epoch == self.epoch && !self.stopping {
            let events = self.core.observe(msg.live, Instant::now());
            self.publish(events);
        }
        self.metrics.handled(started, true);
    }
}

impl Handler<SetSeeds> for Membership {
    type Result = ();

    fn handle(&mut self, msg: SetSeeds, _ctx: &mut Context<Self>) {
        let started = Instant::now();
        info!(node_id = %self.config.node_id, seeds = ?msg.0, "seeds set");
        self.learned_seeds = msg.0;
        let seeds = self.learned_seeds.clone();
        self.contact_seeds(&seeds);
        self.metrics.handled(started, true);
    }
}

impl Handler<SetFacts> for Membership {
    type Result = ResponseActFuture<Self, Result<(), MembershipError>>;

    fn handle(&mut self, msg: SetFacts, _ctx: &mut Context<Self>) -> Self::Result {
        let started = Instant::now();
        if let Err(err) = check_facts(&msg.0) {
            self.metrics.handled(started, false);
            return Box::pin(actix::fut::ready(Err(err)));
        }
        // Kept so a gossip restart republishes them.
        self.config.facts = msg.0.clone();
        self.core.set_self_facts(msg.0.clone());
        let Some(handle) = self.handle.as_ref() else {
            self.metrics.handled(started, false);
            return Box::pin(actix::fut::ready(Err(MembershipError::GossipDown)));
        };
        let chitchat = handle.chitchat();
        let facts = msg.0;
        let fut = async move {
            let mut chitchat = chitchat.lock().await;
            let state = chitchat.self_node_state();
            let stale: Vec<String> = state
                .key_values()
                .map(|(key, _)| key.to_string())
                .filter(|key| !key.starts_with(RESERVED_PREFIX) && !facts.contains_key(key))
                .collect();
            for key in &stale {
                state.delete(key);
            }
            for (key, value) in &facts {
                state.set(key, value);
            }
        };
        let metrics = self.metrics.clone();
        Box::pin(wrap_future::<_, Self>(fut).map(move |(), _act, _ctx| {
            metrics.handled(started, true);
            Ok(())
        }))
    }
}

impl Handler<Subscribe> for Membership {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, _msg: Subscribe, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.live_tx.subscribe())
    }
}

impl Handler<Shutdown> for Membership {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Context<Self>) -> Self::Result {
        let started = Instant::now();
        self.stopping = true;
        info!(node_id = %self.config.node_id, "membership shutting down");
        let handle = self.handle.take();
        let fut = async move {
            match handle {
                Some(handle) => handle.shutdown().await.map_err(|err| format!("{err:#}")),
                None => Ok(()),
            }
        };
        Box::pin(wrap_future::<_, Self>(fut).map(move |result, act, ctx| {
            if let Err(err) = &result {
                warn!(node_id = %act.config.node_id, error = %err, "gossip stopped with an error");
            }
            act.metrics.handled(started, result.is_ok());
            ctx.stop();
        }))
    }
}

/// Test-only: kill the gossip task as a socket failure would.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "()")]
struct AbortGossip;

#[cfg(test)]
impl Handler<AbortGossip> for Membership {
    type Result = ();

    fn handle(&mut self, _msg: AbortGossip, _ctx: &mut Context<Self>) {
        if let Some(handle) = self.handle.as_ref() {
            handle.abort();
        }
    }
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
    fn reserved_keys_are_not_facts() {
        let m = member_facts(
            [("role", "worker"), (MEMBER_KEY, MEMBER_SCHEMA), ("shoal.x", "y")].into_iter(),
            addr(1, 1),
            5,
        );
        assert_eq!(m.facts.len(), 1);
        assert_eq!(m.get(fact::ROLE), Some("worker"));
        assert_eq!(m.generation, 5);
        assert!(check_facts(&m.facts).is_ok());
        let bad = BTreeMap::from([("shoal.member".to_string(), "2".to_string())]);
        let err = check_facts(&bad).unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "fact key \"shoal.member\" is reserved (keys starting with \"shoal.\" belong to membership)"
        );
    }

    #[test]
    fn seeds_to_contact_skips_self_and_live_members() {
        let live = set(&[("a", member(1, 1, &[])), ("b", member(2, 1, &[]))]);
        let seeds = [addr(2, 4242), addr(3, 4242), addr(9, 4242), addr(3, 4242), addr(1, 4242)];
        assert_eq!(seeds_to_contact(&seeds, &live, addr(9, 4242)), vec![addr(3, 4242)]);
    }

    #[test]
    fn restart_backoff_doubles_up_to_the_cap() {
        assert_eq!(next_backoff(0), Duration::from_millis(200));
        assert_eq!(next_backoff(1), Duration::from_millis(400));
        assert_eq!(next_backoff(4), Duration::from_millis(3200));
        assert_eq!(next_backoff(5), MAX_RESTART_BACKOFF);
        assert_eq!(next_backoff(u32::MAX), MAX_RESTART_BACKOFF);
    }

    // ---- core

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

    // ---- actors over real UDP on loopback

    /// A free UDP port on 127.0.0.`last`.
    fn free_addr(last: u8) -> SocketAddr {
        let socket = std::net::UdpSocket::bind(addr(last, 0)).expect("bind loopback");
        socket.local_addr().expect("local addr")
    }

    fn config(
        id: &str,
        gossip_addr: SocketAddr,
        seeds: &[SocketAddr],
        generation: u64,
        role: &str,
    ) -> MembershipConfig {
        MembershipConfig {
            node_id: NodeId::from(id),
            cluster_id: "test-cluster".into(),
            gossip_addr,
            seeds: seeds.to_vec(),
            generation,
            facts: BTreeMap::from([
                (fact::ROLE.to_string(), role.to_string()),
                (fact::HOSTNAME.to_string(), format!("host-{id}")),
            ]),
        }
    }

    /// Waits until `pred` holds for the live set, failing after `within`.
    /// Returns how long it took.
    async fn wait_until(
        what: &str,
        rx: &mut watch::Receiver<LiveSet>,
        within: Duration,
        mut pred: impl FnMut(&LiveSet) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        let outcome = tokio::time::timeout(within, async { rx.wait_for(|live| pred(live)).await.map(|_| ()) }).await;
        match outcome {
            Ok(Ok(())) => t0.elapsed(),
            Ok(Err(_)) => panic!("{what}: live set channel closed"),
            Err(_) => panic!("{what}: not within {within:?}; last: {:?}", *rx.borrow()),
        }
    }

    fn ids(live: &LiveSet) -> Vec<&str> {
        live.nodes.keys().map(NodeId::as_str).collect()
    }

    #[actix::test]
    async fn three_nodes_converge_detect_a_stop_and_see_a_restart() {
        let (a_addr, b_addr, c_addr) = (free_addr(21), free_addr(22), free_addr(23));
        let t0 = Instant::now();
        let (_a, mut a_rx) = start(config("a", a_addr, &[], 1, "manager")).await.unwrap();
        let (_b, mut b_rx) = start(config("b", b_addr, &[a_addr], 1, "worker")).await.unwrap();
        let (c, mut c_rx) = start(config("c", c_addr, &[a_addr], 1, "worker")).await.unwrap();

        // Self is in the set from the start, before any gossip.
        assert_eq!(ids(&c_rx.borrow()), vec!["c"]);

        let all = |live: &LiveSet| ids(live) == ["a", "b", "c"];
        let within = Duration::from_secs(3);
        wait_until("a sees 3", &mut a_rx, within, all).await;
        wait_until("b sees 3", &mut b_rx, within, all).await;
        wait_until("c sees 3", &mut c_rx, within, all).await;
        eprintln!("converged: all three see 3 live after {:?}", t0.elapsed());

        // Facts travel.
        {
            let live = b_rx.borrow();
            let c_seen = live.get(&"c".into()).unwrap();
            assert_eq!(c_seen.get(fact::ROLE), Some("worker"));
            assert_eq!(c_seen.get(fact::HOSTNAME), Some("host-c"));
            assert_eq!(c_seen.gossip_addr, c_addr);
            assert_eq!(c_seen.generation, 1);
            assert_eq!(c_seen.facts.len(), 2, "reserved keys leak: {:?}", c_seen.facts);
            assert_eq!(live.get(&"a".into()).unwrap().get(fact::ROLE), Some("manager"));
        }

        // Stop c: the others see it gone; c's channel closes.
        let t_stop = Instant::now();
        c.send(Shutdown).await.unwrap();
        let gone = |live: &LiveSet| ids(live) == ["a", "b"];
        let within = Duration::from_secs(4);
        wait_until("a sees c gone", &mut a_rx, within, gone).await;
        wait_until("b sees c gone", &mut b_rx, within, gone).await;
        eprintln!("failure detected: c gone on a and b after {:?}", t_stop.elapsed());
        assert!(c_rx.changed().await.is_err(), "c's live set should close on shutdown");

        // c comes back on the same address with a higher generation.
        let t_restart = Instant::now();
        let (_c, mut c_rx) = start(config("c", c_addr, &[a_addr], 2, "worker")).await.unwrap();
        let back = |live: &LiveSet| ids(live) == ["a", "b", "c"] && live.get(&"c".into()).unwrap().generation == 2;
        let within = Duration::from_secs(3);
        wait_until("a sees c back", &mut a_rx, within, back).await;
        wait_until("b sees c back", &mut b_rx, within, back).await;
        wait_until("c sees all", &mut c_rx, within, back).await;
        eprintln!("rejoin: c (generation 2) seen by all after {:?}", t_restart.elapsed());
    }

    #[actix::test]
    async fn late_seeds_facts_updates_and_cluster_isolation() {
        let (a_addr, d_addr, e_addr) = (free_addr(24), free_addr(25), free_addr(26));
        let (_a, mut a_rx) = start(config("a", a_addr, &[], 1, "manager")).await.unwrap();

        // e belongs to another cluster and is seeded at a: it must never join.
        let mut e_config = config("e", e_addr, &[a_addr], 1, "worker");
        e_config.cluster_id = "other-cluster".into();
        let (_e, e_rx) = start(e_config).await.unwrap();

        // d starts knowing nobody and learns a's address later.
        let (d, mut d_rx) = start(config("d", d_addr, &[], 1, "worker")).await.unwrap();
        let t0 = Instant::now();
        d.send(SetSeeds(vec![a_addr])).await.unwrap();
        let both = |live: &LiveSet| ids(live) == ["a", "d"];
        let within = Duration::from_secs(3);
        wait_until("a sees d", &mut a_rx, within, both).await;
        wait_until("d sees a", &mut d_rx, within, both).await;
        eprintln!("late seed: d joined a after {:?}", t0.elapsed());
        assert!(!a_rx.borrow().contains(&"e".into()));
        assert_eq!(ids(&e_rx.borrow()), vec!["e"]);

        // Facts change at runtime; missing keys are deleted.
        let t1 = Instant::now();
        let facts = BTreeMap::from([
            (fact::ROLE.to_string(), "worker".to_string()),
            (fact::READY.to_string(), "true".to_string()),
        ]);
        d.send(SetFacts(facts.clone())).await.unwrap().unwrap();
        wait_until("a sees d's new facts", &mut a_rx, within, |live| {
            live.get(&"d".into()).is_some_and(|m| m.facts == facts)
        })
        .await;
        eprintln!("fact update seen after {:?}", t1.elapsed());
        assert_eq!(d_rx.borrow().get(&"d".into()).unwrap().facts, facts);

        let reserved = BTreeMap::from([("shoal.member".to_string(), "x".to_string())]);
        let err = d.send(SetFacts(reserved)).await.unwrap().unwrap_err();
        assert!(matches!(err, MembershipError::ReservedKey(_)));

        // A late subscriber gets the current set.
        let sub = d.send(Subscribe).await.unwrap();
        assert_eq!(ids(&sub.borrow()), vec!["a", "d"]);
    }

    #[actix::test]
    async fn dead_gossip_task_is_restarted_with_a_new_generation() {
        let (a_addr, b_addr) = (free_addr(27), free_addr(28));
        let (_a, mut a_rx) = start(config("a", a_addr, &[], 1, "manager")).await.unwrap();
        let (b, mut b_rx) = start(config("b", b_addr, &[a_addr], 1, "worker")).await.unwrap();
        let both = |live: &LiveSet| ids(live) == ["a", "b"];
        let within = Duration::from_secs(3);
        wait_until("a sees b", &mut a_rx, within, both).await;
        wait_until("b sees a", &mut b_rx, within, both).await;
        let restarts_before = restarts_of_membership();

        let t0 = Instant::now();
        b.send(AbortGossip).await.unwrap();
        let restarted =
            |live: &LiveSet| live.get(&"b".into()).is_some_and(|m| m.generation > 1) && live.contains(&"a".into());
        let within = Duration::from_secs(4);
        wait_until("b restarted gossip", &mut b_rx, within, restarted).await;
        wait_until("a sees b's new generation", &mut a_rx, within, restarted).await;
        eprintln!("gossip restart: b back with a new generation after {:?}", t0.elapsed());
        assert!(restarts_of_membership() > restarts_before);
        // b never reported a down: a stayed in its set throughout the restart.
        assert!(b_rx.borrow().contains(&"a".into()));
    }

    fn restarts_of_membership() -> f64 {
        metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(r#"shoal_actor_restarts_total{actor="membership"} "#))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}
