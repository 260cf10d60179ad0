//! Backends and clients shared by the mesh tests: TCP and UDP servers on
//! loopback addresses that answer with their own name, so a test sees which
//! backend a connection reached.

#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::ids::ServiceId;
use common::mesh::{MeshEntry, Protocol};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// `127.0.<subnet>.<host>`, with a subnet picked per process so that runs
/// in parallel (and left-over state) do not meet.
pub fn ip(test: u8, host: u8) -> IpAddr {
    let subnet = 20 + (std::process::id() % 100) as u8 + test;
    IpAddr::from([127, 0, subnet, host])
}

/// A TCP server that writes `name\n` on every connection, then echoes.
pub struct TcpBackend {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn tcp_backend(name: &str, ip: IpAddr) -> TcpBackend {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let hello = format!("{name}\n");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let hello = hello.clone();
            tokio::spawn(async move {
                if s.write_all(hello.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    TcpBackend { name: name.to_string(), addr, task }
}

/// A UDP server that answers every datagram with `name`.
pub struct UdpBackend {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn udp_backend(name: &str, ip: IpAddr) -> UdpBackend {
    let sock = UdpSocket::bind((ip, 0)).await.expect("bind udp backend");
    let addr = sock.local_addr().expect("addr");
    let n = name.to_string();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((_, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let _ = sock.send_to(n.as_bytes(), from).await;
        }
    });
    UdpBackend { name: name.to_string(), addr, task }
}

/// Connects and reads the backend's name.
pub async fn which(at: SocketAddr) -> io::Result<String> {
    let s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(at))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut line = String::new();
    let mut r = BufReader::new(s);
    tokio::time::timeout(Duration::from_secs(3), r.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))??;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(line.trim().to_string())
}

/// One datagram from a fresh client socket (a new flow); the answer.
pub async fn udp_which(from: &UdpSocket, at: SocketAddr) -> io::Result<String> {
    from.send_to(b"ping", at).await?;
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), from.recv_from(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

/// Polls `f` until it returns `Some`, or panics at the deadline with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` connections in a row; the names of the backends they reached.
pub async fn names(at: SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(which(at).await.unwrap_or_else(|e| panic!("connect {at}: {e}")));
    }
    out
}

/// `got` goes round `backends` in order, from wherever it starts.
pub fn assert_round_robin(got: &[String], backends: &[&str]) {
    let start =
        backends.iter().position(|b| *b == got[0]).unwrap_or_else(|| panic!("{} is not a backend: {got:?}", got[0]));
    let want: Vec<String> = (0..got.len()).map(|i| backends[(start + i) % backends.len()].to_string()).collect();
    assert_eq!(got, want, "round robin over {backends:?}");
}

/// A mesh entry of service `web` publishing `published` to `backends`.
pub fn entry(protocol: Protocol, published: u16, backends: &[SocketAddr]) -> MeshEntry {
    MeshEntry {
        service_id: ServiceId::from("svc"),
        service_name: "web".into(),
        protocol,
        published,
        backends: backends.to_vec(),
        direct: Default::default(),
        preserve_source: false,
        proxy_protocol: None,
    }
}
