//! Service discovery answers, pure: what this node's resolver says to a
//! task on one network ([`Zone`], from the network table), and the answer
//! to one query ([`answer`]), with DNS messages read and written by
//! hickory-proto.
//!
//! On a network, a service's name and its aliases resolve to its VIP (the
//! running tasks' addresses with `--endpoint-mode dnsrr`), `tasks.NAME` and
//! `tasks.ALIAS` to the running tasks' addresses. Every answer has TTL 0,
//! so that a client asks again and sees a change at once. Other names are
//! not this node's to answer: they are forwarded to the host's resolvers.
//!
//! Reverse lookups (PTR, `2.0.0.10.in-addr.arpa`) of a VIP or a running
//! task's address answer `SERVICE.NETWORK` (Swarm answers a task's address
//! with its container's name; the table carries no task names); other
//! addresses are forwarded.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use common::network::{gateway_of, NetworkEntry};
use common::NodeId;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// The names of one network, lowercase, without the trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    pub names: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Reverse: each VIP and running task address, its service's
    /// `NAME.NETWORK`.
    pub reverse: BTreeMap<Ipv4Addr, Vec<String>>,
}

/// The address a reverse name (`D.C.B.A.in-addr.arpa`) stands for.
pub fn reverse_addr(name: &str) -> Option<Ipv4Addr> {
    let octets = name.strip_suffix(".in-addr.arpa")?;
    let mut parts = octets.split('.').map(|p| p.parse::<u8>().ok());
    let (d, c, b, a) = (parts.next()??, parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::new(a, b, c, d))
}

/// What this node's resolver knows: per network it has a block of, by the
/// address it listens on there (the block's gateway, the tasks' DNS
/// server), the network's names; and per running task address, the
/// gateways of every network its service is on, so that a task on two
/// networks resolves the names of both (it asks on its first network).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zones {
    pub networks: BTreeMap<Ipv4Addr, Zone>,
    pub clients: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

impl Zones {
    /// The zones a query from `client` to `listen` is answered from: the
    /// client's service's networks (the one asked first), or, for an
    /// address not known to run (a task still starting), the one asked.
    pub fn for_client(&self, listen: Ipv4Addr, client: Ipv4Addr) -> Vec<&Zone> {
        let mut out: Vec<&Zone> = self.networks.get(&listen).into_iter().collect();
        for gw in self.clients.get(&client).into_iter().flatten().filter(|g| **g != listen) {
            out.extend(self.networks.get(gw));
        }
        out
    }
}

pub fn zones(node: &NodeId, table: &[NetworkEntry]) -> Zones {
    let mut out = Zones::default();
    let mut gateways_of: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for net in table {
        let Some(mine) = net.nodes.iter().find(|b| &b.node == node) else { continue };
        let gateway = gateway_of(&mine.block);
        let mut zone = Zone::default();
        for svc in &net.services {
            gateways_of.entry(&svc.name).or_default().push(gateway);
            let by_name = match svc.vip {
                Some(vip) => vec![vip],
                None => svc.tasks.clone(),
            };
            let fqdn = format!("{}.{}", svc.name, net.name).to_ascii_lowercase();
            for a in svc.vip.iter().chain(&svc.tasks) {
                zone.reverse.entry(*a).or_default().push(fqdn.clone());
            }
            for name in std::iter::once(&svc.name).chain(&svc.aliases) {
                let name = name.to_ascii_lowercase();
                // A name taken by two services (one's alias, another's
                // name) answers with both, as Swarm's does.
                zone.names.entry(name.clone()).or_default().extend(&by_name);
                zone.names.entry(format!("tasks.{name}")).or_default().extend(&svc.tasks);
            }
        }
        for addrs in zone.names.values_mut() {
            addrs.sort();
            addrs.dedup();
        }
        for names in zone.reverse.values_mut() {
            names.sort();
            names.dedup();
        }
        out.networks.insert(gateway, zone);
    }
    for net in table.iter().filter(|n| n.nodes.iter().any(|b| &b.node == node)) {
        for svc in net.services.iter().filter(|s| gateways_of.get(s.name.as_str()).is_some_and(|g| g.len() > 1)) {
            for t in &svc.tasks {
                out.clients.insert(*t, gateways_of[svc.name.as_str()].clone());
            }
        }
    }
    out
}

