//! The API behind TLS with client certificates (issue 16), against a real
//! `shoal daemon --api-tls`: without a client certificate the handshake is
//! refused, a readonly certificate reads but gets 403 on a write, and the
//! stock docker CLI with `--tlsverify` and an issued bundle lists services.
//!
//! The harness's own CLI calls go over TLS with the first admin's bundle
//! (`DATA_DIR/api-client`), through `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`,
//! which this file sets for its one test process.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tests::{busybox_image, require_docker, run_with_timeout, Cluster, ClusterSpec};

/// One HTTP/1.0 request over TLS with `config`: the status and body, or
/// what failed (the handshake, the read).
fn https(addr: &str, config: Arc<rustls::ClientConfig>, method: &str, path: &str) -> Result<(u16, String), String> {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let body = if method == "GET" { "" } else { "{}" };
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn bundle_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    Arc::new(worker::node::api_tls::client_config(&read("ca.pem"), &read("cert.pem"), &read("key.pem")).unwrap())
}

#[test]
fn the_api_over_tls_takes_only_issued_certificates_and_readonly_ones_only_read() {
    if !require_docker() {
        return;
    }
    let dirs = tempfile::tempdir().unwrap();
    let data = dirs.path().join("node1");
    let admin = data.join("api-client");
    std::env::set_var("DOCKER_TLS_VERIFY", "1");
    std::env::set_var("DOCKER_CERT_PATH", &admin);
    let mut spec = ClusterSpec::new(1, 0);
    spec.daemon_args = vec!["--api-tls".into()];
    spec.data_dirs = BTreeMap::from([(1, data.clone())]);
    let c = Cluster::start(spec);
    let addr = c.api_addr(1);

    // Plain HTTP gets no answer; TLS without a client certificate is refused.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /v1/services HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/"), "plain HTTP was answered: {answer:?}");
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read_to_string(admin.join("ca.pem")).unwrap();
    roots.add(worker::node::tls::cert_from_pem(&ca).unwrap()).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let refused = https(&addr, Arc::new(anonymous), "GET", "/v1/services");
    assert!(refused.is_err(), "answered without a client certificate: {refused:?}");

    // The admin issues a readonly bundle; it reads, and every write is 403.
    let ro = dirs.path().join("bob");
    let out = c.shoal_ok(&["cert", "issue", "--name", "bob", "--role", "readonly", "--output", ro.to_str().unwrap()]);
    assert_eq!(out.trim(), format!("Issued a readonly certificate for bob in {}", ro.display()));
    let ro_config = bundle_config(&ro);
    assert_eq!(https(&addr, ro_config.clone(), "GET", "/v1/services"), Ok((200, "[]".to_string())));
    let (status, body) = https(&addr, ro_config.clone(), "POST", "/v1/services").unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, r#"{"message":"the certificate of \"bob\" is readonly: POST /v1/services is not allowed"}"#);
    assert_eq!(https(&addr, ro_config.clone(), "POST", "/v1.41/services/create").unwrap().0, 403);
    assert_eq!(https(&addr, ro_config.clone(), "GET", "/v1/join-tokens").unwrap().0, 403);
    // The admin creates a service (the harness's CLI, over TLS); the stock
    // docker CLI with an issued bundle lists it.
    c.shoal_ok(&["service", "create", "--detach=true", "--name", "tlsweb", busybox_image(), "sleep", "600"]);
    let ro_flags = ["--tlscacert", "ca.pem", "--tlscert", "cert.pem", "--tlskey", "key.pem"].map(|f| {
        if f.starts_with("--") {
            f.to_string()
        } else {
            ro.join(f).to_str().unwrap().to_string()
        }
    });
    let mut rm = vec!["-H", &addr];
    rm.extend(ro_flags.iter().map(String::as_str));
    rm.extend(["service", "rm", "tlsweb"]);
    let out =
        run_with_timeout(std::process::Command::new(tests::shoal_bin()).args(&rm), Duration::from_secs(30)).unwrap();
    assert!(!out.success(), "a readonly certificate removed a service");
    assert!(out.stderr.contains("is readonly: DELETE /v1/services/tlsweb is not allowed"), "{}", out.stderr);

    let alice = dirs.path().join("alice");
    c.shoal_ok(&["cert", "issue", "--name", "alice", "--output", alice.to_str().unwrap()]);
    let docker_config = dirs.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let clients = tests::docker_clients();
    assert!(!clients.is_empty(), "no docker CLI on this machine");
    for bin in clients {
        let file = |f: &str| alice.join(f).to_str().unwrap().to_string();
        let mut cmd = std::process::Command::new(&bin);
        cmd.env("DOCKER_CONFIG", &docker_config).env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT");
        cmd.env_remove("DOCKER_TLS_VERIFY").env_remove("DOCKER_CERT_PATH");
        cmd.args(["--tlsverify", "--tlscacert", &file("ca.pem"), "--tlscert", &file("cert.pem")]);
        cmd.args(["--tlskey", &file("key.pem"), "-H", &format!("tcp://{addr}"), "service", "ls"]);
        cmd.args(["--format", "{{.Name}} {{.Mode}}"]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(60)).unwrap();
        assert!(out.success(), "{}: {}", bin.display(), out.stderr);
        assert_eq!(out.stdout.trim(), "tlsweb replicated", "{}", bin.display());
    }
    // Its container goes with it: the engine is shared with the next tests.
    c.shoal_ok(&["service", "rm", "tlsweb"]);
    tests::wait_for(Duration::from_secs(60), "tlsweb's container gone", || {
        // The local engine, without this test's TLS settings for shoal.
        let out = std::process::Command::new("docker")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .args(["ps", "-aq", "--filter", "label=shoal.service.name=tlsweb"])
            .output()
            .expect("docker ps");
        let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && left.is_empty()).then_some(()).ok_or(left)
    });
}
