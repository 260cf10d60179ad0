//! The userspace mesh data path with real sockets: TCP and UDP backends on
//! loopback addresses, the proxy on a node address of its own.

mod mesh_common;

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use common::ids::NodeId;
use common::mesh::{MeshTable, Protocol};
use mesh_common::*;
use worker::mesh::plan::PortKey;
use worker::mesh::proxy::{Proxy, ProxyConfig, Splice};
use worker::mesh::{DataPath, GetStatus, MeshConfig, MeshError, MeshProgrammer, SetTable, Shutdown};

const PORT: u16 = 18080;

#[tokio::test]
async fn tcp_round_robin_retarget_and_refusal() {
    let node = ip(0, 1);
    let a = tcp_backend("a", ip(0, 2)).await;
    let b = tcp_backend("b", ip(0, 3)).await;
    let c = tcp_backend("c", ip(0, 4)).await;
    let mut proxy = Proxy::new(node, ProxyConfig::default());
    let port = PortKey::tcp(PORT);
    proxy.open(port, vec![a.addr, b.addr, c.addr]).expect("open");
    let at = SocketAddr::new(node, PORT);
    assert_eq!(proxy.local_addr(port), Some(at));

    // Round robin across the three, in order.
    let got = names(at, 6).await;
    assert_eq!(got, vec!["a", "b", "c", "a", "b", "c"]);

    // Data goes both ways.
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let s = TcpStream::connect(at).await.expect("connect");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.expect("hello");
        let payload = vec![b'x'; 256 * 1024];
        r.get_mut().write_all(&payload).await.expect("write");
        let mut back = vec![0u8; payload.len()];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut back).await.expect("echo");
        assert_eq!(back, payload);
    }

    // A new backend set takes effect for the next connection.
    proxy.retarget(port, vec![c.addr]);
    assert_eq!(names(at, 3).await, vec!["c", "c", "c"]);

    // A backend that refuses is skipped for the next.
    let dead = {
        let l = std::net::TcpListener::bind((ip(0, 5), 0)).expect("bind");
        l.local_addr().expect("addr")
    };
    proxy.retarget(port, vec![dead, b.addr]);
    assert_eq!(names(at, 4).await, vec!["b", "b", "b", "b"]);

    // No backend: reset at once, not left hanging.
    proxy.retarget(port, vec![]);
    let started = Instant::now();
    let err = which(at).await.expect_err("refused");
    assert!(matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    let stats = proxy.stats();
    assert_eq!(stats.tcp_refused.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Closing frees the port.
    proxy.close(port);
    eventually("the port to be free", || async { std::net::TcpListener::bind(at).ok().map(drop) }).await;
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let node = ip(1, 1);
    let held = std::net::TcpListener::bind((node, PORT)).expect("bind");
    let mut proxy = Proxy::new(node, ProxyConfig::default());
    let err = proxy.open(PortKey::tcp(PORT), vec![]).expect_err("in use");
    assert_eq!(
        err.to_string(),
        format!("published port {PORT}/tcp cannot be served on this node: {node}:{PORT} is already in use")
    );
    assert!(matches!(err, MeshError::PortInUse { .. }));
    drop(held);
    let udp = std::net::UdpSocket::bind((node, PORT)).expect("bind");
    let err = proxy.open(PortKey::udp(PORT), vec![]).expect_err("in use");
    assert!(err.to_string().contains(&format!("{PORT}/udp")), "{err}");
    drop(udp);
    // Another node on the same machine serves the same port on its address.
    let mut other = Proxy::new(ip(1, 2), ProxyConfig::default());
    proxy.open(PortKey::tcp(PORT), vec![]).expect("free now");
    other.open(PortKey::tcp(PORT), vec![]).expect("other address");
}

#[tokio::test]
async fn udp_flows_spread_and_stick() {
    let node = ip(2, 1);
    let a = udp_backend("a", ip(2, 2)).await;
    let b = udp_backend("b", ip(2, 3)).await;
    let c = udp_backend("c", ip(2, 4)).await;
    let mut proxy = Proxy::new(node, ProxyConfig::default());
    let port = PortKey::udp(PORT);
    proxy.open(port, vec![a.addr, b.addr, c.addr]).expect("open");
    let at = SocketAddr::new(node, PORT);

    // Each new client is a new flow: round robin.
    let mut clients = Vec::new();
    let mut got = Vec::new();
    for _ in 0..6 {
        let s = UdpSocket::bind((ip(2, 9), 0)).await.expect("client");
        got.push(udp_which(&s, at).await.expect("answer"));
        clients.push(s);
    }
    assert_eq!(got, vec!["a", "b", "c", "a", "b", "c"]);
    // A flow stays on its backend.
    for (s, want) in clients.iter().zip(&got) {
        assert_eq!(&udp_which(s, at).await.expect("answer"), want);
    }

    // Retarget: flows to a backend that left start over on the new list.
    proxy.retarget(port, vec![c.addr]);
    for s in &clients {
        assert_eq!(udp_which(s, at).await.expect("answer"), "c");
    }

    // No backend: dropped (no answer), counted.
    proxy.retarget(port, vec![]);
    let s = UdpSocket::bind((ip(2, 9), 0)).await.expect("client");
    assert!(udp_which(&s, at).await.is_err());
    assert!(proxy.stats().udp_dropped.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn udp_flows_idle_out() {
    let node = ip(3, 1);
    let a = udp_backend("a", ip(3, 2)).await;
    let b = udp_backend("b", ip(3, 3)).await;
    let config = ProxyConfig { udp_idle: Duration::from_millis(200), ..Default::default() };
    let mut proxy = Proxy::new(node, config);
    proxy.open(PortKey::udp(PORT), vec![a.addr, b.addr]).expect("open");
    let at = SocketAddr::new(node, PORT);
    let s = UdpSocket::bind((ip(3, 9), 0)).await.expect("client");
    assert_eq!(udp_which(&s, at).await.expect("answer"), "a");
    let stats = proxy.stats();
    assert_eq!(stats.udp_flows.load(std::sync::atomic::Ordering::Relaxed), 1);
    eventually("the flow to idle out", || async {
        (stats.udp_flows.load(std::sync::atomic::Ordering::Relaxed) == 0).then_some(())
    })
    .await;
    // The same client now starts a new flow: the next backend.
    assert_eq!(udp_which(&s, at).await.expect("answer"), "b");
}

#[actix::test]
async fn the_programmer_serves_the_table_and_reports_taken_ports() {
    let node = ip(4, 1);
    let a = tcp_backend("a", ip(4, 2)).await;
    let b = tcp_backend("b", ip(4, 3)).await;
    let taken = std::net::TcpListener::bind((node, PORT + 1)).expect("bind");
    let mut config = MeshConfig::new(NodeId::random(), node, DataPath::Userspace);
    config.retry_every = Duration::from_millis(100);
    let (programmer, mut status) = MeshProgrammer::new(config);
    let addr = programmer.start();
    addr.send(SetTable(MeshTable {
        entries: vec![entry(Protocol::Tcp, PORT, &[a.addr, b.addr]), entry(Protocol::Tcp, PORT + 1, &[a.addr])],
        ..Default::default()
    }))
    .await
    .expect("mailbox");
    let at = SocketAddr::new(node, PORT);
    assert_round_robin(&names(at, 4).await, &["a", "b"]);

    let st = addr.send(GetStatus).await.expect("status");
    assert_eq!(st.programmed, 1);
    assert_eq!(st.failures.len(), 1);
    assert_eq!(
        st.failures[0].error.to_string(),
        format!("published port {}/tcp cannot be served on this node: {node}:{} is already in use", PORT + 1, PORT + 1)
    );
    assert_eq!(st.failures[0].service, "web");

    // The port frees up: the retry takes it.
    drop(taken);
    let fixed = tokio::time::timeout(DEADLINE, status.wait_for(|s| s.failures.is_empty()))
        .await
        .expect("retry in time")
        .expect("status")
        .clone();
    assert_eq!(fixed.programmed, 2);
    assert_eq!(which(SocketAddr::new(node, PORT + 1)).await.expect("served"), "a");

    // Unpublished: closed.
    addr.send(SetTable(MeshTable { entries: vec![entry(Protocol::Tcp, PORT + 1, &[b.addr])], ..Default::default() }))
        .await
        .expect("mailbox");
    eventually("8080 to close", || async { TcpStream::connect(at).await.is_err().then_some(()) }).await;
    assert_eq!(which(SocketAddr::new(node, PORT + 1)).await.expect("served"), "b");

    addr.send(Shutdown).await.expect("mailbox").expect("shutdown");
    eventually("every port to close", || async {
        TcpStream::connect(SocketAddr::new(node, PORT + 1)).await.is_err().then_some(())
    })
    .await;
    eventually("the actor to stop", || async { (!addr.connected()).then_some(()) }).await;
}

/// nginx, from Debian, on `at` with a config of this test's own: a server
/// that reads the PROXY protocol (`listen … proxy_protocol`) and answers
/// with the client address the header named. Stopped on drop.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `None` (after a loud notice) where nginx is not installed, outside CI.
fn nginx(at: SocketAddr) -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the PROXY protocol test needs nginx under CI (deploy/install-deps.sh installs it)");
        }
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx)");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("shoal-mesh-nginx-{}-{}", std::process::id(), at.port()));
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen {at} proxy_protocol;
    location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port $remote_addr\\n\"; }}
  }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("config");
    let child = std::process::Command::new(bin)
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nginx");
    Some(Nginx { child, dir })
}

