//! The userspace data path: a TCP and UDP proxy in the node process. It
//! needs no privileges and works on any kernel.
//!
//! One listener per published (protocol, port), bound on the node's advertise
//! address (a wildcard bind would clash between nodes sharing a machine).
//! Each new TCP connection, and each new UDP flow (keyed by client address),
//! goes to the next backend of the port's list, round robin; the list is
//! swapped whole when the mesh changes, and connections already made keep
//! their backend. A backend that refuses is skipped for the next, a bounded
//! number of times. With no backend a TCP connection is reset at once
//! (SO_LINGER 0) and a datagram dropped. The proxy runs on a runtime of
//! its own ([`ProxyConfig::threads`]), apart from the node's actors.
//!
//! Bytes move with [`super::pump`]: one task per connection, plain reads
//! and writes through a per-thread 64 KiB scratch buffer for
//! request/response traffic (a connection holds memory only for what a
//! blocked write left over), and, by default on Linux ([`Splice::Bulk`]),
//! `splice(2)` through a pooled pipe of up to 1 MiB ([`super::splice`]) for
//! a direction once one read filled the buffer: a bulk transfer then never
//! passes through userspace. Splicing from the first byte
//! ([`Splice::Always`]) costs two splices per small message where a read
//! and a write do, and measured slower for requests; never splicing
//! ([`Splice::Never`]) costs a copy in and out per byte of a bulk transfer
//! (`deploy/bench-mesh.sh` measures all three, with the proxy's CPU time
//! per request). Accepted sockets inherit TCP_NODELAY from the listener,
//! and the listener's own address stands for each connection's local one:
//! a connection costs as few system calls as we found.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::mesh::Protocol;

use super::plan::PortKey;
use super::MeshError;

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// One connection attempt to a backend.
    pub connect_timeout: Duration,
    /// Backends tried for one connection before it is reset.
    pub connect_tries: usize,
    /// A TCP connection with no data either way for this long is closed.
    pub tcp_idle: Duration,
    /// A UDP flow with no datagram either way for this long is forgotten.
    pub udp_idle: Duration,
    /// The most read from a TCP socket at once (a per-thread scratch
    /// buffer: a connection holds only what a blocked write left over, at
    /// most this much per direction).
    pub buffer: usize,
    /// Open TCP connections per port; more are reset.
    pub max_connections: usize,
    /// UDP flows per port; datagrams of further new flows are dropped.
    pub max_udp_flows: usize,
    pub listen_backlog: u32,
    /// Threads of the proxy's own runtime, so that traffic neither waits for
    /// the node's actors nor holds them up; 0: the caller's runtime.
    pub threads: usize,
    /// When TCP bytes move with splice(2) through a pipe (Linux) rather
    /// than through our buffer: [`Splice::Bulk`] by default, for a
    /// direction once one read filled [`ProxyConfig::buffer`].
    pub splice: Splice,
    /// Bytes a splice pipe holds (`F_SETPIPE_SZ`; up to the kernel's
    /// `fs.pipe-max-size`, 1 MiB by default): what a bulk direction may
    /// have in flight inside the proxy, beside the sockets' own buffers
    /// (which TCP autotunes to several MiB anyway). Pages in a pipe are
    /// the sockets' own, referenced, not copied.
    pub pipe_size: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            connect_tries: 3,
            // As IPVS's defaults for Swarm's mesh: 15 min TCP; UDP as
            // conntrack's stream timeout.
            tcp_idle: Duration::from_secs(900),
            udp_idle: Duration::from_secs(120),
            buffer: 64 * 1024,
            max_connections: 16_384,
            max_udp_flows: 4_096,
            listen_backlog: 1_024,
            threads: 1,
            splice: if cfg!(target_os = "linux") { Splice::Bulk } else { Splice::Never },
            pipe_size: 1024 * 1024,
        }
    }
}

