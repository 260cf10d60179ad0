//! What a flood can take from the API (issue 16): caps on connections and
//! TLS handshakes, deadlines on request heads, handshakes and bodies, and a
//! size limit on every request body, so that idle, slow or oversized
//! clients cannot take a manager down or keep a legitimate client out.
//!
//! [`Limits`] is applied in three places: [`super::serve`] sets what the
//! HTTP server enforces per connection (actix-web's own timers: a request
//! head not complete within `request_head_timeout` of the connection's
//! start is answered 408 and closed; a TLS handshake has
//! `tls_handshake_timeout`); [`on_connect`] keeps the established
//! connections under `max_connections` with a [`ConnTable`] (the pure
//! core), closing an idle one for a new one; and [`bodies`] is the
//! middleware that enforces the body limits for every handler alike (JSON
//! extractors and handlers reading the raw payload): a `Content-Length`
//! over [`BODY_LIMIT`] is refused with 413 before a byte is read, a chunked
//! body is cut off at the limit, and a body still arriving `body_timeout`
//! after its head is cut off too (408). Nothing buffers a body beyond the
//! limit.
//!
//! Keep-alive is off: every connection carries one request, so the idle
//! keep-alive time is nil. actix-web's head deadline covers only a
//! connection's first request, so a connection kept alive could dribble
//! its second request head forever; one request per connection leaves no
//! such gap (the clients, shoal's CLI, the docker CLI and the SDKs, open a
//! new connection when told `Connection: close`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future as _;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::Extensions;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpResponse};
use common::api::ApiError;
use futures::future::LocalBoxFuture;
use futures::Stream;
use worker::node::metrics::{metrics, CounterFamily};

/// The largest request body any endpoint takes (a spec is a few KiB; a
/// secret or config value, up to 1000 KiB, comes base64 in JSON).
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Open files the node keeps for everything but API connections (the
/// cluster port's own caps, raft files, Docker, gossip), for
/// [`Limits::fit_to`].
pub const FD_RESERVE: usize = 512 + 256 + 4096;

/// The API server's limits; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Default [`DEFAULT_MAX_CONNECTIONS`] (`--api-max-connections`):
    /// established connections (past their TLS handshake) at once. A
    /// connection over the cap is accepted and then the oldest connection
    /// that has not sent a complete request head yet is closed (an idle or
    /// dribbling one: a flood cannot keep a client that sends its request
    /// at once out); when every connection is busy with a request, the new
    /// one is closed at once instead. Nothing waits in a queue for a slot.
    pub max_connections: usize,
    /// Default 16,384: connections in their TLS handshake at once (actix
    /// stops accepting at this many: further connections wait in the
    /// kernel's backlog until a handshake ends, at most
    /// `tls_handshake_timeout` later). A stalled handshake costs memory,
    /// not CPU, so this is high: a flood of silent TLS connections is taken
    /// in whole and timed out rather than queued in front of a client.
    pub max_handshaking: usize,
    /// Default 5 s from the connection's start for the request head.
    pub request_head_timeout: Duration,
    /// Default 3 s for the TLS handshake (`--api-tls`).
    pub tls_handshake_timeout: Duration,
    /// Default 30 s from the head for the whole body.
    pub body_timeout: Duration,
    /// Default 1 s: a closing connection (a response sent, the client
    /// still sending) is dropped after this.
    pub disconnect_timeout: Duration,
    /// Default 1024 connections waiting to be accepted.
    pub backlog: u32,
}

/// `--api-max-connections`'s default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshaking: 16_384,
            request_head_timeout: Duration::from_secs(5),
            tls_handshake_timeout: Duration::from_secs(3),
            body_timeout: Duration::from_secs(30),
            disconnect_timeout: Duration::from_secs(1),
            backlog: 1024,
        }
    }
}

impl Limits {
    /// These limits, with the connection caps lowered to fit in `nofile`
    /// open files with [`FD_RESERVE`] to spare (accept failing for want of
    /// a file descriptor would refuse everyone alike): established
    /// connections first, handshakes in what is left; never below 64 each.
    pub fn fit_to(mut self, nofile: u64) -> Limits {
        let room = usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(FD_RESERVE);
        self.max_connections = self.max_connections.min(room).max(64);
        self.max_handshaking = self.max_handshaking.min(room.saturating_sub(self.max_connections)).max(64);
        self
    }

