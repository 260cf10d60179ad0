//! The in-kernel mesh data path against real nftables: needs root (or
//! CAP_NET_ADMIN) and the nft command. Without them the test is skipped on a
//! developer's machine, and fails under CI (CI=true), where the kernel path
//! must be exercised.
//!
//! Every connection here is made from this machine to a node's advertise
//! address on loopback: the output-hook DNAT is what carries it.

mod mesh_common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use common::ids::NodeId;
use common::mesh::{MeshEntry, MeshTable, Protocol};
use mesh_common::*;
use worker::mesh::nft::{self, NftTable};
use worker::mesh::plan::{self, PortKey};
use worker::mesh::{DataPath, GetStatus, MeshConfig, MeshError, MeshProgrammer, SetTable, Shutdown};

const PORT: u16 = 18090;

/// `Ok` if nft can program tables here; otherwise why not.
fn nft_usable() -> Result<(), String> {
    let out = Command::new("nft").args(["list", "tables"]).output().map_err(|e| format!("cannot run nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft list tables failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// True if the test should go on; panics under CI when it cannot.
fn require_nft() -> bool {
    match nft_usable() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the kernel mesh test must run under CI, but nft is unusable: {why}")
        }
        Err(why) => {
            eprintln!("skipping: nft is unusable here ({why}); run as root with nftables installed");
            false
        }
    }
}

fn table_exists(t: &NftTable) -> bool {
    Command::new("nft")
        .args(["list", "table", t.family(), t.name()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Deletes the table when dropped, pass or fail.
struct DropTable(NftTable);

impl Drop for DropTable {
    fn drop(&mut self) {
        let _ = nft::run_blocking(&self.0.teardown());
    }
}

async fn set(addr: &Addr<MeshProgrammer>, entries: Vec<MeshEntry>) {
    addr.send(SetTable(MeshTable { entries, ..Default::default() })).await.expect("mailbox");
}

/// The programmer's view once its last change is applied (nft runs are
/// serialised behind `ctx.wait`, so a status request answers after them).
async fn status(addr: &Addr<MeshProgrammer>) -> worker::mesh::MeshStatus {
    addr.send(GetStatus).await.expect("mailbox")
}

#[actix::test]
async fn kernel_round_robin_from_this_machine_and_a_clean_teardown() {
    if !require_nft() {
        return;
    }
    let node_ip = ip(10, 1);
    let node_id = NodeId::random();
    let table = NftTable::for_node(&node_id, node_ip);
    let _cleanup = DropTable(table.clone());
    assert_eq!(table.name(), format!("shoal_{}", node_id.short()));

    let a = tcp_backend("a", ip(10, 2)).await;
    let b = tcp_backend("b", ip(10, 3)).await;
    let c = tcp_backend("c", ip(10, 4)).await;
    let ua = udp_backend("ua", ip(10, 2)).await;
    let ub = udp_backend("ub", ip(10, 3)).await;

    // A table some killed node left on this very address must not survive.
    let stale = NftTable::for_node(&NodeId::random(), node_ip);
    let _stale_cleanup = DropTable(stale.clone());
    let stale_mesh = plan::desired(
        &MeshTable {
            entries: vec![entry(Protocol::Tcp, PORT, &[SocketAddr::new(ip(10, 9), 1)])],
            ..Default::default()
        },
        node_ip,
    );
    nft::run(&stale.rebuild(&stale_mesh)).await.expect("stale table");
    assert!(table_exists(&stale));

    let mut config = MeshConfig::new(node_id.clone(), node_ip, DataPath::Kernel);
    config.retry_every = Duration::from_millis(200);
    let (programmer, _status) = MeshProgrammer::new(config);
    let addr = programmer.start();
    set(
        &addr,
        vec![
            entry(Protocol::Tcp, PORT, &[a.addr, b.addr, c.addr]),
            entry(Protocol::Udp, PORT, &[ua.addr, ub.addr]),
            entry(Protocol::Tcp, PORT + 1, &[]),
            entry(Protocol::Udp, PORT + 1, &[]),
        ],
    )
    .await;
    let st = status(&addr).await;
    assert_eq!(st.error, None);
    assert_eq!(st.programmed, 4);
    assert!(table_exists(&table), "table {} missing", table.qualified());
    assert!(!table_exists(&stale), "stale table {} still there", stale.qualified());

    // Connections from this machine to the node's address: round robin.
    let at = SocketAddr::new(node_ip, PORT);
    assert_round_robin(&names(at, 6).await, &["a", "b", "c"]);

    // UDP: each new flow to the next backend.
    let mut got = Vec::new();
    for _ in 0..4 {
        let s = UdpSocket::bind((ip(10, 9), 0)).await.expect("client");
        got.push(udp_which(&s, at).await.expect("udp answer"));
    }
    assert_round_robin(&got, &["ua", "ub"]);

    // No running task: refused at once.
    let started = Instant::now();
    let err = TcpStream::connect(SocketAddr::new(node_ip, PORT + 1)).await.expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // UDP too: an ICMP port unreachable, which a connected socket reports.
    let s = UdpSocket::bind((ip(10, 9), 0)).await.expect("client");
    s.connect(SocketAddr::new(node_ip, PORT + 1)).await.expect("connect");
    s.send(b"ping").await.expect("send");
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf))
        .await
        .expect("an answer at once")
        .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // A backend leaves, another joins: applied as a change.
    set(
        &addr,
        vec![
            entry(Protocol::Tcp, PORT, &[c.addr]),
            entry(Protocol::Udp, PORT, &[ua.addr, ub.addr]),
            entry(Protocol::Tcp, PORT + 1, &[a.addr]),
        ],
    )
    .await;
    assert_eq!(status(&addr).await.error, None);
    assert_eq!(names(at, 3).await, vec!["c", "c", "c"]);
    assert_eq!(names(SocketAddr::new(node_ip, PORT + 1), 2).await, vec!["a", "a"]);

    // The last task goes: refused again.
    set(&addr, vec![entry(Protocol::Tcp, PORT, &[])]).await;
    assert_eq!(status(&addr).await.error, None);
    let err = TcpStream::connect(at).await.expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Unpublished ports are free again.
    port_released(SocketAddr::new(node_ip, PORT + 1)).await;

    // Shutdown leaves no table and frees the port.
    addr.send(Shutdown).await.expect("mailbox").expect("teardown");
    assert!(!table_exists(&table), "table {} left behind", table.qualified());
    port_released(at).await;
}

/// The port can be bound again. Not at once: the process's other threads
/// spawn nft all the while, and a child between fork and exec still holds
/// a copy of every socket, the closed hold included, for a moment.
async fn port_released(at: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match std::net::TcpListener::bind(at) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("port {at} not released ({e}):\n{}", sockets_on(at.ip()))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// `ss` lines naming `ip`, for a failure message.
fn sockets_on(ip: IpAddr) -> String {
    let out = Command::new("ss").args(["-tanpe"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).lines().filter(|l| l.contains(&format!("{ip}:"))).collect::<Vec<_>>().join("\n")
}

#[actix::test]
async fn kernel_reports_a_taken_port_and_takes_it_once_free() {
    if !require_nft() {
        return;
    }
    let node_ip = ip(11, 1);
    let node_id = NodeId::random();
    let table = NftTable::for_node(&node_id, node_ip);
    let _cleanup = DropTable(table.clone());
    let a = tcp_backend("a", ip(11, 2)).await;
    let taken = std::net::TcpListener::bind((node_ip, PORT)).expect("bind");

    let mut config = MeshConfig::new(node_id, node_ip, DataPath::Kernel);
    config.retry_every = Duration::from_millis(100);
    let (programmer, mut watch) = MeshProgrammer::new(config);
    let addr = programmer.start();
    set(&addr, vec![entry(Protocol::Tcp, PORT, &[a.addr])]).await;
    let st = status(&addr).await;
    assert_eq!(st.programmed, 0);
    assert_eq!(st.failures.len(), 1);
    assert_eq!(
        st.failures[0].error,
        MeshError::PortInUse { port: PortKey::tcp(PORT), addr: SocketAddr::new(node_ip, PORT) }
    );
    // Its traffic still reaches whoever holds the port: not hijacked.
    drop(taken);
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.programmed == 1 && s.failures.is_empty()))
        .await
        .expect("retried in time")
        .expect("status");
    assert_eq!(which(SocketAddr::new(node_ip, PORT)).await.expect("served"), "a");

    // Shutdown removes the table.
    addr.send(Shutdown).await.expect("mailbox").expect("teardown");
    assert!(!table_exists(&table));
}

#[tokio::test]
async fn the_generated_ruleset_loads_and_updates_in_the_kernel() {
    if !require_nft() {
        return;
    }
    let node_ip: IpAddr = ip(12, 1);
    let table = NftTable::for_node(&NodeId::random(), node_ip);
    let _cleanup = DropTable(table.clone());
    let b = |h: u8, p: u16| SocketAddr::new(ip(12, h), p);
    let meshes = [
        vec![],
        vec![entry(Protocol::Tcp, 1000, &[b(2, 1), b(3, 1)]), entry(Protocol::Udp, 1000, &[])],
        vec![
            entry(Protocol::Tcp, 1000, &[b(2, 1)]),
            entry(Protocol::Udp, 1000, &[b(2, 2)]),
            entry(Protocol::Tcp, 1001, &[]),
        ],
        vec![entry(Protocol::Tcp, 1001, &[b(4, 1)])],
        vec![],
    ];
    let mut cur = plan::desired(&MeshTable::default(), node_ip);
    nft::run(&table.rebuild(&cur)).await.expect("empty table");
    for entries in meshes {
        let des = plan::desired(&MeshTable { entries, ..Default::default() }, node_ip);
        let changes = plan::diff(&cur, &des);
        let script = table.update(&cur, &changes);
        if !script.is_empty() {
            nft::run(&script).await.unwrap_or_else(|e| panic!("{e}\n{script}"));
        }
        // The incremental result equals a rebuild of the same mesh.
        let listed = list(&table);
        nft::run(&table.rebuild(&des)).await.expect("rebuild");
        assert_eq!(normalise(&listed), normalise(&list(&table)), "after\n{script}");
        cur = des;
    }
    nft::run(&table.teardown()).await.expect("teardown");
    assert!(!table_exists(&table));
    // Tearing down twice is fine (a restart after a clean stop).
    nft::run(&table.teardown()).await.expect("teardown again");
}

fn list(t: &NftTable) -> String {
    let out = Command::new("nft").args(["list", "table", t.family(), t.name()]).output().expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sorted lines: the order nft lists chains in follows creation.
fn normalise(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    v.sort();
    v
}

/// A UDP flow's conntrack entry would keep it on its backend for as long as
/// its client keeps sending: when that backend leaves the mesh, its flows
/// are flushed, and the same client socket's next datagrams reach another.
#[actix::test]
async fn a_udp_flow_moves_off_a_backend_that_left() {
    if !require_nft() {
        return;
    }
    if Command::new("conntrack").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "conntrack is missing under CI (deploy/install-deps.sh)");
        eprintln!("skipping: conntrack is not installed (apt-get install conntrack)");
        return;
    }
    let node_ip = ip(13, 1);
    let node_id = NodeId::random();
    let _cleanup = DropTable(NftTable::for_node(&node_id, node_ip));
    let ua = udp_backend("ua", ip(13, 2)).await;
    let ub = udp_backend("ub", ip(13, 3)).await;
    let mut config = MeshConfig::new(node_id, node_ip, DataPath::Kernel);
    config.retry_every = Duration::from_millis(200);
    let (programmer, _status) = MeshProgrammer::new(config);
    let addr = programmer.start();
    set(&addr, vec![entry(Protocol::Udp, PORT + 7, &[ua.addr, ub.addr])]).await;
    assert_eq!(status(&addr).await.error, None);

    let at = SocketAddr::new(node_ip, PORT + 7);
    let client = UdpSocket::bind((ip(13, 9), 0)).await.expect("client");
    let first = udp_which(&client, at).await.expect("udp answer");
    // The flow sticks to its backend.
    for _ in 0..3 {
        assert_eq!(udp_which(&client, at).await.expect("udp answer"), first);
    }
    let (other, other_name) = if first == "ua" { (ub.addr, "ub") } else { (ua.addr, "ua") };
    set(&addr, vec![entry(Protocol::Udp, PORT + 7, &[other])]).await;
    let moved = Instant::now();
    let got = eventually("the flow to move to the backend that remains", || async {
        udp_which(&client, at).await.ok().filter(|n| n == other_name)
    })
    .await;
    assert_eq!(got, other_name);
    // (Without the flush it would stay until conntrack's UDP timeout, 30 s
    // and more, past the wait's deadline.)
    eprintln!("UDP flow moved in {:.0} ms", moved.elapsed().as_secs_f64() * 1000.0);
    addr.send(Shutdown).await.expect("mailbox").expect("teardown");
}