/// What the proxy did, since it was made. Read by the mesh actor for metrics.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub tcp_forwarded: AtomicU64,
    /// Reset at once: no backend.
    pub tcp_refused: AtomicU64,
    /// Reset after every backend tried refused, or over the connection limit.
    pub tcp_failed: AtomicU64,
    pub tcp_active: AtomicI64,
    pub udp_flows: AtomicI64,
    /// No backend, or over the flow limit.
    pub udp_dropped: AtomicU64,
}

/// One port's backend list and its round-robin position. Readers take a
/// snapshot (an `Arc`), so a change never tears a list in use.
#[derive(Debug, Default)]
pub struct Backends {
    list: RwLock<Arc<[SocketAddr]>>,
    next: AtomicUsize,
    /// Send a PROXY protocol v2 header first on each backend connection.
    proxy_protocol: AtomicBool,
}

impl Backends {
    pub fn new(list: Vec<SocketAddr>) -> Self {
        Backends { list: RwLock::new(list.into()), next: AtomicUsize::new(0), proxy_protocol: AtomicBool::new(false) }
    }

    pub fn set_proxy_protocol(&self, on: bool) {
        self.proxy_protocol.store(on, Ordering::Relaxed);
    }

    pub fn set(&self, list: Vec<SocketAddr>) {
        *self.list.write() = list.into();
    }

    pub fn snapshot(&self) -> Arc<[SocketAddr]> {
        self.list.read().clone()
    }

    /// The next backend of `list` in the rotation; `None` if it is empty.
    pub fn pick(&self, list: &[SocketAddr]) -> Option<SocketAddr> {
        if list.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(list[i % list.len()])
    }
}

struct Served {
    backends: Arc<Backends>,
    task: JoinHandle<()>,
    /// UDP only.
    flows: Option<Arc<Flows>>,
    local: SocketAddr,
}

/// The userspace data path of one node.
pub struct Proxy {
    addr: IpAddr,
    config: Arc<ProxyConfig>,
    stats: Arc<ProxyStats>,
    ports: HashMap<PortKey, Served>,
    /// Empty pipes for splice(2), shared by every port.
    pipes: Arc<Pipes>,
    /// Where listeners and connections run.
    handle: Handle,
    /// Ours, if `config.threads` asked for one; shut down with the proxy.
    runtime: Exec,
}

/// The runtime a proxy runs on.
enum Exec {
    Caller,
    /// One thread: a current-thread runtime on a thread of its own (no
    /// work-stealing to pay for), stopped through the sender.
    Thread(Option<tokio::sync::oneshot::Sender<()>>),
    Pool(Runtime),
}

