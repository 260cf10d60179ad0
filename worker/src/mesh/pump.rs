//! Moves a TCP connection's bytes both ways between two sockets, as cheaply
//! per request and per byte as we could measure (`deploy/bench-mesh.sh`):
//!
//! - one task per connection polls both directions; a read is written out
//!   at once from a per-thread scratch buffer, so a connection holds no
//!   buffer of its own until a write blocks (then only the unwritten rest is
//!   kept, and nothing more is read that way until it is out: bounded);
//! - a short read means the socket's receive queue is empty (TCP's
//!   `recvmsg` stops only there), so readiness is dropped then and there
//!   rather than learnt from one more `read` that fails with `EAGAIN`;
//!   likewise a short write means the send buffer is full. The kernel
//!   signals new data and new room again (edge-triggered epoll), and a
//!   peer's FIN stays known to tokio (closed states are never cleared);
//! - with [`Splice::Bulk`] (the default on Linux), a direction whose read
//!   filled the whole scratch buffer is a bulk transfer: from then on it
//!   moves with `splice(2)` through a pipe of up to 1 MiB
//!   ([`super::splice`]), socket to socket without copying through
//!   userspace. Request/response traffic, whose reads are short, keeps
//!   plain reads and writes, which are cheaper for it than two splices.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// When to move bytes with splice(2) rather than read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Splice {
    /// Always read and write (the only choice off Linux).
    Never,
    /// A direction switches to splice(2) once one read fills the scratch
    /// buffer.
    Bulk,
    /// Every direction from the first byte.
    Always,
}

#[cfg(target_os = "linux")]
pub type Pipes = super::splice::PipePool;
#[cfg(target_os = "linux")]
type Pipe = super::splice::Pipe;

/// No splice(2) here: nothing to pool.
#[cfg(not(target_os = "linux"))]
pub struct Pipes;
#[cfg(not(target_os = "linux"))]
impl Pipes {
    pub fn new(_: usize, _: usize) -> Self {
        Pipes
    }
}
#[cfg(not(target_os = "linux"))]
struct Pipe;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One direction, `from` to `to`.
struct Half {
    /// Read but not yet written (only after a write blocked).
    pending: Vec<u8>,
    off: usize,
    /// Set once this direction splices.
    pipe: Option<Pipe>,
    in_pipe: usize,
    eof: bool,
    done: bool,
}

impl Half {
    fn new() -> Self {
        Half { pending: Vec::new(), off: 0, pipe: None, in_pipe: 0, eof: false, done: false }
    }
}

