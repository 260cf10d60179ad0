//! The cluster port: mutual-TLS connections (see [`crate::node::tls`]) carrying
//! length-prefixed MessagePack frames (see `common::wire`).
//!
//! Every connection starts with a TLS handshake and then a [`Hello`] from
//! the dialler, answered by the listener; [`dial`], [`dial_join`] and
//! [`Router::serve`] hold that exchange. A client that does not speak TLS,
//! or presents a certificate the cluster CA did not sign, is refused during
//! the handshake; a client without a certificate may only send a join hello
//! ([`authorize`]). A malformed or oversized frame ends that connection
//! only, with a log line.
//!
//! The listener bounds what a flood can take ([`ServeConfig`]): connections
//! in their handshake have deadlines and a cap of their own, smaller than
//! the one on established connections, and the oldest handshake makes room
//! for a new one, so idle or stalled connections cannot keep a join, a raft
//! peer or a node's session out.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::backoff::Backoff;
use common::node::Role;
use common::wire::{self, Frame, Hello, LogLine, LogRequest, WireError};
use common::NodeId;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;

use crate::node::metrics::{metrics, CounterFamily};
use crate::node::tls::{self, Fingerprint, PeerIdentity, Tls};

/// How long a peer has to finish the TLS handshake and send its hello, and
/// a dialler to get an answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl NetError {
    /// Worth trying again later (the peer may come back); a refusal is not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, NetError::Refused(_) | NetError::Tls(_))
    }

    /// A failed handshake: the TLS error when there is one.
    fn handshake(e: std::io::Error) -> NetError {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            NetError::Tls(tls::describe_handshake_error(&e))
        } else {
            NetError::Io(e)
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = NetError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, NetError> {
        Ok(wire::decode(src)?)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = NetError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), NetError> {
        dst.extend_from_slice(&wire::encode(&item)?);
        Ok(())
    }
}

pub type Conn = Framed<TlsStream<TcpStream>, FrameCodec>;

/// Reads the next frame; `Closed` at end of stream.
pub async fn recv(conn: &mut Conn) -> Result<Frame, NetError> {
    match conn.next().await {
        Some(r) => r,
        None => Err(NetError::Closed),
    }
}

pub async fn send(conn: &mut Conn, frame: Frame) -> Result<(), NetError> {
    conn.send(frame).await
}

/// Dials `addr` over mutual TLS, sends `hello` and returns the connection
/// with the first answer (Welcome, Redirect, …). A `Refused` answer becomes
/// `NetError::Refused`.
pub async fn dial(tls: &Tls, addr: SocketAddr, hello: Hello) -> Result<(Conn, Frame), NetError> {
    dial_within(tls, addr, hello, HANDSHAKE_TIMEOUT).await
}

/// [`dial`] with a longer wait for the answer.
pub async fn dial_within(
    tls: &Tls,
    addr: SocketAddr,
    hello: Hello,
    limit: Duration,
) -> Result<(Conn, Frame), NetError> {
    connect(tls.client_config(), addr, hello, limit).await
}

/// Dials a manager to join: no certificate yet, and the manager must
/// present the CA that the token's fingerprint pins.
pub async fn dial_join(
    addr: SocketAddr,
    ca: Fingerprint,
    hello: Hello,
    limit: Duration,
) -> Result<(Conn, Frame), NetError> {
    let config = tls::join_client_config(ca).map_err(|e| NetError::Tls(e.to_string()))?;
    connect(config, addr, hello, limit).await
}

async fn connect(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    hello: Hello,
    limit: Duration,
) -> Result<(Conn, Frame), NetError> {
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let stream =
            TlsConnector::from(config).connect(tls::server_name(), stream).await.map_err(NetError::handshake)?;
        let mut conn = Framed::new(TlsStream::Client(stream), FrameCodec);
        send(&mut conn, Frame::Hello(hello)).await?;
        match recv(&mut conn).await? {
            Frame::Refused { reason } => Err(NetError::Refused(reason)),
            answer => Ok((conn, answer)),
        }
    };
    tokio::time::timeout(limit, fut).await.map_err(|_| NetError::Timeout)?
}