impl Exec {
    fn start(threads: usize) -> io::Result<(Handle, Exec)> {
        if threads <= 1 {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new().name("shoal-mesh-proxy".into()).spawn(move || {
                let _ = rt.block_on(stopped);
                // Dropping the runtime here ends what still runs on it.
            })?;
            return Ok((handle, Exec::Thread(Some(stop))));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("shoal-mesh-proxy")
            .enable_all()
            .build()?;
        Ok((rt.handle().clone(), Exec::Pool(rt)))
    }
}

impl Proxy {
    /// Serves nothing yet; ports are bound on `addr` as they are opened.
    pub fn new(addr: IpAddr, config: ProxyConfig) -> Self {
        let (handle, runtime) = match (config.threads, Handle::try_current()) {
            (0, Ok(h)) => (h, Exec::Caller),
            (n, current) => match Exec::start(n) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh proxy: cannot start its own runtime; sharing the caller's");
                    match current {
                        Ok(h) => (h, Exec::Caller),
                        Err(_) => panic!("mesh proxy: no runtime to run on: {e}"),
                    }
                }
            },
        };
        let pipe_size = config.pipe_size;
        Proxy {
            addr,
            config: Arc::new(config),
            stats: Arc::new(ProxyStats::default()),
            ports: HashMap::new(),
            pipes: Arc::new(Pipes::new(1024, pipe_size)),
            handle,
            runtime,
        }
    }

    pub fn stats(&self) -> Arc<ProxyStats> {
        self.stats.clone()
    }

    /// Where `port` is served, if it is.
    pub fn local_addr(&self, port: PortKey) -> Option<SocketAddr> {
        self.ports.get(&port).map(|s| s.local)
    }

    /// Binds `port` on the node's address and starts serving it. A port
    /// held by anyone else is
    /// [`MeshError::PortInUse`]. Opening a served port retargets it.
    pub fn open(&mut self, port: PortKey, backends: Vec<SocketAddr>) -> Result<(), MeshError> {
        self.open_with(port, backends, false)
    }

    /// [`Proxy::open`], and whether each backend connection starts with a
    /// PROXY protocol v2 header (TCP only).
    pub fn open_with(
        &mut self,
        port: PortKey,
        backends: Vec<SocketAddr>,
        proxy_protocol: bool,
    ) -> Result<(), MeshError> {
        if self.ports.contains_key(&port) {
            self.retarget_with(port, backends, proxy_protocol);
            return Ok(());
        }
        let at = SocketAddr::new(self.addr, port.port);
        let in_use = |e: io::Error| {
            if e.kind() == io::ErrorKind::AddrInUse {
                MeshError::PortInUse { port, addr: at }
            } else {
                MeshError::Io(format!("cannot bind {at}/{}: {e}", port.protocol))
            }
        };
        let shared = Arc::new(Backends::new(backends));
        shared.set_proxy_protocol(proxy_protocol);
        // Sockets register with the reactor of the runtime they are made in.
        let _rt = self.handle.enter();
        let served = match port.protocol {
            Protocol::Tcp => {
                let listener = listen_tcp(at, self.config.listen_backlog).map_err(in_use)?;
                let local = listener.local_addr().map_err(in_use)?;
                let task = self.handle.spawn(serve_tcp(
                    listener,
                    shared.clone(),
                    self.config.clone(),
                    self.stats.clone(),
                    self.pipes.clone(),
                ));
                Served { backends: shared, task, flows: None, local }
            }
            Protocol::Udp => {
                let sock = std::net::UdpSocket::bind(at).map_err(in_use)?;
                sock.set_nonblocking(true).map_err(in_use)?;
                let sock = UdpSocket::from_std(sock).map_err(in_use)?;
                let local = sock.local_addr().map_err(in_use)?;
                let flows = Arc::new(Flows::default());
                let task = self.handle.spawn(serve_udp(
                    Arc::new(sock),
                    shared.clone(),
                    flows.clone(),
                    self.config.clone(),
                    self.stats.clone(),
                ));
                Served { backends: shared, task, flows: Some(flows), local }
            }
        };
        self.ports.insert(port, served);
        Ok(())
    }

    /// New connections and flows of `port` go to `backends` from now on.
    /// UDP flows to a backend that left are dropped (the next datagram of
    /// their client starts a new flow); TCP connections run to their end.
    pub fn retarget(&mut self, port: PortKey, backends: Vec<SocketAddr>) {
        self.retarget_with(port, backends, false)
    }

    /// [`Proxy::retarget`], and the PROXY protocol setting for new
    /// connections.
    pub fn retarget_with(&mut self, port: PortKey, backends: Vec<SocketAddr>, proxy_protocol: bool) {
        let Some(served) = self.ports.get(&port) else {
            return;
        };
        served.backends.set_proxy_protocol(proxy_protocol);
        if let Some(flows) = &served.flows {
            flows.retain(|f| backends.contains(&f.backend), &self.stats);
        }
        served.backends.set(backends);
    }

    /// Stops listening on `port`. Connections already made run to their end.
    pub fn close(&mut self, port: PortKey) {
        if let Some(served) = self.ports.remove(&port) {
            served.task.abort();
            if let Some(flows) = &served.flows {
                flows.retain(|_| false, &self.stats);
            }
        }
    }

    pub fn close_all(&mut self) {
        let ports: Vec<PortKey> = self.ports.keys().copied().collect();
        for p in ports {
            self.close(p);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.close_all();
        // Connections still open end here; never block (this may run on
        // an async thread).
        match std::mem::replace(&mut self.runtime, Exec::Caller) {
            Exec::Caller => {}
            Exec::Thread(stop) => {
                if let Some(stop) = stop {
                    let _ = stop.send(());
                }
            }
            Exec::Pool(rt) => rt.shutdown_background(),
        }
    }
}

