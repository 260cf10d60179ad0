//! Pipes for `splice(2)` (Linux): bytes go from one socket into a pipe and
//! from the pipe into the other without passing through userspace. The
//! forwarding itself is [`super::pump`]'s.
//!
//! Pipes are kept in a [`PipePool`] between connections (an empty pipe is
//! as good as new), so a connection costs no `pipe2` calls and no
//! allocation once the pool is warm; a pipe that may still hold bytes (its
//! connection failed mid-transfer) is closed instead. A pipe is grown to
//! the pool's size with `F_SETPIPE_SZ` (1 MiB by default, the kernel's
//! `fs.pipe-max-size`): one `splice` then moves whatever the socket has
//! buffered, not 64 KiB at a time. The memory is only the pages in flight:
//! an empty pipe holds none.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use parking_lot::Mutex;

/// One pipe: (read end, write end), and how many bytes it holds at most.
pub struct Pipe {
    pub(super) r: OwnedFd,
    pub(super) w: OwnedFd,
    pub(super) capacity: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        // Refused over the user's pipe quota, or above fs.pipe-max-size for
        // an unprivileged process: the pipe keeps its default size then.
        if size > 0 {
            let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size.min(i32::MAX as usize) as i32));
        }
        let capacity = fcntl(&w, FcntlArg::F_GETPIPE_SZ).map(|c| c.max(4096) as usize).unwrap_or(64 * 1024);
        Ok(Pipe { r, w, capacity })
    }
}

/// Empty pipes for the next connections, at most `max` of them, each of
/// `size` bytes.
pub struct PipePool {
    free: Mutex<Vec<Pipe>>,
    max: usize,
    size: usize,
}

impl PipePool {
    pub fn new(max: usize, size: usize) -> Self {
        PipePool { free: Mutex::new(Vec::new()), max, size }
    }

    pub fn take(&self) -> io::Result<Pipe> {
        match self.free.lock().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(self.size),
        }
    }

    /// Only an empty pipe may come back.
    pub fn give(&self, p: Pipe) {
        let mut free = self.free.lock();
        if free.len() < self.max {
            free.push(p);
        }
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Socket (or any fd) into the pipe: at most `len` bytes.
pub fn fill(from: impl AsFd, pipe: &Pipe, len: usize) -> io::Result<usize> {
    splice(from.as_fd(), None, pipe.w.as_fd(), None, len, flags()).map_err(io::Error::from)
}

/// The pipe into a socket: at most `len` bytes.
pub fn drain(pipe: &Pipe, to: impl AsFd, len: usize) -> io::Result<usize> {
    splice(pipe.r.as_fd(), None, to.as_fd(), None, len, flags()).map_err(io::Error::from)
}
