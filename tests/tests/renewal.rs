//! Certificate renewal (issue 16), against real `shoal daemon`s: a cluster
//! whose certificates live 40 s (the hidden, test-only
//! `--test-cert-expiry-secs`; `--cert-expiry` refuses less than 1h) renews
//! every node's certificate and the API's before they expire, on disk and
//! on the wire, without a restart: the nodes stay Ready, a service keeps
//! its tasks, a new one is scheduled on the worker after the first
//! certificates have expired, and a restarted worker comes back with its
//! renewed certificate.
//!
//! The harness's CLI calls go over TLS with the first admin's bundle
//! (`DATA_DIR/api-client`), through `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`,
//! which this file sets for its test process.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName};
use tests::{require_docker, run_with_timeout, wait_for, Cluster, ClusterSpec, CLUSTER_PORT};
use worker::node::tls::{cert_from_pem, Validity};

/// The certificates' lifetime in this test: renewal comes at 2/3 of it.
const LIFETIME_SECS: u64 = 40;

/// A TLS handshake with `addr` as `config` sets it up; the server's leaf
/// certificate. With `request`, an HTTP/1.0 GET of that path is sent too
/// and the status line returned.
fn peer_cert(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    request: Option<&str>,
) -> Result<(CertificateDer<'static>, String), String> {
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| format!("handshake with {addr}: {e}"))?;
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or(format!("{addr} showed no certificate"))?;
    let mut status = String::new();
    if let Some(path) = request {
        tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
        status = String::from_utf8_lossy(&out).to_string();
    }
    Ok((leaf, status))
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_from_pem(ca_pem).unwrap()).unwrap();
    roots
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node's cluster port presents: a client without a certificate
/// (as a joining node is) gets through the handshake and sees it.
fn cluster_port_cert(c: &Cluster, i: usize) -> Result<CertificateDer<'static>, String> {
    let ca = std::fs::read_to_string(c.data_dir(i).join("tls/ca.crt")).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&ca))
        .with_no_client_auth();
    let addr = format!("{}:{CLUSTER_PORT}", c.addr(i));
    peer_cert(&addr, Arc::new(config), worker::node::tls::server_name(), None).map(|(leaf, _)| leaf)
}

/// The certificate in node i's data directory.
fn disk_cert(c: &Cluster, i: usize) -> CertificateDer<'static> {
    let pem = std::fs::read_to_string(c.data_dir(i).join("tls/node.crt")).unwrap();
    cert_from_pem(&pem).unwrap()
}

fn validity(der: &CertificateDer<'_>) -> Validity {
    Validity::of_der(der).unwrap()
}