    /// What the HTTP server's worker holds at most (actix stops accepting
    /// there): the established connections, those closing after an
    /// eviction, and the handshakes.
    pub fn worker_connections(&self) -> usize {
        self.max_connections.saturating_add(self.max_handshaking).saturating_add(64)
    }
}

/// Which connection a new one costs, by [`ConnTable::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission<T> {
    /// Room for it.
    Admitted,
    /// Admitted; the oldest connection without a request so far, this
    /// one, is to be closed.
    Evict(T),
    /// Every connection is busy with a request: the new one is to be closed.
    Refused,
}

/// The established connections, oldest first, and whether each has sent a
/// request (the pure core of the connection cap; see [`Limits::max_connections`]).
#[derive(Debug)]
pub struct ConnTable<T> {
    cap: usize,
    next: u64,
    /// By id (the order of admission): the handle and whether a request came.
    conns: BTreeMap<u64, Entry<T>>,
    /// Entries counted toward the cap (not `closing`).
    live: usize,
}

#[derive(Debug)]
struct Entry<T> {
    handle: T,
    requested: bool,
    /// Evicted: closing, no longer counted nor chosen again.
    closing: bool,
}

impl<T: Copy> ConnTable<T> {
    pub fn new(cap: usize) -> Self {
        ConnTable { cap: cap.max(1), next: 0, conns: BTreeMap::new(), live: 0 }
    }

    /// Connections counted toward the cap.
    pub fn live(&self) -> usize {
        self.live
    }

    /// A new connection `handle`: its id (when admitted) and what it costs.
    pub fn admit(&mut self, handle: T) -> (Option<u64>, Admission<T>) {
        let mut admission = Admission::Admitted;
        if self.live >= self.cap {
            let victim = self.conns.iter_mut().find(|(_, e)| !e.requested && !e.closing);
            match victim {
                Some((_, e)) => {
                    e.closing = true;
                    self.live -= 1;
                    admission = Admission::Evict(e.handle);
                }
                None => return (None, Admission::Refused),
            }
        }
        let id = self.next;
        self.next += 1;
        self.conns.insert(id, Entry { handle, requested: false, closing: false });
        self.live += 1;
        (Some(id), admission)
    }

    /// Connection `id`'s handle, while it is here.
    pub fn handle(&self, id: u64) -> Option<T> {
        self.conns.get(&id).map(|e| e.handle)
    }

    /// Connection `id` has sent a request head: it is no longer evicted.
    pub fn requested(&mut self, id: u64) {
        if let Some(e) = self.conns.get_mut(&id) {
            e.requested = true;
        }
    }

    /// Connection `id` is gone.
    pub fn remove(&mut self, id: u64) {
        if let Some(e) = self.conns.remove(&id) {
            if !e.closing {
                self.live -= 1;
            }
        }
    }
}

thread_local! {
    /// The connections of this thread's API server worker (the API runs one).
    static CONNS: RefCell<Option<ConnTable<RawFd>>> = const { RefCell::new(None) };
}

/// In a connection's extensions while it is in [`CONNS`]: dropped with the
/// connection (the last of it: the dispatcher and its requests).
struct Admitted(u64);

impl Drop for Admitted {
    fn drop(&mut self) {
        CONNS.with(|c| {
            if let Some(t) = c.borrow_mut().as_mut() {
                t.remove(self.0);
            }
        });
    }
}

/// The file descriptor of an API connection (plain TCP, TLS over TCP, the
/// unix socket), borrowed for the length of `on_connect`.
fn conn_fd(conn: &dyn std::any::Any) -> Option<RawFd> {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = conn.downcast_ref::<Tls>() {
        return Some(tls.get_ref().0.as_raw_fd());
    }
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        return Some(tcp.as_raw_fd());
    }
    conn.downcast_ref::<actix_web::rt::net::UnixStream>().map(|u| u.as_raw_fd())
}

/// Closes a connection from under its dispatcher: the next read sees the
/// end, and the dispatcher drops it.
fn shut(fd: RawFd) {
    // The fd is open: it is in CONNS, removed (on this thread) before it is
    // closed, or it is the connection at hand.
    if let Err(e) = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both) {
        tracing::debug!(error = %e, "cannot shut an API connection");
    }
}