fn listen_tcp(at: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let sock = match at {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // So a restarted node can bind again while old connections linger in
    // TIME_WAIT; a port someone listens on still fails with AddrInUse.
    sock.set_reuseaddr(true)?;
    // Accepted connections inherit it: one setsockopt fewer per connection.
    sock.set_nodelay(true)?;
    sock.bind(at)?;
    sock.listen(backlog)
}

/// Closes with a RST rather than a FIN: the client learns at once that
/// nobody will answer.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

use super::pump::Pipes;
pub use super::pump::Splice;

async fn serve_tcp(
    listener: TcpListener,
    backends: Arc<Backends>,
    config: Arc<ProxyConfig>,
    stats: Arc<ProxyStats>,
    pipes: Arc<Pipes>,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections));
    // Where every connection arrives, known without a getsockname each
    // (unless the listener is a wildcard one).
    let bound = listener.local_addr().ok().filter(|a| !a.ip().is_unspecified());
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, usually: give connections in
                // flight a moment to end rather than spin.
                tracing::warn!(error = %e, "mesh proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let list = backends.snapshot();
        if list.is_empty() {
            stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = config.max_connections, "mesh proxy: connection limit reached");
            stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        };
        let backends = backends.clone();
        let config = config.clone();
        let stats = stats.clone();
        let pipes = pipes.clone();
        tokio::spawn(async move {
            forward_tcp(client, peer, bound, &backends, list, &config, &stats, &pipes).await;
            drop(permit);
        });
    }
}

/// Connects to `backend` from the node's address `from` (the port chosen at
/// connect time, IP_BIND_ADDRESS_NO_PORT, so binds do not use up the port
/// range across backends): a backend sees the node that forwarded the
/// connection, as behind the kernel path's SNAT, and connections of several
/// nodes on one machine do not share one TIME_WAIT space.
async fn connect_from(from: Option<IpAddr>, backend: SocketAddr) -> io::Result<TcpStream> {
    let Some(from) = from.filter(|f| f.is_ipv4() == backend.is_ipv4()) else {
        return TcpStream::connect(backend).await;
    };
    let sock = match backend {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
        let _ = setsockopt(&sock, IpBindAddressNoPort, &true);
    }
    sock.bind(SocketAddr::new(from, 0))?;
    sock.connect(backend).await
}