/// Whether a peer with this certificate (none for a joining node) may open
/// this kind of connection; the reason to give it if not.
pub fn authorize(hello: &Hello, peer: Option<&PeerIdentity>) -> Result<(), String> {
    let claimed = match hello {
        Hello::Join { .. } => return Ok(()),
        Hello::Raft { from, .. } => Some(from),
        Hello::Session { node_id } => Some(node_id),
        Hello::Renew { node_id, .. } => Some(node_id),
        Hello::Logs(_) => None,
    };
    let Some(peer) = peer else {
        return Err("a node certificate of this cluster is required".into());
    };
    if let Some(claimed) = claimed {
        if *claimed != peer.node_id {
            return Err(format!("the hello names node {claimed} but the certificate is node {}'s", peer.node_id));
        }
    }
    let needs_manager = matches!(hello, Hello::Raft { .. } | Hello::Logs(_));
    if needs_manager && peer.role != Role::Manager {
        return Err(format!("node {} has a worker certificate; this needs a manager's", peer.node_id));
    }
    Ok(())
}

/// A connection whose hello was read, handed to whoever owns that kind.
pub struct Inbound {
    pub hello: Hello,
    pub conn: Conn,
    pub peer: SocketAddr,
    /// This connection's place under [`ServeConfig::max_established`]: keep
    /// it as long as `conn`.
    pub permit: ConnPermit,
}

pub type LogSource = Arc<dyn Fn(LogRequest) -> BoxStream<'static, Result<LogLine, String>> + Send + Sync>;

/// Connections the router hands to the manager side and not yet taken.
/// The manager takes each at once (it spawns a task per connection), so a
/// full queue means it has stalled: new connections are then refused with
/// a reason rather than queued without limit.
pub const INBOUND_QUEUE: usize = 128;

/// Open files a node needs besides its cluster-port connections (API
/// clients, Docker, raft files, gossip, log streams), for
/// [`ServeConfig::fit_to`].
pub const FD_RESERVE: usize = 512;

/// Limits of the cluster-port listener ([`Router::serve`]).
///
/// A connection is *handshaking* from accept until its hello is read and
/// authorised, then *established* until it ends. The two stages have their
/// own caps, so connections that have proven nothing cannot take the room
/// of sessions, raft peers and joins:
///
/// - Handshaking connections have `tls_timeout` for the TLS handshake and
///   then `hello_timeout` for the hello. When `max_handshaking` are in that
///   stage, a new connection takes the place of the oldest one, which is
///   closed: a real handshake takes milliseconds, so a flood of idle or
///   stalled connections cannot keep it out (were new connections made to
///   wait instead, as behind a plain semaphore, every stalled one would hold
///   its place for the whole deadline and a join would queue behind them).
/// - An authorised hello takes one of `max_established` places, held for
///   the connection's life; when none is free the hello is refused with a
///   reason (the node's agent and the raft sender retry).
///
/// Both are counted, when hit, in `shoal_cluster_connections_refused_total`
/// (by `reason`) and logged at warn at most once per [`WARN_EVERY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Default 256: a node rarely has more than a few handshakes at once
    /// (nodes reconnecting after a leader change), and each costs a TLS
    /// state of some kilobytes.
    pub max_handshaking: usize,
    /// Default 16384: a session per node (a leader of 5,000 nodes holds
    /// 5,000), raft peers, log streams, joins; [`ServeConfig::fit_to`] lowers
    /// it to what the open-file limit allows.
    pub max_established: usize,
    /// Default 5 s ([`HANDSHAKE_TIMEOUT`]).
    pub tls_timeout: Duration,
    /// Default 5 s, from the end of the TLS handshake.
    pub hello_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_handshaking: 256,
            max_established: 16_384,
            tls_timeout: HANDSHAKE_TIMEOUT,
            hello_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

impl ServeConfig {
    /// These limits, lowered where needed so that both caps fit in `nofile`
    /// open files with [`FD_RESERVE`] to spare: accept failing for want of
    /// a file descriptor would refuse everyone alike. Never below 16
    /// handshaking and 32 established connections.
    pub fn fit_to(mut self, nofile: u64) -> ServeConfig {
        let room = usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(FD_RESERVE);
        if self.max_handshaking.saturating_add(self.max_established) <= room {
            return self;
        }
        self.max_handshaking = self.max_handshaking.min((room / 8).max(16));
        self.max_established = self.max_established.min(room.saturating_sub(self.max_handshaking).max(32));
        self
    }
}

/// How often at most a warning about the cluster port's limits is logged.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Lets a log line through at most once per period; counts the ones held
/// back in between.
struct LogLimit {
    every: Duration,
    state: parking_lot::Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    fn new(every: Duration) -> Self {
        LogLimit { every, state: parking_lot::Mutex::new((None, 0)) }
    }

