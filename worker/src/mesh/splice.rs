//! Zero-copy forwarding between two TCP sockets with `splice(2)`: bytes go
//! from one socket into a pipe and from the pipe into the other without
//! passing through userspace. Linux only; the proxy falls back to copying
//! elsewhere.
//!
//! Each direction owns a pipe. Pipes are kept in a [`PipePool`] between
//! connections (an empty pipe is as good as new), so a connection costs no
//! `pipe2` calls and no allocation once the pool is warm; a pipe that may
//! still hold bytes (its connection failed mid-transfer) is closed instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice` call: a pipe's default capacity.
const CHUNK: usize = 64 * 1024;

/// One pipe: (read end, write end).
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        Ok(Pipe { r, w })
    }
}

/// Empty pipes for the next connections, at most `max` of them.
pub struct PipePool {
    free: Mutex<Vec<Pipe>>,
    max: usize,
}

impl PipePool {
    pub fn new(max: usize) -> Self {
        PipePool { free: Mutex::new(Vec::new()), max }
    }

    fn take(&self) -> io::Result<Pipe> {
        match self.free.lock().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    fn give(&self, p: Pipe) {
        let mut free = self.free.lock();
        if free.len() < self.max {
            free.push(p);
        }
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Moves bytes from `from` to `to` until `from` ends (then `to`'s write
/// side is shut down) or either fails. `moved` is called with every chunk's
/// size (the idle clock). Returns the bytes moved.
pub async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pool: &PipePool,
    moved: &(dyn Fn(usize) + Sync),
) -> io::Result<u64> {
    let pipe = pool.take()?;
    let mut total = 0u64;
    let result = async {
        loop {
            // Socket -> pipe (the pipe is empty here).
            let n = loop {
                from.readable().await?;
                match from.try_io(Interest::READABLE, || {
                    splice(from.as_fd(), None, pipe.w.as_fd(), None, CHUNK, flags()).map_err(io::Error::from)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                // The peer is done sending: pass the half-close on.
                let _ =
                    nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(to), nix::sys::socket::Shutdown::Write);
                return Ok(());
            }
            moved(n);
            // Pipe -> socket, all of it.
            let mut left = n;
            while left > 0 {
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(pipe.r.as_fd(), None, to.as_fd(), None, left, flags()).map_err(io::Error::from)
                }) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "splice wrote nothing")),
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            total += n as u64;
        }
    }
    .await;
    // Only an emptied pipe goes back.
    if result.is_ok() {
        pool.give(pipe);
    }
    result.map(|()| total)
}

/// Both directions at once, until both have ended (or one failed).
pub async fn both_ways(
    a: &TcpStream,
    b: &TcpStream,
    pool: &PipePool,
    moved: &(dyn Fn(usize) + Sync),
) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b, pool, moved), one_way(b, a, pool, moved))
}
