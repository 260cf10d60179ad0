//! The cluster port: mutual-TLS connections (see [`crate::tls`]) carrying
//! length-prefixed MessagePack frames (see `common::wire`).
//!
//! Every connection starts with a TLS handshake and then a [`Hello`] from
//! the dialler, answered by the listener; [`dial`], [`dial_join`] and
//! [`Router::serve`] hold that exchange. A client that does not speak TLS,
//! or presents a certificate the cluster CA did not sign, is refused during
//! the handshake; a client without a certificate may only send a join hello
//! ([`authorize`]). A malformed or oversized frame ends that connection
//! only, with a log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::backoff::Backoff;
use common::node::Role;
use common::wire::{self, Frame, Hello, LogLine, LogRequest, WireError};
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::tls::{self, Fingerprint, PeerIdentity, Tls};

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
}

pub type LogSource = Arc<dyn Fn(LogRequest) -> BoxStream<'static, Result<LogLine, String>> + Send + Sync>;

/// Routes accepted connections by their hello: log requests to this node's
/// containers, everything else to the manager side if this node is one.
#[derive(Clone)]
pub struct Router {
    manager: Arc<RwLock<Option<mpsc::UnboundedSender<Inbound>>>>,
    logs: LogSource,
    tls: TlsAcceptor,
}

impl Router {
    pub fn new(logs: LogSource, tls: &Tls) -> Self {
        Router { manager: Arc::new(RwLock::new(None)), logs, tls: TlsAcceptor::from(tls.server_config()) }
    }

    /// Called when this node runs the manager side.
    pub fn set_manager(&self, tx: mpsc::UnboundedSender<Inbound>) {
        *self.manager.write() = Some(tx);
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster port accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let router = self.clone();
            tokio::spawn(async move {
                if let Err(e) = router.handle(stream, peer).await {
                    tracing::warn!(%peer, error = %e, "cluster connection closed");
                }
            });
        }
    }

    async fn handle(&self, stream: TcpStream, peer: SocketAddr) -> Result<(), NetError> {
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            // A client speaking plain frames is told apart from a failed
            // handshake by its first byte.
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await? == 0 {
                return Err(NetError::Closed);
            }
            if first[0] != TLS_HANDSHAKE {
                tracing::warn!(%peer, "refused a connection without TLS");
                return Ok(None);
            }
            match self.tls.accept(stream).await {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    tracing::warn!(%peer, error = %NetError::handshake(e), "refused a connection: TLS handshake failed");
                    Ok(None)
                }
            }
        })
        .await
        .map_err(|_| NetError::Timeout)??;
        let Some(stream) = accepted else { return Ok(()) };
        // The chain was verified against the cluster CA by the handshake.
        let identity = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => Some(tls::peer_identity(cert).map_err(|e| NetError::Tls(e.to_string()))?),
            None => None,
        };
        let mut conn = Framed::new(TlsStream::Server(stream), FrameCodec);
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, recv(&mut conn)).await.map_err(|_| NetError::Timeout)??;
        let hello = match first {
            Frame::Hello(h) => h,
            other => {
                let what = format!("{other:?}").chars().take(60).collect::<String>();
                let _ = send(&mut conn, Frame::Refused { reason: "expected a hello".into() }).await;
                return Err(NetError::Unexpected(what));
            }
        };
        if let Err(reason) = authorize(&hello, identity.as_ref()) {
            tracing::warn!(%peer, %reason, "refused a hello");
            let _ = send(&mut conn, Frame::Refused { reason }).await;
            return Ok(());
        }
        match hello {
            Hello::Logs(req) => serve_logs(conn, (self.logs)(req)).await,
            hello => {
                let tx = self.manager.read().clone();
                match tx {
                    Some(tx) => {
                        let _ = tx.send(Inbound { hello, conn, peer });
                        Ok(())
                    }
                    None => {
                        let reason = "this node is not a manager".to_string();
                        let _ = send(&mut conn, Frame::Refused { reason: reason.clone() }).await;
                        Err(NetError::Refused(reason))
                    }
                }
            }
        }
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
    use crate::tls::{ClusterCa, NodeIdentity};
    use common::NodeId;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Node {
        id: NodeId,
        tls: Tls,
    }

    fn node(ca: &ClusterCa, role: Role) -> Node {
        let id = NodeId::random();
        let tls = Tls::new(&NodeIdentity::issue(ca, &id, role).unwrap()).unwrap();
        Node { id, tls }
    }

    fn router(tls: &Tls) -> Router {
        Router::new(Arc::new(|_req| futures::stream::empty().boxed()), tls)
    }

    /// A manager's router on loopback; returns its address and what it
    /// hands to the manager side.
    async fn manager_router(tls: &Tls) -> (SocketAddr, mpsc::UnboundedReceiver<Inbound>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let r = router(tls);
        r.set_manager(tx);
        tokio::spawn(r.serve(listener));
        (addr, rx)
    }

    #[tokio::test]
    async fn plaintext_and_garbage_are_refused_and_close_only_that_connection() {
        let ca = ClusterCa::generate("c").unwrap();
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
        let ca = ClusterCa::generate("c").unwrap();
        let m = node(&ca, Role::Manager);
        let stranger = node(&ClusterCa::generate("other").unwrap(), Role::Manager);
        let (addr, mut rx) = manager_router(&m.tls).await;
        let err = dial(&stranger.tls, addr, Hello::Raft { from: stranger.id.clone(), raft_id: 7 }).await.unwrap_err();
        assert!(matches!(err, NetError::Tls(ref e) if e.contains("UnknownIssuer")), "{err}");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn hellos_need_the_right_certificate() {
        let ca = ClusterCa::generate("c").unwrap();
        let (m, w) = (node(&ca, Role::Manager), node(&ca, Role::Worker));
        let (addr, mut rx) = manager_router(&m.tls).await;

        // A worker cannot open raft or read logs, nor claim another node.
        let refused = |hello: Hello, tls: Tls| async move { dial(&tls, addr, hello).await.unwrap_err() };
        let err = refused(Hello::Raft { from: w.id.clone(), raft_id: 7 }, w.tls.clone()).await;
        assert!(matches!(err, NetError::Refused(ref r) if r.contains("worker certificate")), "{err}");
        let logs = Hello::Logs(LogRequest { tasks: vec![], follow: false, tail: None });
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
        let other = ClusterCa::generate("c").unwrap().fingerprint().unwrap();
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
        let ca = ClusterCa::generate("c").unwrap();
        let (w, other) = (node(&ca, Role::Worker), node(&ca, Role::Worker));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(router(&w.tls).serve(listener));
        let err = dial(&other.tls, addr, Hello::Session { node_id: other.id.clone() }).await.unwrap_err();
        assert!(matches!(err, NetError::Refused(ref r) if r.contains("not a manager")), "{err}");
    }
}