/// The connection cap, from `HttpServer::on_connect` (after a TLS
/// handshake): admits the connection, closing it or the oldest one
/// without a request (see [`Limits::max_connections`]).
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut Extensions, cap: usize) {
    let Some(fd) = conn_fd(conn) else { return };
    let (id, admission) = CONNS.with(|c| c.borrow_mut().get_or_insert_with(|| ConnTable::new(cap)).admit(fd));
    match admission {
        Admission::Admitted => {}
        Admission::Evict(victim) => {
            refused_counter().inc("connection_evicted");
            shut(victim);
        }
        Admission::Refused => {
            refused_counter().inc("connection_refused");
            tracing::debug!("api connection refused: every connection is busy");
            shut(fd);
        }
    }
    if let Some(id) = id {
        ext.insert(Admitted(id));
    }
}

/// Marks the request's connection as having sent a request (from the
/// middleware, once the head is complete); its id in [`CONNS`].
fn mark_requested(req: &ServiceRequest) -> Option<u64> {
    let Admitted(id) = req.conn_data::<Admitted>()?;
    CONNS.with(|c| {
        if let Some(t) = c.borrow_mut().as_mut() {
            t.requested(*id);
        }
    });
    Some(*id)
}

/// A refused body: the rest of it is not read. actix would otherwise
/// read on and discard it (all of a chunked body, a declared one for
/// `disconnect_timeout`); with the connection's read side shut, the
/// answer goes out and the connection closes.
fn read_no_more(conn: Option<u64>) {
    let fd = conn.and_then(|id| CONNS.with(|c| c.borrow().as_ref().and_then(|t| t.handle(id))));
    if let Some(fd) = fd {
        // Open: in CONNS (see `shut`).
        if let Err(e) = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Read) {
            tracing::debug!(error = %e, "cannot shut an API connection's read side");
        }
    }
}

/// `shoal_api_requests_refused_total{reason}`.
fn refused_counter() -> CounterFamily {
    metrics().counter_family(
        "shoal_api_requests_refused",
        "API requests and connections refused by a limit: body_too_large (over the body limit), body_timeout \
         (the body did not arrive in time), connection_evicted (an idle connection closed for a new one over \
         the connection cap), connection_refused (a new connection over the cap, every one busy)",
        "reason",
    )
}

/// Why a request's declared length is refused, if it is: `None` for no or
/// an acceptable `Content-Length`.
fn declared_too_large(content_length: Option<&str>, limit: usize) -> bool {
    match content_length.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(n)) => n > limit as u64,
        // Unparseable: actix's parser has refused it already.
        Some(Err(_)) | None => false,
    }
}

/// The middleware (`App::wrap_fn`) enforcing the body limits; see the
/// module documentation.
pub fn bodies<S, B>(
    mut req: ServiceRequest,
    srv: &S,
    timeout: Duration,
) -> LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: actix_web::dev::Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    let conn = mark_requested(&req);
    let length = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared_too_large(length, BODY_LIMIT) {
        refused_counter().inc("body_too_large");
        tracing::debug!(method = %req.method(), path = req.path(), "api request refused: body too large");
        read_no_more(conn);
        let message = format!("request body is larger than {BODY_LIMIT} bytes");
        let resp = HttpResponse::PayloadTooLarge().json(ApiError { message });
        let resp = req.into_response(resp).map_into_right_body();
        return Box::pin(async move { Ok(resp) });
    }
    let inner = req.take_payload();
    let capped = Capped {
        inner,
        read: 0,
        limit: BODY_LIMIT,
        deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        done: false,
        conn,
    };
    req.set_payload(Payload::Stream { payload: Box::pin(capped) });
    let fut = srv.call(req);
    Box::pin(async move {
        let res = fut.await?;
        // A handler's own limit (the Engine API's is lower) refused it.
        if matches!(res.status(), StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
            read_no_more(conn);
        }
        Ok(res.map_into_left_body())
    })
}

/// A request body cut off at `limit` bytes or at `deadline`.
struct Capped {
    inner: Payload,
    read: usize,
    limit: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// An error was returned: nothing more.
    done: bool,
    /// The connection in [`CONNS`], whose read side is shut on an error.
    conn: Option<u64>,
}