    /// Whether to log now; if so, how many lines were held back since the
    /// last one that went through.
    fn check(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        let (last, held) = &mut *state;
        match last {
            Some(t) if now.saturating_duration_since(*t) < self.every => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

/// The connections still handshaking, by age; see [`ServeConfig`].
struct Handshakes {
    cap: usize,
    next: u64,
    /// Dropping a connection's sender closes that connection.
    open: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Handshakes {
    fn new(cap: usize) -> Self {
        Handshakes { cap: cap.max(1), next: 0, open: BTreeMap::new() }
    }

    /// Admits a new connection: its id, what tells it it was evicted, and
    /// whether the oldest one was evicted to make room.
    fn admit(&mut self) -> (u64, oneshot::Receiver<()>, bool) {
        let evicted = self.open.len() >= self.cap && self.open.pop_first().is_some();
        let id = self.next;
        self.next += 1;
        let (tx, rx) = oneshot::channel();
        self.open.insert(id, tx);
        (id, rx, evicted)
    }

    /// The connection left the handshake stage (or ended); false if it
    /// had left already (or was evicted).
    fn leave(&mut self, id: u64) -> bool {
        self.open.remove(&id).is_some()
    }
}

/// A place among the established connections; see [`ServeConfig`].
pub struct ConnPermit {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// `shoal_cluster_connections_refused_total{reason}`.
fn refused_counter() -> CounterFamily {
    metrics().counter_family(
        "shoal_cluster_connections_refused",
        "Cluster-port connections closed by a limit: handshake_full (closed to make room for a newer one), \
         established_full, manager_busy, timeout (no TLS handshake and hello in time), revoked (a removed node's certificate)",
        "reason",
    )
}

/// What one [`Router::serve`] shares with its connections.
struct Edge {
    config: ServeConfig,
    handshakes: parking_lot::Mutex<Handshakes>,
    established: Arc<Semaphore>,
    refused: CounterFamily,
    handshaking_now: Gauge,
    established_now: Gauge,
    warn_evicted: LogLimit,
    warn_full: LogLimit,
    warn_busy: LogLimit,
    warn_timeout: LogLimit,
    warn_not_tls: LogLimit,
    warn_tls_failed: LogLimit,
}

impl Edge {
    fn new(config: ServeConfig) -> Self {
        let m = metrics();
        let stage = m.gauge_family("shoal_cluster_connections", "Open cluster-port connections by stage", "stage");
        Edge {
            handshakes: parking_lot::Mutex::new(Handshakes::new(config.max_handshaking)),
            established: Arc::new(Semaphore::new(config.max_established)),
            refused: refused_counter(),
            handshaking_now: stage.gauge("handshake"),
            established_now: stage.gauge("established"),
            warn_evicted: LogLimit::new(WARN_EVERY),
            warn_full: LogLimit::new(WARN_EVERY),
            warn_busy: LogLimit::new(WARN_EVERY),
            warn_timeout: LogLimit::new(WARN_EVERY),
            warn_not_tls: LogLimit::new(WARN_EVERY),
            warn_tls_failed: LogLimit::new(WARN_EVERY),
            config,
        }
    }

    fn leave_handshake(&self, id: u64) {
        if self.handshakes.lock().leave(id) {
            self.handshaking_now.dec();
        }
    }

    /// A place among the established connections, if one is free.
    fn establish(&self) -> Option<ConnPermit> {
        let permit = self.established.clone().try_acquire_owned().ok()?;
        self.established_now.inc();
        Some(ConnPermit { _permit: permit, gauge: self.established_now.clone() })
    }
}

/// Routes accepted connections by their hello: log requests to this node's
/// containers, everything else to the manager side if this node is one.
#[derive(Clone)]
pub struct Router {
    manager: Arc<RwLock<Option<mpsc::Sender<Inbound>>>>,
    logs: LogSource,
    tls: TlsAcceptor,
    /// Nodes removed from the cluster: a hello made with one of their
    /// certificates is refused (the CA does not take certificates back).
    revoked: Arc<RwLock<BTreeSet<NodeId>>>,
}

impl Router {
    pub fn new(logs: LogSource, tls: &Tls) -> Self {
        Router {
            manager: Arc::new(RwLock::new(None)),
            logs,
            tls: TlsAcceptor::from(tls.server_config()),
            revoked: Arc::new(RwLock::new(BTreeSet::new())),
        }
    }

    /// The nodes whose certificates this node refuses from now on (the
    /// cluster's whole list, as the dispatcher sends it).
    pub fn set_revoked(&self, nodes: BTreeSet<NodeId>) {
        *self.revoked.write() = nodes;
    }

    /// Called when this node runs the manager side; `tx` is best made with
    /// [`INBOUND_QUEUE`] places.
    pub fn set_manager(&self, tx: mpsc::Sender<Inbound>) {
        *self.manager.write() = Some(tx);
    }

    /// Accepts connections within `config`'s limits until `shutdown`
    /// completes, then closes the connections it still serves itself (those
    /// in their handshake, log streams) and returns once they are gone.
    /// Connections already handed to the manager side are its own.
    pub async fn serve(self, listener: TcpListener, config: ServeConfig, shutdown: impl Future<Output = ()>) {
        let edge = Arc::new(Edge::new(config));
        let stop = CancellationToken::new();
        // Every connection task holds a clone; `recv` returns once all ended.
        let (alive, mut all_ended) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors, most likely: give the
                        // deadlines a moment to free some.
                        tracing::warn!(error = %e, "cluster port accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (id, evicted, made_room) = edge.handshakes.lock().admit();
            if !made_room {
                edge.handshaking_now.inc();
            } else {
                edge.refused.inc("handshake_full");
                if let Some(held_back) = edge.warn_evicted.check(Instant::now()) {
                    tracing::warn!(
                        limit = edge.config.max_handshaking,
                        held_back,
                        "cluster port: too many connections in their handshake; closed the oldest to make room"
                    );
                }
            }
            let (router, edge, stop, alive) = (self.clone(), edge.clone(), stop.clone(), alive.clone());
            tokio::spawn(async move {
                let _alive = alive;
                tokio::select! {
                    r = router.handle(stream, peer, &edge, id, evicted) => if let Err(e) = r {
                        match e {
                            NetError::Timeout => {
                                edge.refused.inc("timeout");
                                if let Some(held_back) = edge.warn_timeout.check(Instant::now()) {
                                    tracing::warn!(%peer, held_back, "cluster connection closed: no TLS handshake and hello in time");
                                }
                            }
                            e => tracing::warn!(%peer, error = %e, "cluster connection closed"),
                        }
                    },
                    _ = stop.cancelled() => {}
                }
                edge.leave_handshake(id);
            });
        }
        drop(listener);
        stop.cancel();
        drop(alive);
        let _ = all_ended.recv().await;
    }

    /// One connection: the handshake stage (TLS, hello, authorisation;
    /// ended early if `evicted` fires), then its place among the
    /// established ones and its owner.
    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        edge: &Edge,
        id: u64,
        evicted: oneshot::Receiver<()>,
    ) -> Result<(), NetError> {
        let greeted = tokio::select! {
            r = self.handshake(stream, peer, edge) => r?,
            // Counted and logged when it was evicted.
            _ = evicted => return Ok(()),
        };
        edge.leave_handshake(id);
        let Some((hello, mut conn)) = greeted else { return Ok(()) };
        let Some(permit) = edge.establish() else {
            edge.refused.inc("established_full");
            if let Some(held_back) = edge.warn_full.check(Instant::now()) {
                tracing::warn!(%peer, limit = edge.config.max_established, held_back, "cluster port: too many connections; refused a hello");
            }
            let reason = format!("node busy: it has {} connections, its limit", edge.config.max_established);
            let _ = send(&mut conn, Frame::Refused { reason }).await;
            // Logged above, at most once a while.
            return Ok(());
        };
        match hello {
            Hello::Logs(req) => {
                let _permit = permit;
                serve_logs(conn, (self.logs)(req)).await
            }
            hello => {
                let not_manager = || "this node is not a manager".to_string();
                let Some(tx) = self.manager.read().clone() else {
                    let _ = send(&mut conn, Frame::Refused { reason: not_manager() }).await;
                    return Err(NetError::Refused(not_manager()));
                };
                let mut conn = match tx.try_send(Inbound { hello, conn, peer, permit }) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::TrySendError::Full(inbound)) => {
                        edge.refused.inc("manager_busy");
                        if let Some(held_back) = edge.warn_busy.check(Instant::now()) {
                            tracing::warn!(%peer, limit = INBOUND_QUEUE, held_back, "cluster port: the manager side takes no more connections now; refused one");
                        }
                        let mut conn = inbound.conn;
                        let _ = send(&mut conn, Frame::Refused { reason: "manager busy; try again".into() }).await;
                        return Ok(());
                    }
                    // The manager side stopped.
                    Err(mpsc::error::TrySendError::Closed(inbound)) => inbound.conn,
                };
                let _ = send(&mut conn, Frame::Refused { reason: not_manager() }).await;
                Err(NetError::Refused(not_manager()))
            }
        }
    }

    /// TLS and the hello, each within its deadline, and the hello checked
    /// against the certificate. `None`: refused, and said so.
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        edge: &Edge,
    ) -> Result<Option<(Hello, Conn)>, NetError> {
        let accepted = tokio::time::timeout(edge.config.tls_timeout, async {
            // A client speaking plain frames is told apart from a failed
            // handshake by its first byte.
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await? == 0 {
                return Err(NetError::Closed);
            }
            if first[0] != TLS_HANDSHAKE {
                if let Some(held_back) = edge.warn_not_tls.check(Instant::now()) {
                    tracing::warn!(%peer, held_back, "refused a connection without TLS");
                }
                return Ok(None);
            }
            match self.tls.accept(stream).await {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    if let Some(held_back) = edge.warn_tls_failed.check(Instant::now()) {
                        tracing::warn!(%peer, error = %NetError::handshake(e), held_back, "refused a connection: TLS handshake failed");
                    }
                    Ok(None)
                }
            }
        })
        .await
        .map_err(|_| NetError::Timeout)??;
        let Some(stream) = accepted else { return Ok(None) };
        // The chain was verified against the cluster CA by the handshake.
        let identity = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => Some(tls::peer_identity(cert).map_err(|e| NetError::Tls(e.to_string()))?),
            None => None,
        };
        let mut conn = Framed::new(TlsStream::Server(stream), FrameCodec);
        let first =
            tokio::time::timeout(edge.config.hello_timeout, recv(&mut conn)).await.map_err(|_| NetError::Timeout)??;
        let hello = match first {
            Frame::Hello(h) => h,
            other => {
                let what = format!("{other:?}").chars().take(60).collect::<String>();
                let _ = send(&mut conn, Frame::Refused { reason: "expected a hello".into() }).await;
                return Err(NetError::Unexpected(what));
            }
        };
        if let Some(peer_id) = identity.as_ref().map(|i| &i.node_id) {
            if self.revoked.read().contains(peer_id) {
                edge.refused.inc("revoked");
                let reason = format!("node {peer_id} was removed from the cluster: its certificate is revoked");
                tracing::warn!(%peer, %reason, "refused a hello");
                let _ = send(&mut conn, Frame::Refused { reason }).await;
                return Ok(None);
            }
        }
        if let Err(reason) = authorize(&hello, identity.as_ref()) {
            tracing::warn!(%peer, %reason, "refused a hello");
            let _ = send(&mut conn, Frame::Refused { reason }).await;
            return Ok(None);
        }
        Ok(Some((hello, conn)))
    }
}