/// What to do with one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this back.
    Reply(Message),
    /// Not a name of ours: ask the host's resolvers.
    Forward,
}

/// The answer to `query` from `zones` (the first that has the name): our names answer A queries with
/// their addresses and other types with no records (the name exists);
/// anything but one standard query is refused or answered FORMERR.
pub fn answer(zones: &[&Zone], query: &Message) -> Answer {
    let md = &query.metadata;
    let reply = |code: ResponseCode| {
        let mut m = Message::error_msg(md.id, md.op_code, code);
        m.metadata.recursion_desired = md.recursion_desired;
        m.metadata.recursion_available = true;
        m.queries = query.queries.clone();
        m
    };
    if md.message_type != MessageType::Query {
        return Answer::Reply(reply(ResponseCode::FormErr));
    }
    if md.op_code != OpCode::Query {
        return Answer::Reply(reply(ResponseCode::NotImp));
    }
    let [q] = query.queries.as_slice() else {
        return Answer::Reply(reply(ResponseCode::FormErr));
    };
    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if let Some(addr) = reverse_addr(&name) {
        let Some(names) = zones.iter().find_map(|z| z.reverse.get(&addr)) else {
            return Answer::Forward;
        };
        let mut m = reply(ResponseCode::NoError);
        m.metadata.authoritative = true;
        if q.query_type() == RecordType::PTR && matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
            for n in names {
                let Ok(target) = Name::from_ascii(format!("{n}.")) else { continue };
                m.answers.push(Record::from_rdata(q.name().clone(), 0, RData::PTR(PTR(target))));
            }
        }
        return Answer::Reply(m);
    }
    let Some(addrs) = zones.iter().find_map(|z| z.names.get(&name)) else {
        return Answer::Forward;
    };
    let mut m = reply(ResponseCode::NoError);
    m.metadata.authoritative = true;
    if q.query_type() == RecordType::A && matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
        for a in addrs {
            m.answers.push(Record::from_rdata(q.name().clone(), 0, RData::A(A(*a))));
        }
    }
    Answer::Reply(m)
}

/// The answer as bytes: truncated (TC set, no records) when larger than
/// the client takes over UDP, so that it asks again over TCP.
pub fn encode(reply: &Message, query: &Message) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= usize::from(query.max_payload().max(512)) {
        return Some(bytes);
    }
    reply.truncate().to_vec().ok()
}

/// SERVFAIL for a query that could not be forwarded (no resolver, none
/// answered in time).
pub fn server_failure(query: &Message) -> Message {
    let mut m = Message::error_msg(query.metadata.id, query.metadata.op_code, ResponseCode::ServFail);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = query.queries.clone();
    m
}

#[cfg(test)]
mod tests {
    use common::network::{NodeBlock, ServiceEndpoint};
    use hickory_proto::op::Query;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table() -> Vec<NetworkEntry> {
        let svc = |name: &str, aliases: &[&str], vip: Option<&str>, tasks: &[&str]| ServiceEndpoint {
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            vip: vip.map(ip),
            tasks: tasks.iter().map(|t| ip(t)).collect(),
        };
        let block = |node: &str, b: &str| NodeBlock {
            node: node.into(),
            underlay: "192.168.0.1".parse().unwrap(),
            block: b.parse().unwrap(),
        };
        vec![
            NetworkEntry {
                id: "app".into(),
                name: "app".into(),
                vni: 4096,
                range: "10.0.0.0/17".parse().unwrap(),
                encrypted: false,
                routing: Default::default(),
                nodes: vec![block("n1", "10.0.0.0/24"), block("n2", "10.0.1.0/24")],
                services: vec![
                    svc("back", &["Api"], Some("10.0.128.1"), &["10.0.1.2", "10.0.0.2"]),
                    svc("rr", &[], None, &["10.0.0.3", "10.0.1.3"]),
                    svc("idle", &[], Some("10.0.128.3"), &[]),
                ],
            },
            NetworkEntry {
                id: "db".into(),
                name: "db".into(),
                vni: 4097,
                range: "10.1.0.0/17".parse().unwrap(),
                encrypted: false,
                routing: Default::default(),
                nodes: vec![block("n2", "10.1.0.0/24")],
                services: vec![svc("pg", &[], Some("10.1.128.1"), &["10.1.0.2"])],
            },
        ]
    }