/// Forwards between `a` and `b` until both directions ended (each end's
/// FIN passed on as a half-close) or one failed. `chunk` is the most read
/// at once; `touch` is called whenever bytes arrive (the idle clock).
pub async fn both_ways(
    a: &TcpStream,
    b: &TcpStream,
    chunk: usize,
    splice: Splice,
    pipes: &Pipes,
    touch: &(dyn Fn() + Sync),
) -> io::Result<()> {
    let chunk = chunk.max(1024);
    let mut up = Half::new();
    let mut down = Half::new();
    if splice == Splice::Always {
        up.pipe = take_pipe(pipes);
        down.pipe = take_pipe(pipes);
    }
    let r = poll_fn(|cx| {
        let r1 = poll_half(&mut up, a, b, down.done, cx, chunk, splice, pipes, touch);
        if let Poll::Ready(Err(e)) = r1 {
            return Poll::Ready(Err(e));
        }
        let r2 = poll_half(&mut down, b, a, up.done, cx, chunk, splice, pipes, touch);
        match (r1, r2) {
            (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    for h in [up, down] {
        give_pipe(pipes, h);
    }
    r
}

#[cfg(target_os = "linux")]
fn take_pipe(pipes: &Pipes) -> Option<Pipe> {
    match pipes.take() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(error = %e, "mesh proxy: no pipe for splice; copying");
            None
        }
    }
}
#[cfg(not(target_os = "linux"))]
fn take_pipe(_: &Pipes) -> Option<Pipe> {
    None
}

#[cfg(target_os = "linux")]
fn give_pipe(pipes: &Pipes, h: Half) {
    if let (Some(p), 0) = (h.pipe, h.in_pipe) {
        pipes.give(p);
    }
}
#[cfg(not(target_os = "linux"))]
fn give_pipe(_: &Pipes, _: Half) {}

/// Runs `op` on `s` when it is ready for `interest`, until it does not
/// fail with `WouldBlock`. With `short_drains`, a result below `want`
/// clears the readiness as `WouldBlock` would (the socket is drained, or
/// full), sparing the call that would say so.
fn poll_op(
    s: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    want: usize,
    short_drains: bool,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        if interest == Interest::READABLE {
            ready!(s.poll_read_ready(cx))?;
        } else {
            ready!(s.poll_write_ready(cx))?;
        }
        let mut short = None;
        match s.try_io(interest, || {
            let n = op()?;
            if short_drains && n > 0 && n < want {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(n) = short {
                    return Poll::Ready(Ok(n));
                }
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// A write now if `s` is known writable; 0 if it would block.
fn write_now(s: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut short = None;
    match s.try_io(Interest::WRITABLE, || {
        let n = nix::unistd::write(s.as_fd(), buf).map_err(io::Error::from)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(short.unwrap_or(0)),
        Err(e) => Err(e),
    }
}

#[allow(clippy::too_many_arguments)]
fn poll_half(
    h: &mut Half,
    from: &TcpStream,
    to: &TcpStream,
    other_done: bool,
    cx: &mut Context<'_>,
    chunk: usize,
    splice: Splice,
    pipes: &Pipes,
    touch: &(dyn Fn() + Sync),
) -> Poll<io::Result<()>> {
    if h.done {
        return Poll::Ready(Ok(()));
    }
    loop {
        // What was read goes out first: the rest of a copy, then the pipe.
        if h.off < h.pending.len() {
            let rest = &h.pending[h.off..];
            let n = ready!(poll_op(to, cx, Interest::WRITABLE, rest.len(), true, || {
                nix::unistd::write(to.as_fd(), rest).map_err(io::Error::from)
            }))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            h.off += n;
            if h.off == h.pending.len() {
                h.pending.clear();
                h.off = 0;
                // A connection that blocked once may not again: give the
                // memory back unless it is small.
                if h.pending.capacity() > 16 * 1024 {
                    h.pending = Vec::new();
                }
            }
            continue;
        }
        #[cfg(target_os = "linux")]
        if h.in_pipe > 0 {
            let pipe = h.pipe.as_ref().expect("bytes in a pipe we have");
            let left = h.in_pipe;
            let n = ready!(poll_op(to, cx, Interest::WRITABLE, left, true, || super::splice::drain(pipe, to, left)))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            h.in_pipe -= n;
            continue;
        }
        if h.eof {
            // Pass the half-close on; unless the other way is done too: the
            // sockets are closed next, which sends the FIN anyway (`to` has
            // nothing unread: it was read to its end).
            if !other_done {
                let _ = nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write);
            }
            h.done = true;
            return Poll::Ready(Ok(()));
        }
        #[cfg(target_os = "linux")]
        if let Some(pipe) = &h.pipe {
            // A partial splice may stop at the pipe's slots, not at an
            // empty socket: only EAGAIN says the socket is drained.
            let cap = pipe.capacity;
            let n = ready!(poll_op(from, cx, Interest::READABLE, cap, false, || super::splice::fill(from, pipe, cap)))?;
            if n == 0 {
                h.eof = true;
            } else {
                touch();
                h.in_pipe = n;
            }
            continue;
        }
        // Read into the scratch buffer and write at once; only what the
        // other side cannot take yet is kept.
        let r = SCRATCH.with_borrow_mut(|buf| -> Poll<io::Result<bool>> {
            if buf.len() < chunk {
                buf.resize(chunk, 0);
            }
            let buf = &mut buf[..chunk];
            let n = ready!(poll_op(from, cx, Interest::READABLE, chunk, true, || {
                nix::unistd::read(from.as_fd(), buf).map_err(io::Error::from)
            }))?;
            if n == 0 {
                h.eof = true;
                return Poll::Ready(Ok(false));
            }
            touch();
            let w = write_now(to, &buf[..n])?;
            if w < n {
                h.pending.extend_from_slice(&buf[w..n]);
                h.off = 0;
            }
            Poll::Ready(Ok(n == chunk))
        });
        let full = ready!(r)?;
        if full && splice == Splice::Bulk && h.pipe.is_none() {
            h.pipe = take_pipe(pipes);
        }
    }
}
