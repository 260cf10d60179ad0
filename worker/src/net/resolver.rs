//! This node's DNS resolver for its tasks: UDP and TCP on port 53 of each
//! network's gateway on this node (the tasks' containers are given it as
//! their DNS server), answering from that network's [`Zone`] and
//! forwarding every other name to the host's resolvers (`/etc/resolv.conf`
//! at start). With no resolver, or none answering within
//! [`FORWARD_TIMEOUT`], the task gets SERVFAIL rather than a hang.
//!
//! `/metrics` counts, per node, `shoal_dns_total{what=…}`: `queries`,
//! `answered` (from the zones), `forwarded`, `failed` (forwarding got no
//! answer), `malformed` (not a DNS message: dropped).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::network::NetworkEntry;
use common::NodeId;
use hickory_proto::op::Message;
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::dns::{self, Answer, Zones};
use crate::node::metrics::{metrics, CounterFamily};

/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// How long one host resolver has to answer a forwarded query.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; past that, SERVFAIL at once.
const MAX_FORWARDS: usize = 256;
/// TCP connections served at once per network; past that, closed.
const MAX_TCP: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(5);

/// The `nameserver` lines of a resolv.conf, on port 53.
pub fn host_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .collect()
}

struct Shared {
    zones: RwLock<Arc<Zones>>,
    upstreams: Vec<SocketAddr>,
    forwards: Semaphore,
    counts: CounterFamily,
}

/// Serves the zones of each network table this node receives.
pub struct Resolver {
    pub node: NodeId,
    /// The host's resolvers, tried in turn for names not ours.
    pub upstreams: Vec<SocketAddr>,
}