async fn serve_logs(mut conn: Conn, mut lines: BoxStream<'static, Result<LogLine, String>>) -> Result<(), NetError> {
    send(&mut conn, Frame::Welcome).await?;
    let (mut tx, mut rx) = conn.split();
    loop {
        tokio::select! {
            line = lines.next() => match line {
                Some(Ok(l)) => tx.feed(Frame::LogLine(l)).await?,
                Some(Err(e)) => {
                    tx.send(Frame::LogEnd { error: Some(e) }).await?;
                    return Ok(());
                }
                None => {
                    tx.send(Frame::LogEnd { error: None }).await?;
                    return Ok(());
                }
            },
            // The reader went away (Ctrl-C on `service logs -f`).
            r = rx.next() => if r.is_none() { return Ok(()) },
            _ = tokio::time::sleep(Duration::from_millis(50)) => tx.flush().await?,
        }
    }
}

/// Between dials of a peer that cannot be reached.
const REDIAL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// Sends frames from a channel to a peer, reconnecting after failures and
/// dropping what was queued while the peer was away (raft resends).
pub fn spawn_sender(
    tls: Tls,
    addr: impl Fn() -> Option<SocketAddr> + Send + 'static,
    hello: Hello,
    mut rx: mpsc::Receiver<Frame>,
) {
    tokio::spawn(async move {
        let mut retries = REDIAL_BACKOFF.retries();
        loop {
            let Some(target) = addr() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                continue;
            };
            match dial(&tls, target, hello.clone()).await {
                Ok((mut conn, _)) => {
                    retries.reset();
                    loop {
                        let Some(f) = rx.recv().await else { return };
                        if let Err(e) = send(&mut conn, f).await {
                            tracing::debug!(%target, error = %e, "peer connection lost");
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "cannot reach peer");
                    tokio::time::sleep(retries.next_delay()).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            if rx.is_closed() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tls::test_ca::TestCa;
    use common::NodeId;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Node {
        id: NodeId,
        tls: Tls,
    }

    fn node(ca: &TestCa, role: Role) -> Node {
        let id = NodeId::random();
        let tls = Tls::new(&ca.issue(&id, role)).unwrap();
        Node { id, tls }
    }

    fn router(tls: &Tls) -> Router {
        Router::new(Arc::new(|_req| futures::stream::empty().boxed()), tls)
    }

    /// A manager's router on loopback; returns its address and what it
    /// hands to the manager side.
    async fn manager_router(tls: &Tls) -> (SocketAddr, mpsc::Receiver<Inbound>) {
        manager_router_with(tls, ServeConfig::default()).await
    }

    async fn manager_router_with(tls: &Tls, config: ServeConfig) -> (SocketAddr, mpsc::Receiver<Inbound>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let r = router(tls);
        r.set_manager(tx);
        tokio::spawn(r.serve(listener, config, std::future::pending()));
        (addr, rx)
    }

    /// Whether the server closed `s` within `limit` (end of stream or reset).
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // Whatever the server said before closing (a TLS alert).
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// A session dial that the manager side answers with Welcome.
    async fn session_welcomed(w: &Node, addr: SocketAddr, rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
        let hello = Hello::Session { node_id: w.id.clone() };
        let dialled = tokio::spawn({
            let tls = w.tls.clone();
            let hello = hello.clone();
            async move { dial(&tls, addr, hello).await }
        });
        let mut inbound = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(inbound.hello, hello);
        send(&mut inbound.conn, Frame::Welcome).await.unwrap();
        let (_, answer) = dialled.await.unwrap().unwrap();
        assert_eq!(answer, Frame::Welcome);
        inbound
    }

    #[test]
    fn the_oldest_handshake_makes_room() {
        let mut hs = Handshakes::new(2);
        let (a, mut a_rx, made_room) = hs.admit();
        assert!(!made_room);
        let (b, mut b_rx, made_room) = hs.admit();
        assert!(!made_room);
        let (c, mut c_rx, made_room) = hs.admit();
        assert!(made_room, "over the cap");
        assert!(matches!(a_rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)), "a was closed");
        assert!(matches!(b_rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "b stays");
        assert!(!hs.leave(a), "a was evicted already");
        assert!(hs.leave(b));
        let (_d, _d_rx, made_room) = hs.admit();
        assert!(!made_room, "b's place was free");
        assert!(matches!(c_rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "c stays");
        assert!(hs.leave(c));
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_held_back() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.check(t0), Some(0), "the first one goes through");
        assert_eq!(limit.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.check(t0 + Duration::from_secs(9)), None);
        assert_eq!(limit.check(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(limit.check(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.check(t0 + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn the_caps_fit_the_open_file_limit() {
        let d = ServeConfig::default();
        assert_eq!(ServeConfig::default().fit_to(1 << 20), d, "room enough: unchanged");
        assert_eq!(ServeConfig::default().fit_to(20_000), d);
        let small = ServeConfig::default().fit_to(1024);
        assert_eq!((small.max_handshaking, small.max_established), (64, 448));
        assert!(small.max_handshaking + small.max_established + FD_RESERVE <= 1024);
        let tiny = ServeConfig::default().fit_to(256);
        assert_eq!((tiny.max_handshaking, tiny.max_established), (16, 32), "never below the floor");
        assert_eq!(tiny.tls_timeout, d.tls_timeout);
    }

    #[tokio::test]
    async fn a_flood_of_idle_connections_does_not_keep_a_session_out() {
        let ca = TestCa::generate("c");
        let (m, w) = (node(&ca, Role::Manager), node(&ca, Role::Worker));
        // Deadlines far away: only the cap closes connections here.
        let config = ServeConfig {
            max_handshaking: 4,
            tls_timeout: Duration::from_secs(600),
            hello_timeout: Duration::from_secs(600),
            ..ServeConfig::default()
        };
        let (addr, mut rx) = manager_router_with(&m.tls, config).await;
        let refused = refused_counter();
        let before = refused.get("handshake_full");
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let _session = session_welcomed(&w, addr, &mut rx).await;
        assert!(closed_within(&mut idle[0], Duration::from_secs(5)).await, "the oldest idle connection was closed");
        // Ten idle ones and the session passed four places.
        assert!(refused.get("handshake_full") - before >= 7, "{}", refused.get("handshake_full") - before);
    }

    #[tokio::test]
    async fn a_stalled_handshake_or_hello_is_closed_at_its_deadline() {
        let ca = TestCa::generate("c");
        let (m, w) = (node(&ca, Role::Manager), node(&ca, Role::Worker));
        let config = ServeConfig {
            tls_timeout: Duration::from_millis(300),
            hello_timeout: Duration::from_millis(300),
            ..ServeConfig::default()
        };
        let (addr, mut rx) = manager_router_with(&m.tls, config).await;
        // Nothing after connect; half a TLS record header.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(&[TLS_HANDSHAKE, 3, 1, 1]).await.unwrap();
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
        assert!(closed_within(&mut partial, Duration::from_secs(5)).await);
        // TLS done, no hello.
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(w.tls.client_config()).connect(tls::server_name(), stream).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(rx.try_recv().is_err(), "nothing reached the manager side");
    }

    #[tokio::test]
    async fn over_the_established_cap_a_hello_is_refused_until_a_place_frees() {
        let ca = TestCa::generate("c");
        let (m, w) = (node(&ca, Role::Manager), node(&ca, Role::Worker));
        let config = ServeConfig { max_established: 1, ..ServeConfig::default() };
        let (addr, mut rx) = manager_router_with(&m.tls, config).await;
        let first = session_welcomed(&w, addr, &mut rx).await;
        let err = dial(&w.tls, addr, Hello::Session { node_id: w.id.clone() }).await.unwrap_err();
        assert!(matches!(err, NetError::Refused(ref r) if r == "node busy: it has 1 connections, its limit"), "{err}");
        drop(first);
        let _second = session_welcomed(&w, addr, &mut rx).await;
    }

    #[tokio::test]
    async fn a_full_manager_queue_refuses_with_a_reason() {
        let ca = TestCa::generate("c");
        let (m, w) = (node(&ca, Role::Manager), node(&ca, Role::Worker));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let r = router(&m.tls);
        r.set_manager(tx.clone());
        tokio::spawn(r.serve(listener, ServeConfig::default(), std::future::pending()));
        // The first waits in the queue (nobody takes it), the second finds it full.
        let hello = Hello::Session { node_id: w.id.clone() };
        let waiting = tokio::spawn({
            let (tls, hello) = (w.tls.clone(), hello.clone());
            async move { dial(&tls, addr, hello).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tx.capacity() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the first connection never reached the queue");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = dial(&w.tls, addr, hello).await.unwrap_err();
        assert!(matches!(err, NetError::Refused(ref r) if r == "manager busy; try again"), "{err}");
        let mut inbound = rx.recv().await.unwrap();
        send(&mut inbound.conn, Frame::Welcome).await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap().1, Frame::Welcome);
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_closes_what_it_serves() {
        let ca = TestCa::generate("c");
        let m = node(&ca, Role::Manager);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // Only the shutdown can close a connection waiting for its hello.
        let config = ServeConfig { hello_timeout: Duration::from_secs(600), ..ServeConfig::default() };
        let serving = tokio::spawn(router(&m.tls).serve(listener, config, async {
            let _ = stopped.await;
        }));
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(m.tls.client_config()).connect(tls::server_name(), stream).await.unwrap();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), serving).await.expect("serve returned").unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "nothing listens any more");
    }

    #[tokio::test]
    async fn plaintext_and_garbage_are_refused_and_close_only_that_connection() {
        let ca = TestCa::generate("c");
        let (m, w) = (node(&ca, Role::Manager), node(&ca, Role::Worker));
        let (addr, mut rx) = manager_router(&m.tls).await;

        // A plaintext hello, random bytes, an oversized length prefix: the
        // server closes without an answer.
        let hello = wire::encode(&Frame::Hello(Hello::Session { node_id: w.id.clone() })).unwrap();
        for junk in [hello, b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1".to_vec(), u32::MAX.to_be_bytes().to_vec()] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&junk).await.unwrap();
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
            assert_eq!(n, 0, "connection closed without an answer");
        }

        // The server still serves a node of the cluster.
        let hello = Hello::Session { node_id: w.id.clone() };
        let dialled = tokio::spawn({
            let tls = w.tls.clone();
            let hello = hello.clone();
            async move { dial(&tls, addr, hello).await }
        });
        let inbound = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(inbound.hello, hello);
        let mut conn = inbound.conn;
        send(&mut conn, Frame::Welcome).await.unwrap();
        let (_, answer) = dialled.await.unwrap().unwrap();
        assert_eq!(answer, Frame::Welcome);
    }

    #[tokio::test]
    async fn a_node_of_another_cluster_cannot_connect() {
        let ca = TestCa::generate("c");
        let m = node(&ca, Role::Manager);
        let stranger = node(&TestCa::generate("other"), Role::Manager);
        let (addr, mut rx) = manager_router(&m.tls).await;
        let err = dial(&stranger.tls, addr, Hello::Raft { from: stranger.id.clone(), raft_id: 7 }).await.unwrap_err();
        assert!(matches!(err, NetError::Tls(ref e) if e.contains("UnknownIssuer")), "{err}");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn hellos_need_the_right_certificate() {
        let ca = TestCa::generate("c");
        let (m, w) = (node(&ca, Role::Manager), node(&ca, Role::Worker));
        let (addr, mut rx) = manager_router(&m.tls).await;

        // A worker cannot open raft or read logs, nor claim another node.
        let refused = |hello: Hello, tls: Tls| async move { dial(&tls, addr, hello).await.unwrap_err() };
        let err = refused(Hello::Raft { from: w.id.clone(), raft_id: 7 }, w.tls.clone()).await;
        assert!(matches!(err, NetError::Refused(ref r) if r.contains("worker certificate")), "{err}");
        let logs = Hello::Logs(LogRequest { tasks: vec![], follow: false, tail: None, service: None });
        let err = refused(logs, w.tls.clone()).await;
        assert!(matches!(err, NetError::Refused(ref r) if r.contains("worker certificate")), "{err}");
        let err = refused(Hello::Session { node_id: m.id.clone() }, w.tls.clone()).await;
        assert!(matches!(err, NetError::Refused(ref r) if r.contains("certificate is node")), "{err}");

        // Without a certificate (a joiner's config), only a join gets through.
        let fp = ca.fingerprint().unwrap();
        let err = dial_join(addr, fp, Hello::Session { node_id: w.id.clone() }, HANDSHAKE_TIMEOUT).await.unwrap_err();
        assert!(
            matches!(err, NetError::Refused(ref r) if r.contains("certificate of this cluster is required")),
            "{err}"
        );
        assert!(rx.try_recv().is_err(), "nothing reached the manager side");
        let join = Hello::Join {
            token: "t".into(),
            hostname: "h".into(),
            advertise_addr: "127.0.0.1:1".parse().unwrap(),
            protocol: wire::PROTOCOL_VERSION,
            csr: vec![],
        };
        let joining = tokio::spawn(dial_join(addr, fp, join.clone(), HANDSHAKE_TIMEOUT));
        let inbound = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(inbound.hello, join);
        let mut conn = inbound.conn;
        send(&mut conn, Frame::Refused { reason: "invalid join token".into() }).await.unwrap();
        assert!(matches!(joining.await.unwrap(), Err(NetError::Refused(_))));

        // A joiner pinning another CA refuses the manager itself.
        let other = TestCa::generate("c").fingerprint().unwrap();
        let err = dial_join(addr, other, join, HANDSHAKE_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, NetError::Tls(ref e) if e == "the manager's CA does not match the join token"), "{err}");
    }

    #[test]
    fn authorize_is_by_certificate() {
        let (m, w) = (NodeId::from("m"), NodeId::from("w"));
        let manager = PeerIdentity { node_id: m.clone(), role: Role::Manager };
        let worker = PeerIdentity { node_id: w.clone(), role: Role::Worker };
        let raft = Hello::Raft { from: m.clone(), raft_id: 1 };
        assert_eq!(authorize(&raft, Some(&manager)), Ok(()));
        assert!(authorize(&raft, None).is_err());
        assert!(authorize(&Hello::Raft { from: w.clone(), raft_id: 1 }, Some(&worker)).is_err());
        assert_eq!(authorize(&Hello::Session { node_id: w.clone() }, Some(&worker)), Ok(()));
        assert_eq!(authorize(&Hello::Session { node_id: m.clone() }, Some(&manager)), Ok(()));
        assert!(authorize(&Hello::Session { node_id: w }, Some(&manager)).is_err());
    }

    #[tokio::test]
    async fn a_worker_refuses_manager_hellos() {
        let ca = TestCa::generate("c");
        let (w, other) = (node(&ca, Role::Worker), node(&ca, Role::Worker));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(router(&w.tls).serve(listener, ServeConfig::default(), std::future::pending()));
        let err = dial(&other.tls, addr, Hello::Session { node_id: other.id.clone() }).await.unwrap_err();
        assert!(matches!(err, NetError::Refused(ref r) if r.contains("not a manager")), "{err}");
    }
}