    fn ask(name: &str, kind: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m
    }

    /// `NOERROR [10.0.128.1]`, `forward`.
    fn render(a: &Answer) -> String {
        match a {
            Answer::Forward => "forward".into(),
            Answer::Reply(m) => {
                let addrs: Vec<String> = m
                    .answers
                    .iter()
                    .map(|r| match &r.data {
                        RData::A(a) => a.0.to_string(),
                        RData::PTR(p) => p.0.to_ascii(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                format!("{:?} [{}]", m.metadata.response_code, addrs.join(", "))
            }
        }
    }

    #[test]
    fn a_node_answers_for_the_networks_it_has_a_block_of_on_their_gateways() {
        let t = table();
        let z1 = zones(&"n1".into(), &t);
        assert_eq!(z1.networks.keys().collect::<Vec<_>>(), [&ip("10.0.0.1")]);
        let z2 = zones(&"n2".into(), &t);
        assert_eq!(z2.networks.keys().collect::<Vec<_>>(), [&ip("10.0.1.1"), &ip("10.1.0.1")]);
        assert!(!z2.networks[&ip("10.0.1.1")].names.contains_key("pg"), "networks are kept apart");
        assert!(zones(&"n3".into(), &t).networks.is_empty());
    }

    #[test]
    fn a_task_on_two_networks_resolves_the_names_of_both() {
        let mut t = table();
        // back joins db too (its tasks have addresses there as well).
        t[1].services.push(ServiceEndpoint {
            name: "back".into(),
            aliases: vec![],
            vip: Some(ip("10.1.128.2")),
            tasks: vec![ip("10.1.0.3")],
        });
        let z = zones(&"n2".into(), &t);
        let names = |zs: Vec<&Zone>| {
            let q = ask("pg", RecordType::A);
            render(&answer(&zs, &q))
        };
        // back's task asks on app (its first network): app's and db's names.
        assert_eq!(names(z.for_client(ip("10.0.1.1"), ip("10.0.1.2"))), "NoError [10.1.128.1]");
        // rr is only on app: db's names are not its to see.
        assert_eq!(names(z.for_client(ip("10.0.1.1"), ip("10.0.1.3"))), "forward");
        // back on app answers with app's VIP first, whoever asks on app.
        let q = ask("back", RecordType::A);
        assert_eq!(render(&answer(&z.for_client(ip("10.0.1.1"), ip("10.0.1.2")), &q)), "NoError [10.0.128.1]");
        assert_eq!(render(&answer(&z.for_client(ip("10.1.0.1"), ip("10.1.0.3")), &q)), "NoError [10.1.128.2]");
    }

    #[test]
    fn answers() {
        let zones = zones(&"n1".into(), &table());
        let zone = &zones.networks[&ip("10.0.0.1")];
        let cases: &[(&str, RecordType, &str)] = &[
            ("back", RecordType::A, "NoError [10.0.128.1]"),
            ("back.", RecordType::A, "NoError [10.0.128.1]"),
            ("BACK", RecordType::A, "NoError [10.0.128.1]"),
            ("api", RecordType::A, "NoError [10.0.128.1]"),
            ("tasks.back", RecordType::A, "NoError [10.0.0.2, 10.0.1.2]"),
            ("tasks.api", RecordType::A, "NoError [10.0.0.2, 10.0.1.2]"),
            ("rr", RecordType::A, "NoError [10.0.0.3, 10.0.1.3]"),
            ("tasks.rr", RecordType::A, "NoError [10.0.0.3, 10.0.1.3]"),
            // A service with no running task keeps its VIP; its tasks.
            // name exists with no address.
            ("idle", RecordType::A, "NoError [10.0.128.3]"),
            ("tasks.idle", RecordType::A, "NoError []"),
            // Our name, another type: no records, not forwarded.
            ("back", RecordType::AAAA, "NoError []"),
            ("pg", RecordType::A, "forward"),
            ("example.com", RecordType::A, "forward"),
            ("tasks.nothing", RecordType::A, "forward"),
            // Reverse: a VIP and a task's address name their service.
            ("1.128.0.10.in-addr.arpa", RecordType::PTR, "NoError [back.app.]"),
            ("2.1.0.10.in-addr.arpa.", RecordType::PTR, "NoError [back.app.]"),
            ("3.0.0.10.in-addr.arpa", RecordType::PTR, "NoError [rr.app.]"),
            ("3.0.0.10.in-addr.arpa", RecordType::A, "NoError []"),
            // Not a running task's (nor another network's): forwarded.
            ("9.0.0.10.in-addr.arpa", RecordType::PTR, "forward"),
            ("1.128.1.10.in-addr.arpa", RecordType::PTR, "forward"),
            ("1.2.3.in-addr.arpa", RecordType::PTR, "forward"),
            ("300.0.0.10.in-addr.arpa", RecordType::PTR, "forward"),
        ];
        for (name, kind, want) in cases {
            let a = answer(&[zone], &ask(name, *kind));
            assert_eq!(render(&a), *want, "{name} {kind:?}");
            if let Answer::Reply(m) = a {
                assert_eq!(m.metadata.id, 7);
                assert_eq!(m.metadata.message_type, MessageType::Response);
                assert!(m.metadata.authoritative && m.metadata.recursion_desired);
                assert_eq!(m.queries.len(), 1, "the question is echoed");
                assert!(m.answers.iter().all(|r| r.ttl == 0));
            }
        }
    }

    #[test]
    fn odd_queries_are_refused_and_big_answers_truncated() {
        let zones = zones(&"n1".into(), &table());
        let zone = &zones.networks[&ip("10.0.0.1")];
        let mut two = ask("back", RecordType::A);
        two.add_query(Query::query(Name::from_ascii("rr").unwrap(), RecordType::A));
        assert_eq!(render(&answer(&[zone], &two)), "FormErr []");
        let mut update = ask("back", RecordType::A);
        update.metadata.op_code = OpCode::Update;
        assert_eq!(render(&answer(&[zone], &update)), "NotImp []");
        let mut response = ask("back", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(render(&answer(&[zone], &response)), "FormErr []");

        // 100 tasks do not fit in 512 bytes: truncated, for TCP.
        let mut big = Zone::default();
        big.names.insert("tasks.big".into(), (0..100).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect());
        let q = ask("tasks.big", RecordType::A);
        let Answer::Reply(r) = answer(&[&big], &q) else { panic!("not answered") };
        let bytes = encode(&r, &q).unwrap();
        let back = Message::from_vec(&bytes).unwrap();
        assert!(back.metadata.truncation && back.answers.is_empty() && bytes.len() <= 512);
        let small = ask("back", RecordType::A);
        let Answer::Reply(r) = answer(&[zone], &small) else { panic!("not answered") };
        let back = Message::from_vec(&encode(&r, &small).unwrap()).unwrap();
        assert_eq!(back.answers.len(), 1);
        assert!(!back.metadata.truncation);
        let fail = server_failure(&small);
        assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(fail.metadata.id, 7);
    }
}