/// One HTTP/1.0 GET from `from` (a port of the kernel's choice) to `at`:
/// the response body.
async fn get_from(from: std::net::IpAddr, at: SocketAddr) -> std::io::Result<(SocketAddr, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let mut s = sock.connect(at).await?;
    let me = s.local_addr()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or(out);
    Ok((me, body))
}

#[tokio::test]
async fn proxy_protocol_v2_tells_the_backend_who_called() {
    let (node, backend, client) = (ip(5, 1), ip(5, 2), ip(5, 3));
    let port = {
        let l = std::net::TcpListener::bind((backend, 0)).expect("bind");
        l.local_addr().expect("addr").port()
    };
    let at_backend = SocketAddr::new(backend, port);
    let Some(_nginx) = nginx(at_backend) else {
        return;
    };
    let mut proxy = Proxy::new(node, ProxyConfig::default());
    let published = PortKey::tcp(PORT + 5);
    proxy.open_with(published, vec![at_backend], true).expect("open");
    let at = SocketAddr::new(node, published.port);
    // nginx takes a moment to listen; the proxy resets while it cannot
    // connect.
    let (me, body) = eventually("nginx to answer through the mesh", || async { get_from(client, at).await.ok() }).await;
    // nginx parsed the header: the client's own address and port; the
    // connection itself came from the node's address.
    assert_eq!(body, format!("{} {} {}", me.ip(), me.port(), node), "nginx saw: {body}");

    // Without the option the header is not sent, and nginx, which insists
    // on one, refuses the request.
    proxy.retarget_with(published, vec![at_backend], false);
    let plain = get_from(client, at).await;
    assert!(
        !matches!(&plain, Ok((_, b)) if b.starts_with(&me.ip().to_string())),
        "no header, yet nginx named the client: {plain:?}"
    );
}

