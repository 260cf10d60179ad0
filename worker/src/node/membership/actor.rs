//! The [`Membership`] actor: owns the chitchat handle, feeds chitchat's
//! watcher into the core and carries out what the core decides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::prelude::*;
use chitchat::transport::Transport;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion,
};
use common::NodeId;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{watch, Mutex};
use tracing::{debug, error, info, warn};

use super::{
    check_facts, dropped_counter, initial_key_values, is_reserved, live_set_from, member_facts, restart_generation,
    seeds_to_contact, GossipKeys, LiveSet, MemberEvent, MemberFacts, MembershipCore, MembershipError, Restarts,
    SealedTransport, MEMBER_KEY,
};
use crate::node::metrics::{metrics, ActorMetrics};

/// How often chitchat gossips.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// How long a dead node's state is kept before it is forgotten (a node coming
/// back after that rejoins as new, which is fine: its generation is higher).
pub const DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
/// How long deleted facts stay as tombstones, so a node that was away for
/// less than this learns about the deletion instead of being reset.
pub const MARKED_FOR_DELETION_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
/// How often seeds that are not live members are sent a handshake.
pub const SEED_RETRY: Duration = Duration::from_secs(1);

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
    /// Small typed facts (see [`fact`](super::fact)); keys must not start with `shoal.`.
    pub facts: BTreeMap<String, String>,
}

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
    /// What gossip runs over, kept for restarts.
    transport: Arc<dyn Transport>,
    /// Seeds learned after start, from [`SetSeeds`].
    learned_seeds: Vec<SocketAddr>,
    generation: u64,
    /// Dropping the handle stops gossip: keep it for as long as we run.
    handle: Option<ChitchatHandle>,
    /// Bumped at each gossip (re)start so stale watcher events are ignored.
    epoch: u64,
    restarts: Restarts,
    stopping: bool,
    core: MembershipCore,
    live_tx: watch::Sender<LiveSet>,
    metrics: ActorMetrics,
    live_gauge: Gauge,
}

/// Starts gossip over UDP on `config.gossip_addr`, sealed with `keys`
/// ([`SealedTransport`]), and the actor that owns it. The receiver holds
/// this node alone until gossip reports others; it closes when the actor
/// stops ([`Shutdown`], or a panic): treat that as fatal.
pub async fn start(
    config: MembershipConfig,
    keys: GossipKeys,
) -> Result<(Addr<Membership>, watch::Receiver<LiveSet>), MembershipError> {
    let transport = SealedTransport {
        keys,
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id.to_string(),
        dropped: dropped_counter(),
    };
    start_with_transport(config, Arc::new(transport)).await
}

/// [`start`] over any chitchat transport (an in-memory one in tests).
pub async fn start_with_transport(
    config: MembershipConfig,
    transport: Arc<dyn Transport>,
) -> Result<(Addr<Membership>, watch::Receiver<LiveSet>), MembershipError> {
    check_facts(&config.facts)?;
    let handle = spawn_gossip(&config, &config.seeds, config.generation, &*transport).await?;
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
        transport,
        learned_seeds: Vec::new(),
        handle: Some(handle),
        epoch: 0,
        restarts: Restarts::new(Instant::now()),
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
    transport: &dyn Transport,
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
    spawn_chitchat(chitchat_config, initial_key_values(&config.facts), transport)
        .await
        .map_err(|err| MembershipError::Start { addr: config.gossip_addr, reason: format!("{err:#}") })
}

fn live_set_from_chitchat(live: &BTreeMap<ChitchatId, NodeState>) -> LiveSet {
    live_set_from(live.iter().map(|(id, state)| {
        (NodeId::from(&*id.node_id), member_facts(state.key_values(), id.gossip_advertise_addr, id.generation_id))
    }))
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
        let now = Instant::now();
        let backoff = self.restarts.stopped(now);
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
        let events = self.core.gossip_stopped(now);
        self.publish(events);
        ctx.run_later(backoff, |act, ctx| act.restart_gossip(ctx));
    }

    fn restart_gossip(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.restarts.trying();
        let generation = restart_generation(self.generation, common::time::now_ms());
        let config = self.config.clone();
        let seeds = self.all_seeds();
        let transport = self.transport.clone();
        let fut = async move { spawn_gossip(&config, &seeds, generation, &*transport).await };
        ctx.spawn(wrap_future::<_, Self>(fut).map(move |result, act, ctx| {
            if act.stopping {
                return;
            }
            match result {
                Ok(handle) => {
                    let now = Instant::now();
                    act.metrics.restarted();
                    act.generation = generation;
                    act.handle = Some(handle);
                    act.restarts.running(now);
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
                    let events = act.core.gossip_restarted(self_member, now);
                    act.publish(events);
                    act.watch_gossip(ctx);
                }
                Err(err) => {
                    let backoff = act.restarts.failed();
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
                .filter(|key| !is_reserved(key) && !facts.contains_key(key))
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
pub(super) struct AbortGossip;

#[cfg(test)]
impl Handler<AbortGossip> for Membership {
    type Result = ();

    fn handle(&mut self, _msg: AbortGossip, _ctx: &mut Context<Self>) {
        if let Some(handle) = self.handle.as_ref() {
            handle.abort();
        }
    }
}