impl Stream for Capped {
    type Item = Result<actix_web::web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.read = this.read.saturating_add(chunk.len());
                if this.read > this.limit {
                    this.done = true;
                    refused_counter().inc("body_too_large");
                    read_no_more(this.conn);
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.done = true;
                    refused_counter().inc("body_timeout");
                    read_no_more(this.conn);
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    )))))
                }
                _ => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn the_caps_fit_the_open_file_limit() {
        let d = Limits::default();
        assert_eq!(Limits::default().fit_to(1 << 20), d, "room enough: unchanged");
        let l = Limits::default().fit_to(10_000);
        let room = 10_000 - FD_RESERVE;
        assert_eq!((l.max_connections, l.max_handshaking), (1024, room - 1024));
        let small = Limits::default().fit_to(1024);
        assert_eq!((small.max_connections, small.max_handshaking), (64, 64));
        assert_eq!(small.worker_connections(), 64 * 3);
        let big = Limits { max_connections: 100_000, ..Limits::default() }.fit_to(20_000);
        assert_eq!((big.max_connections, big.max_handshaking), (20_000 - FD_RESERVE, 64));
    }

    #[test]
    fn over_the_cap_the_oldest_idle_connection_goes() {
        let mut t = ConnTable::new(3);
        let (a, _) = t.admit('a');
        let (b, _) = t.admit('b');
        let (c, adm) = t.admit('c');
        assert_eq!(adm, Admission::Admitted);
        assert_eq!(t.live(), 3);
        // a sent its request: b, the oldest idle, makes room for d.
        t.requested(a.unwrap());
        let (d, adm) = t.admit('d');
        assert_eq!(adm, Admission::Evict('b'));
        assert_eq!(t.live(), 3);
        // b closing is neither counted nor chosen again; its end changes nothing.
        t.remove(b.unwrap());
        assert_eq!(t.live(), 3);
        let (e, adm) = t.admit('e');
        assert_eq!(adm, Admission::Evict('c'));
        // All busy: the newcomer is refused, not admitted.
        t.remove(c.unwrap());
        t.requested(d.unwrap());
        t.requested(e.unwrap());
        assert_eq!(t.admit('f'), (None, Admission::Refused));
        assert_eq!(t.live(), 3);
        assert_eq!((t.handle(a.unwrap()), t.handle(b.unwrap())), (Some('a'), None));
        // One ends: room again.
        t.remove(a.unwrap());
        assert_eq!(t.admit('g').1, Admission::Admitted);
        t.remove(99);
        assert_eq!(t.live(), 3);
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused() {
        assert!(declared_too_large(Some("1073741824"), BODY_LIMIT));
        assert!(declared_too_large(Some("4194305"), BODY_LIMIT));
        assert!(!declared_too_large(Some("4194304"), BODY_LIMIT));
        assert!(!declared_too_large(None, BODY_LIMIT));
        assert!(!declared_too_large(Some("x"), BODY_LIMIT));
    }

    fn body(chunks: Vec<&'static [u8]>, limit: usize, timeout: Option<Duration>) -> Capped {
        let s = futures::stream::iter(chunks.into_iter().map(|c| Ok(actix_web::web::Bytes::from_static(c))))
            .chain(futures::stream::pending());
        Capped {
            inner: Payload::Stream { payload: Box::pin(s) },
            read: 0,
            limit,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            done: false,
            conn: None,
        }
    }

    #[tokio::test]
    async fn a_body_is_cut_off_at_the_limit_and_at_the_deadline() {
        let mut b = body(vec![b"abc", b"def", b"gh"], 7, None);
        assert_eq!(b.next().await.unwrap().unwrap(), "abc");
        assert_eq!(b.next().await.unwrap().unwrap(), "def");
        assert!(matches!(b.next().await, Some(Err(PayloadError::Overflow))));
        assert!(b.next().await.is_none());

        let mut b = body(vec![b"abc"], 100, Some(Duration::from_millis(50)));
        assert_eq!(b.next().await.unwrap().unwrap(), "abc");
        match b.next().await {
            Some(Err(PayloadError::Io(e))) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
    }
}