async fn connect_next(
    backends: &Backends,
    list: &[SocketAddr],
    from: Option<IpAddr>,
    config: &ProxyConfig,
) -> Option<TcpStream> {
    let tries = config.connect_tries.clamp(1, list.len().max(1));
    for _ in 0..tries {
        let backend = backends.pick(list)?;
        match tokio::time::timeout(config.connect_timeout, connect_from(from, backend)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => tracing::debug!(%backend, error = %e, "mesh proxy: backend refused"),
            Err(_) => tracing::debug!(%backend, "mesh proxy: backend did not answer"),
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn forward_tcp(
    client: TcpStream,
    peer: SocketAddr,
    bound: Option<SocketAddr>,
    backends: &Backends,
    list: Arc<[SocketAddr]>,
    config: &ProxyConfig,
    stats: &ProxyStats,
    pipes: &Pipes,
) {
    let local = bound.or_else(|| client.local_addr().ok());
    let from = local.map(|a| a.ip());
    let Some(mut upstream) = connect_next(backends, &list, from, config).await else {
        stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return;
    };
    if let (true, Some(local)) = (backends.proxy_protocol.load(Ordering::Relaxed), local) {
        use tokio::io::AsyncWriteExt;
        // Before any of the client's bytes: one write, so the backend reads
        // the whole header at once (HAProxy's spec asks senders for that).
        if let Err(e) = upstream.write_all(&proxy_v2_header(peer, local)).await {
            tracing::debug!(error = %e, "mesh proxy: PROXY header not sent");
            stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
    }
    stats.tcp_forwarded.fetch_add(1, Ordering::Relaxed);
    stats.tcp_active.fetch_add(1, Ordering::Relaxed);
    // The client's is the listener's, inherited.
    let _ = upstream.set_nodelay(true);
    let clock = Clock::new();
    let touch = || clock.touch();
    tokio::select! {
        r = super::pump::both_ways(&client, &upstream, config.buffer, config.splice, pipes, &touch) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "mesh proxy: connection ended");
            }
        }
        _ = clock.idle_for(config.tcp_idle) => {
            tracing::debug!("mesh proxy: idle connection closed");
        }
    }
    stats.tcp_active.fetch_sub(1, Ordering::Relaxed);
}

/// The PROXY protocol v2 header (HAProxy's proxy-protocol.txt, section
/// 2.2) for a TCP connection from `client` to `server` (the published
/// address it reached). Both of one family: an IPv4 address beside an IPv6
/// one is written IPv4-mapped.
pub fn proxy_v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
    // Version 2, command PROXY.
    const PROXY: u8 = 0x21;
    let mut h = Vec::with_capacity(16 + 36);
    h.extend_from_slice(&SIGNATURE);
    h.push(PROXY);
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            // AF_INET, STREAM; 4 + 4 + 2 + 2 address bytes.
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.octets());
            h.extend_from_slice(&s.octets());
        }
        (c, s) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            // AF_INET6, STREAM; 16 + 16 + 2 + 2.
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(c).octets());
            h.extend_from_slice(&v6(s).octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&server.port().to_be_bytes());
    h
}

/// The last time data moved, in milliseconds from its creation.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Clock { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing touched the clock for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let due = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// One UDP client's flow: its own socket, connected to the backend it was
/// given, and the task carrying answers back.
struct Flow {
    backend: SocketAddr,
    upstream: Arc<UdpSocket>,
    clock: Arc<Clock>,
    task: JoinHandle<()>,
    id: u64,
}

#[derive(Default)]
struct Flows {
    by_client: Mutex<HashMap<SocketAddr, Flow>>,
    next_id: AtomicU64,
}

impl Flows {
    fn retain(&self, keep: impl Fn(&Flow) -> bool, stats: &ProxyStats) {
        self.by_client.lock().retain(|_, f| {
            let k = keep(f);
            if !k {
                f.task.abort();
                stats.udp_flows.fetch_sub(1, Ordering::Relaxed);
            }
            k
        });
    }

