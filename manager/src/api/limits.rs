//! What a flood can take from the API (issue 16): caps on connections and
//! TLS handshakes, deadlines on request heads, handshakes and bodies, and a
//! size limit on every request body, so that idle, slow or oversized
//! clients cannot take a manager down or keep a legitimate client out.
//!
//! [`Limits`] is applied in two places: [`super::serve`] sets what the HTTP
//! server enforces per connection (actix-web's own timers: a request head
//! not complete within `request_head_timeout` of the connection's start is
//! answered 408 and closed; a TLS handshake has `tls_handshake_timeout`),
//! and [`bodies`] is the middleware that enforces the body limits for every
//! handler alike (JSON extractors and handlers reading the raw payload): a
//! `Content-Length` over [`BODY_LIMIT`] is refused with 413 before a byte is
//! read, a chunked body is cut off at the limit, and a body still arriving
//! `body_timeout` after its head is cut off too (408).
//!
//! Keep-alive is off: every connection carries one request. actix-web's head
//! deadline covers only a connection's first request, so a connection kept
//! alive could dribble its second request head forever; one request per
//! connection leaves no such gap (the clients, shoal's CLI, the docker CLI and
//! the SDKs, open a new connection when told `Connection: close`).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_LENGTH;
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
    /// Default 16,384: the server stops accepting (new connections wait in
    /// the kernel's backlog) at this many. High, so that a flood of idle
    /// connections, each closed after `request_head_timeout`, is taken in
    /// whole and a legitimate client behind it is not kept waiting in the
    /// backlog; an idle connection costs some 20 KiB.
    pub max_connections: usize,
    /// Default 16,384: connections in their TLS handshake at once (actix
    /// stops accepting at this many, like `max_connections`). A stalled
    /// handshake costs memory, not CPU (the one worker thread does the real
    /// ones one by one), so this is as high as `max_connections`.
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

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
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
    /// a file descriptor would refuse everyone alike); never below 64.
    pub fn fit_to(mut self, nofile: u64) -> Limits {
        let room = usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(FD_RESERVE).max(64);
        self.max_connections = self.max_connections.min(room);
        self.max_handshaking = self.max_handshaking.min(self.max_connections);
        self
    }
}

/// `shoal_api_requests_refused_total{reason}`.
fn refused_counter() -> CounterFamily {
    metrics().counter_family(
        "shoal_api_requests_refused",
        "API requests refused by a limit: body_too_large (over the body limit), body_timeout (the body did not \
         arrive in time)",
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
    let length = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared_too_large(length, BODY_LIMIT) {
        refused_counter().inc("body_too_large");
        tracing::debug!(method = %req.method(), path = req.path(), "api request refused: body too large");
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
    };
    req.set_payload(Payload::Stream { payload: Box::pin(capped) });
    let fut = srv.call(req);
    Box::pin(async move { Ok(fut.await?.map_into_left_body()) })
}

/// A request body cut off at `limit` bytes or at `deadline`.
struct Capped {
    inner: Payload,
    read: usize,
    limit: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// An error was returned: nothing more.
    done: bool,
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
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.done = true;
                    refused_counter().inc("body_timeout");
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

    #[test]
    fn the_caps_fit_the_open_file_limit() {
        let d = Limits::default();
        assert_eq!(Limits::default().fit_to(1 << 20), d, "room enough: unchanged");
        let l = Limits::default().fit_to(20_000);
        assert_eq!((l.max_connections, l.max_handshaking), (20_000 - FD_RESERVE, 20_000 - FD_RESERVE));
        let small = Limits::default().fit_to(1024);
        assert_eq!((small.max_connections, small.max_handshaking), (64, 64));
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
        }
    }

    #[tokio::test]
    async fn a_body_is_cut_off_at_the_limit_and_at_the_deadline() {
        use futures::StreamExt;
        let mut b = body(vec![b"abc", b"def", b"gh"], 7, None);
        assert_eq!(b.next().await.unwrap().unwrap(), "abc");
        assert_eq!(b.next().await.unwrap().unwrap(), "def");
        assert!(matches!(b.next().await, Some(Err(PayloadError::Overflow))));
        assert!(b.next().await.is_none());

        tokio::time::pause();
        let mut b = body(vec![b"abc"], 100, Some(Duration::from_secs(30)));
        assert_eq!(b.next().await.unwrap().unwrap(), "abc");
        match b.next().await {
            Some(Err(PayloadError::Io(e))) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
    }
}
