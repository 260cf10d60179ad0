//! The cluster port: TCP connections carrying length-prefixed MessagePack
//! frames (see `common::wire`).
//!
//! Every connection starts with a [`Hello`] from the dialler, answered by
//! the listener; [`dial`] and [`Router::serve`] hold that exchange, so a TLS
//! layer wraps exactly these two places. A malformed or oversized frame ends
//! that connection only, with a log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::wire::{self, Frame, Hello, LogLine, LogRequest, WireError};
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, Framed};

/// How long a peer has to send its hello, and a dialler to get an answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
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
        !matches!(self, NetError::Refused(_))
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

pub type Conn = Framed<TcpStream, FrameCodec>;

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

/// Dials `addr`, sends `hello` and returns the connection with the first
/// answer (Welcome, JoinAccepted or Redirect). A `Refused` answer becomes
/// `NetError::Refused`.
pub async fn dial(addr: SocketAddr, hello: Hello) -> Result<(Conn, Frame), NetError> {
    dial_within(addr, hello, HANDSHAKE_TIMEOUT).await
}

/// [`dial`] with a longer wait for the answer (a join waits for raft).
pub async fn dial_within(addr: SocketAddr, hello: Hello, limit: Duration) -> Result<(Conn, Frame), NetError> {
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Framed::new(stream, FrameCodec);
        send(&mut conn, Frame::Hello(hello)).await?;
        match recv(&mut conn).await? {
            Frame::Refused { reason } => Err(NetError::Refused(reason)),
            answer => Ok((conn, answer)),
        }
    };
    tokio::time::timeout(limit, fut).await.map_err(|_| NetError::Timeout)?
}

/// A connection whose hello was read, handed to whoever owns that kind.
pub struct Inbound {
    pub hello: Hello,
    pub conn: Conn,
    pub peer: SocketAddr,
}

pub type LogSource =
    Arc<dyn Fn(LogRequest) -> BoxStream<'static, Result<LogLine, String>> + Send + Sync>;

/// Routes accepted connections by their hello: log requests to this node's
/// containers, everything else to the manager side if this node is one.
#[derive(Clone)]
pub struct Router {
    manager: Arc<RwLock<Option<mpsc::UnboundedSender<Inbound>>>>,
    logs: LogSource,
}

impl Router {
    pub fn new(logs: LogSource) -> Self {
        Router { manager: Arc::new(RwLock::new(None)), logs }
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
        let mut conn = Framed::new(stream, FrameCodec);
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, recv(&mut conn))
            .await
            .map_err(|_| NetError::Timeout)??;
        let hello = match first {
            Frame::Hello(h) => h,
            other => {
                let what = format!("{other:?}").chars().take(60).collect::<String>();
                let _ = send(&mut conn, Frame::Refused { reason: "expected a hello".into() }).await;
                return Err(NetError::Unexpected(what));
            }
        };
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

async fn serve_logs(
    mut conn: Conn,
    mut lines: BoxStream<'static, Result<LogLine, String>>,
) -> Result<(), NetError> {
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

/// Sends frames from a channel to a peer, reconnecting after failures and
/// dropping what was queued while the peer was away (raft resends).
pub fn spawn_sender(
    addr: impl Fn() -> Option<SocketAddr> + Send + 'static,
    hello: Hello,
    mut rx: mpsc::Receiver<Frame>,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(target) = addr() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                continue;
            };
            match dial(target, hello.clone()).await {
                Ok((mut conn, _)) => {
                    backoff = Duration::from_millis(50);
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
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn router() -> Router {
        Router::new(Arc::new(|_req| futures::stream::empty().boxed()))
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_close_only_that_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let r = router();
        r.set_manager(tx);
        tokio::spawn(r.serve(listener));

        // Random bytes: the server drops the connection.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1").await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "connection closed without an answer");

        // An oversized length prefix: closed at once, nothing buffered.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0);

        // The server still serves a well-formed hello.
        let hello = Hello::Session { node_id: "n1".into() };
        let dialled = tokio::spawn(dial(addr, hello.clone()));
        let inbound = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(inbound.hello, hello);
        let mut conn = inbound.conn;
        send(&mut conn, Frame::Welcome).await.unwrap();
        let (_, answer) = dialled.await.unwrap().unwrap();
        assert_eq!(answer, Frame::Welcome);
    }

    #[tokio::test]
    async fn a_worker_refuses_manager_hellos() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(router().serve(listener));
        let err = dial(addr, Hello::Session { node_id: "n1".into() }).await.unwrap_err();
        assert!(matches!(err, NetError::Refused(ref r) if r.contains("not a manager")), "{err}");
    }
}