    /// Forgets the flow `id` of `client` (not a newer one of the same client).
    fn end(&self, client: SocketAddr, id: u64, stats: &ProxyStats) {
        let mut map = self.by_client.lock();
        if map.get(&client).is_some_and(|f| f.id == id) {
            map.remove(&client);
            stats.udp_flows.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

const MAX_DATAGRAM: usize = 65_535;

async fn serve_udp(
    sock: Arc<UdpSocket>,
    backends: Arc<Backends>,
    flows: Arc<Flows>,
    config: Arc<ProxyConfig>,
    stats: Arc<ProxyStats>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let local_ip = sock.local_addr().map(|a| a.ip()).ok();
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors for earlier answers surface here on some
                // kernels; nothing to do but go on.
                tracing::debug!(error = %e, "mesh proxy: udp receive failed");
                continue;
            }
        };
        let existing = flows.by_client.lock().get(&client).map(|f| (f.upstream.clone(), f.clock.clone()));
        let (upstream, clock) = match existing {
            Some(x) => x,
            None => match new_flow(&sock, client, local_ip, &backends, &flows, &config, &stats).await {
                Some(x) => x,
                None => {
                    stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        clock.touch();
        if let Err(e) = upstream.send(&buf[..n]).await {
            tracing::debug!(%client, error = %e, "mesh proxy: udp send to backend failed");
        }
    }
}

async fn new_flow(
    sock: &Arc<UdpSocket>,
    client: SocketAddr,
    local_ip: Option<IpAddr>,
    backends: &Backends,
    flows: &Arc<Flows>,
    config: &Arc<ProxyConfig>,
    stats: &Arc<ProxyStats>,
) -> Option<(Arc<UdpSocket>, Arc<Clock>)> {
    let list = backends.snapshot();
    if flows.by_client.lock().len() >= config.max_udp_flows {
        tracing::debug!(%client, "mesh proxy: udp flow limit reached");
        return None;
    }
    let backend = backends.pick(&list)?;
    // From the node's own address, so the backend's node sees who asks.
    let bind_ip = local_ip.unwrap_or(match backend {
        SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    });
    let upstream = match UdpSocket::bind((bind_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "mesh proxy: cannot open a udp flow socket");
            return None;
        }
    };
    if let Err(e) = upstream.connect(backend).await {
        tracing::debug!(%backend, error = %e, "mesh proxy: udp connect failed");
        return None;
    }
    let upstream = Arc::new(upstream);
    let clock = Arc::new(Clock::new());
    let id = flows.next_id.fetch_add(1, Ordering::Relaxed);
    let task = tokio::spawn(answer_flow(
        sock.clone(),
        upstream.clone(),
        clock.clone(),
        client,
        id,
        flows.clone(),
        config.udp_idle,
        stats.clone(),
    ));
    flows.by_client.lock().insert(client, Flow { backend, upstream: upstream.clone(), clock: clock.clone(), task, id });
    stats.udp_flows.fetch_add(1, Ordering::Relaxed);
    Some((upstream, clock))
}

/// Carries a backend's answers to the client until the flow idles out or
/// the backend refuses (an ICMP port unreachable: the client's next datagram
/// then starts a flow to the next backend).
#[allow(clippy::too_many_arguments)]
async fn answer_flow(
    sock: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    clock: Arc<Clock>,
    client: SocketAddr,
    id: u64,
    flows: Arc<Flows>,
    idle: Duration,
    stats: Arc<ProxyStats>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            r = upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    clock.touch();
                    let _ = sock.send_to(&buf[..n], client).await;
                }
                Err(e) => {
                    tracing::debug!(%client, error = %e, "mesh proxy: udp backend refused");
                    break;
                }
            },
            _ = clock.idle_for(idle) => break,
        }
    }
    flows.end(client, id, &stats);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_survives_a_list_swap() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let bk = Backends::new(vec![a, b, c]);
        let l = bk.snapshot();
        let got: Vec<_> = (0..4).map(|_| bk.pick(&l).unwrap()).collect();
        assert_eq!(got, vec![a, b, c, a]);
        bk.set(vec![]);
        assert_eq!(bk.pick(&bk.snapshot()), None);
        // A list taken before the swap is still whole.
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn the_proxy_v2_header_is_byte_exact() {
        let sig = b"\r\n\r\n\0\r\nQUIT\n";
        let h = proxy_v2_header("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:8080".parse().unwrap());
        let mut want = sig.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(h, want);
        // Mixed families: both written as IPv6, the IPv4 one mapped.
        let h = proxy_v2_header("[2001:db8::1]:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&h[16..32], &"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&h[32..48], &"::ffff:10.0.0.2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&h[48..], &[0, 1, 0, 2]);
    }
}