impl Resolver {
    /// Runs until `tables` closes. A gateway address that cannot be bound
    /// yet (the bridge is being made) is tried again every second.
    pub async fn run(self, mut tables: watch::Receiver<Vec<NetworkEntry>>) {
        let shared = Arc::new(Shared {
            zones: RwLock::default(),
            upstreams: self.upstreams,
            forwards: Semaphore::new(MAX_FORWARDS),
            counts: metrics().counter_family(
                "shoal_dns",
                "DNS queries from this node's tasks: queries, answered (service names), forwarded (to the host's resolvers), failed (forwarding got no answer), malformed",
                "what",
            ),
        });
        let mut servers: BTreeMap<Ipv4Addr, JoinHandle<()>> = BTreeMap::new();
        let mut failed: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        loop {
            let zones = dns::zones(&self.node, &tables.borrow_and_update());
            let want = zones.networks.clone();
            *shared.zones.write() = Arc::new(zones);
            servers.retain(|addr, task| {
                let keep = want.contains_key(addr) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            failed.retain(|a, _| want.contains_key(a));
            let missing: Vec<Ipv4Addr> = want.keys().filter(|a| !servers.contains_key(a)).copied().collect();
            for addr in &missing {
                let at = SocketAddr::new(IpAddr::V4(*addr), DNS_PORT);
                match bind(at).await {
                    Ok((udp, tcp)) => {
                        tracing::info!(%at, "dns: serving the network's names");
                        failed.remove(addr);
                        let (a, sh) = (*addr, shared.clone());
                        servers.insert(
                            *addr,
                            tokio::spawn(async move {
                                tokio::join!(serve(Arc::new(udp), a, sh.clone()), serve_tcp(tcp, a, sh));
                            }),
                        );
                    }
                    Err(e) => {
                        let why = e.to_string();
                        if failed.get(addr) != Some(&why) {
                            tracing::warn!(%at, error = %why, "dns: cannot listen yet; trying again");
                        }
                        failed.insert(*addr, why);
                    }
                }
            }
            let wait = if failed.is_empty() { Duration::from_secs(3600) } else { Duration::from_secs(1) };
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        for task in servers.values() {
            task.abort();
        }
    }
}

async fn bind(at: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(at).await?, TcpListener::bind(at).await?))
}

async fn serve(sock: Arc<UdpSocket>, addr: Ipv4Addr, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // An ICMP error from an earlier send surfaces here: go on.
                tracing::debug!(%addr, error = %e, "dns: receive failed");
                continue;
            }
        };
        let bytes = &buf[..n];
        let Some(query) = parse(&shared, bytes) else { continue };
        let zones = shared.zones.read().clone();
        match dns::answer(&zones.for_client(addr, client_v4(peer)), &query) {
            Answer::Reply(reply) => {
                shared.counts.inc("answered");
                if let Some(out) = dns::encode(&reply, &query) {
                    let _ = sock.send_to(&out, peer).await;
                }
            }
            Answer::Forward => {
                let (sock, shared, bytes) = (sock.clone(), shared.clone(), bytes.to_vec());
                tokio::spawn(async move {
                    if let Some(reply) = forwarded(&shared, &bytes, &query).await {
                        let _ = sock.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

/// The same over TCP (RFC 7766: each message after its two-byte length),
/// for answers too large for UDP; a connection idle for
/// [`TCP_IDLE`] is closed, at most [`MAX_TCP`] at once.
async fn serve_tcp(listener: TcpListener, addr: Ipv4Addr, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else { continue };
        let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let mut len = [0u8; 2];
                let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await else { return };
                let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
                let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut bytes)).await else { return };
                let Some(query) = parse(&shared, &bytes) else { return };
                let zones = shared.zones.read().clone();
                let reply = match dns::answer(&zones.for_client(addr, client_v4(peer)), &query) {
                    Answer::Reply(reply) => {
                        shared.counts.inc("answered");
                        reply.to_vec().ok()
                    }
                    Answer::Forward => forwarded(&shared, &bytes, &query).await,
                };
                let Some(reply) = reply.filter(|r| r.len() <= usize::from(u16::MAX)) else { return };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&reply);
                if conn.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn client_v4(peer: SocketAddr) -> Ipv4Addr {
    match peer.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// A query, counted; `None` (counted too) for what is not a DNS message.
fn parse(shared: &Shared, bytes: &[u8]) -> Option<Message> {
    shared.counts.inc("queries");
    let query = Message::from_vec(bytes).ok();
    if query.is_none() {
        shared.counts.inc("malformed");
    }
    query
}

/// The host resolvers' answer to `query`, or SERVFAIL.
async fn forwarded(shared: &Shared, bytes: &[u8], query: &Message) -> Option<Vec<u8>> {
    shared.counts.inc("forwarded");
    let reply = match shared.forwards.try_acquire() {
        Ok(_permit) => forward(&shared.upstreams, bytes, query.metadata.id).await,
        Err(_) => None,
    };
    match reply {
        Some(r) => Some(r),
        None => {
            shared.counts.inc("failed");
            dns::server_failure(query).to_vec().ok()
        }
    }
}

/// The first answer with `id` from `upstreams`, each given
/// [`FORWARD_TIMEOUT`]; `None` if none answered.
async fn forward(upstreams: &[SocketAddr], query: &[u8], id: u16) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(sock) = UdpSocket::bind(local).await else { continue };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                // Another id is a stray answer: keep waiting for ours.
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Some(n);
                }
            }
        })
        .await;
        if let Ok(Some(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;
    use crate::net::dns::Zone;

    #[test]
    fn the_host_resolvers_are_the_nameserver_lines() {
        let conf = "# generated\nsearch example.com\nnameserver 10.9.0.2\nnameserver  fd00::53 # v6\noptions ndots:0\nnameserver bogus\n";
        let got: Vec<String> = host_resolvers(conf).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.9.0.2:53", "[fd00::53]:53"]);
        assert!(host_resolvers("").is_empty());
    }

    fn shared(upstreams: Vec<SocketAddr>, zone: Zone) -> Arc<Shared> {
        let zones = Zones { networks: [(Ipv4Addr::LOCALHOST, zone)].into(), clients: Default::default() };
        let zones = RwLock::new(Arc::new(zones));
        let counts = metrics().counter_family("shoal_dns", "", "what");
        Arc::new(Shared { zones, upstreams, forwards: Semaphore::new(MAX_FORWARDS), counts })
    }

    async fn server(shared: Arc<Shared>) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = sock.local_addr().unwrap();
        let tcp = TcpListener::bind(at).await.unwrap();
        tokio::spawn(serve(Arc::new(sock), Ipv4Addr::LOCALHOST, shared.clone()));
        tokio::spawn(serve_tcp(tcp, Ipv4Addr::LOCALHOST, shared));
        at
    }

    /// Asks `server` for `name`'s A records: the response code and addresses.
    async fn ask(server: SocketAddr, name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await.expect("an answer").unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, q.metadata.id);
        let addrs = m.answers.iter().filter_map(|r| if let RData::A(a) = &r.data { Some(a.0) } else { None });
        (m.metadata.response_code, addrs.collect())
    }

    #[tokio::test]
    async fn names_are_answered_others_forwarded_and_with_no_resolver_fail_at_once() {
        // A host resolver that says 192.0.2.7 to everything.
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = up.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                r.queries = q.queries.clone();
                r.answers.push(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
                up.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
            }
        });
        let mut zone = Zone::default();
        zone.names.insert("back".into(), vec![Ipv4Addr::new(10, 0, 128, 1)]);
        let s = shared(vec![up_addr], zone.clone());
        let before = (s.counts.get("answered"), s.counts.get("forwarded"));
        let at = server(s.clone()).await;
        assert_eq!(ask(at, "back").await, (ResponseCode::NoError, vec![Ipv4Addr::new(10, 0, 128, 1)]));
        assert_eq!(ask(at, "example.com").await, (ResponseCode::NoError, vec![Ipv4Addr::new(192, 0, 2, 7)]));
        assert!(s.counts.get("answered") > before.0 && s.counts.get("forwarded") > before.1);

        // No host resolver (a bare network namespace): SERVFAIL, at once.
        let at = server(shared(vec![], zone)).await;
        let started = std::time::Instant::now();
        assert_eq!(ask(at, "example.com").await, (ResponseCode::ServFail, vec![]));
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
        let mut zone = Zone::default();
        zone.names.insert("tasks.big".into(), (0..100).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect());
        let at = server(shared(vec![], zone)).await;
        assert_eq!(ask(at, "tasks.big").await, (ResponseCode::NoError, vec![]), "truncated");

        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii("tasks.big").unwrap(), RecordType::A));
        let mut conn = tokio::net::TcpStream::connect(at).await.unwrap();
        for _ in 0..2 {
            let bytes = q.to_vec().unwrap();
            conn.write_all(&(bytes.len() as u16).to_be_bytes()).await.unwrap();
            conn.write_all(&bytes).await.unwrap();
            let mut len = [0u8; 2];
            conn.read_exact(&mut len).await.unwrap();
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            conn.read_exact(&mut reply).await.unwrap();
            let m = Message::from_vec(&reply).unwrap();
            assert!(!m.metadata.truncation);
            assert_eq!(m.answers.len(), 100, "the whole answer, twice on one connection");
        }
    }
}