/// Bulk bytes both ways through the proxy (splice(2) on Linux) arrive
/// whole and in order, and a client's half-close reaches the backend: the
/// echo ends, and the client reads to the end.
#[tokio::test]
async fn bulk_transfer_and_half_close_pass_through() {
    let node = ip(6, 1);
    let a = tcp_backend("a", ip(6, 2)).await;
    // Copying, splice(2) for bulk (the default) and splice(2) throughout.
    for (i, splice) in [Splice::Never, Splice::Bulk, Splice::Always].into_iter().enumerate() {
        let proxy = Proxy::new(node, ProxyConfig { splice, ..ProxyConfig::default() });
        bulk_through(proxy, PortKey::tcp(PORT + 6 + i as u16), &a).await;
    }
}

async fn bulk_through(mut proxy: Proxy, port: PortKey, a: &TcpBackend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = ip(6, 1);
    proxy.open(port, vec![a.addr]).expect("open");
    let at = SocketAddr::new(node, port.port);
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let s = TcpStream::connect(at).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.expect("write");
        w.shutdown().await.expect("half-close");
        w
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .expect("the echo to end")
        .expect("read");
    let _w = writer.await.expect("writer");
    assert_eq!(&back[..2], b"a\n");
    assert_eq!(back.len() - 2, payload.len());
    assert!(back[2..] == payload[..], "the bytes came back changed");
}