/// The running tasks' ids of `svc`.
fn task_ids(c: &Cluster, svc: &str) -> Vec<String> {
    let mut ids: Vec<String> = c
        .wait_running(svc, 2, Duration::from_secs(60))
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// Node i's log since its last start.
fn last_start_log(c: &Cluster, i: usize) -> String {
    let log = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
    let at = log.rfind("=== harness: starting").unwrap_or(0);
    log[at..].to_string()
}

#[test]
fn a_cert_expiry_under_an_hour_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let out = run_with_timeout(
        Command::new(tests::shoal_bin())
            .args(["daemon", "--init", "--cert-expiry", "10m", "--data-dir"])
            .arg(&data)
            .args(["--advertise-addr", "127.0.0.1"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!out.success(), "--cert-expiry 10m was taken: {out}");
    assert!(
        out.stderr.contains(
            "invalid value '10m' for '--cert-expiry <DURATION>': the certificate expiry must be at least 1h (got 10m)"
        ),
        "{out}"
    );
    assert!(!data.join("tls").exists(), "a refused start wrote an identity");
}

#[test]
fn certificates_renew_before_they_expire_on_disk_and_on_the_wire_without_downtime() {
    if !require_docker() {
        return;
    }
    let started = std::time::Instant::now();
    let dirs = tempfile::tempdir().unwrap();
    let data = dirs.path().join("node1");
    let admin = data.join("api-client");
    std::env::set_var("DOCKER_TLS_VERIFY", "1");
    std::env::set_var("DOCKER_CERT_PATH", &admin);
    let mut spec = ClusterSpec::new(1, 1);
    spec.init_args = vec!["--test-cert-expiry-secs".into(), LIFETIME_SECS.to_string()];
    spec.daemon_args = vec!["--api-tls".into()];
    spec.data_dirs = BTreeMap::from([(1, data.clone())]);
    let mut c = Cluster::start(spec);

    // The API: a client of the admin bundle; `/swarm` says the expiry in ns.
    let read = |f: &str| std::fs::read_to_string(admin.join(f)).unwrap();
    let api_config =
        Arc::new(worker::node::api_tls::client_config(&read("ca.pem"), &read("cert.pem"), &read("key.pem")).unwrap());
    let api_name = ServerName::try_from(c.addr(1).to_string()).unwrap();
    let api = |path: Option<&str>| peer_cert(&c.api_addr(1), api_config.clone(), api_name.clone(), path);
    let (api_first, swarm) = api(Some("/swarm")).unwrap();
    let expiry_ns = (LIFETIME_SECS * 1_000_000_000).to_string();
    assert!(swarm.contains(&format!("\"NodeCertExpiry\":{expiry_ns}")), "{swarm}");

    // What the nodes start with: short-lived, the same on disk and on the wire.
    let first = [disk_cert(&c, 1), disk_cert(&c, 2)];
    for (i, cert) in [(1, &first[0]), (2, &first[1])] {
        let v = validity(cert);
        let span = v.not_after.duration_since(v.not_before).unwrap();
        assert!(span <= Duration::from_secs(LIFETIME_SECS + 5), "node{i}'s certificate lives {span:?}");
        assert_eq!(&cluster_port_cert(&c, i).unwrap(), cert, "node{i} presents another certificate");
    }
    let first_expiry = validity(&first[1]).not_after;
    c.create_service("renew-keep", &["--replicas", "2"], &["sleep", "100000"]);
    let kept = task_ids(&c, "renew-keep");

    // Renewed on disk, then presented on the wire, by the worker and the
    // manager; the API's certificate too.
    for i in [2, 1] {
        let renewed =
            wait_for(Duration::from_secs(LIFETIME_SECS + 20), &format!("node{i}'s renewed certificate"), || {
                let now = disk_cert(&c, i);
                if now != first[i - 1] {
                    Ok(now)
                } else {
                    Err("the first one".to_string())
                }
            });
        let (old, new) = (validity(&first[i - 1]), validity(&renewed));
        assert!(new.not_after > old.not_after, "node{i}: {old:?} then {new:?}");
        assert!(SystemTime::now() < old.not_after, "node{i} renewed only after its certificate expired");
        wait_for(Duration::from_secs(10), &format!("node{i} to present its renewed certificate"), || {
            match cluster_port_cert(&c, i) {
                Ok(wire) if wire == disk_cert(&c, i) => Ok(()),
                Ok(_) => Err("another certificate".to_string()),
                Err(e) => Err(e),
            }
        });
    }
    wait_for(Duration::from_secs(LIFETIME_SECS), "the API's renewed certificate", || match api(None) {
        Ok((cert, _)) if cert != api_first => Ok(()),
        Ok(_) => Err("the first one".to_string()),
        Err(e) => Err(e),
    });

    // Past the first certificates' end: the cluster carries on.
    wait_for(Duration::from_secs(LIFETIME_SECS), "the first certificates to expire", || {
        if SystemTime::now() > first_expiry + Duration::from_secs(2) {
            Ok(())
        } else {
            Err("not yet")
        }
    });
    c.wait_nodes_ready(&[1, 2], Duration::from_secs(10));
    assert_eq!(task_ids(&c, "renew-keep"), kept, "the service's tasks changed across the renewal");
    c.create_service("renew-new", &["--replicas", "2", "--constraint", "node.role==worker"], &["sleep", "100000"]);
    task_ids(&c, "renew-new");
    assert!(!last_start_log(&c, 2).contains("damaged gossip keys"));

    // A restarted worker uses the renewed certificate (it would not start
    // with an expired one) and its gossip keys, sealed again, still open.
    c.stop_node(2);
    let saved = disk_cert(&c, 2);
    assert_ne!(saved, first[1]);
    c.restart_node(2);
    c.wait_nodes_ready(&[1, 2], Duration::from_secs(60));
    wait_for(Duration::from_secs(10), "the restarted worker to present a renewed certificate", || {
        match cluster_port_cert(&c, 2) {
            Ok(wire) if wire != first[1] && wire == disk_cert(&c, 2) => Ok(()),
            Ok(_) => Err("the first one or one not on disk".to_string()),
            Err(e) => Err(e),
        }
    });
    let log = last_start_log(&c, 2);
    assert!(!log.contains("damaged gossip keys") && !log.contains("no gossip keys saved"), "{log}");
    task_ids(&c, "renew-new");
    eprintln!("renewal test took {:?}", started.elapsed());
}
