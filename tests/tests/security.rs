//! Security of the cluster port (issue 5): mutual TLS rooted at the cluster
//! CA, join tokens that pin that CA, and token rotation, against real
//! `shoal daemon` processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tests::{busybox_image, require_docker, run_with_timeout, shoal_bin, wait_for, Cluster, Output};

const CONVERGE: Duration = Duration::from_secs(60);

/// `shoal daemon --join` node1 with `token` from a fresh data dir at
/// 127.0.S.`last`; returns what it printed and whether it left a node.json.
fn join_with(c: &Cluster, token: &str, last: u8) -> (Output, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        std::process::Command::new(shoal_bin()).args([
            "daemon",
            "--join",
            &format!("{}:4242", c.addr(1)),
            "--token",
            token,
            "--advertise-addr",
            &format!("127.0.{}.{last}", c.subnet()),
            "--hostname",
            "intruder",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!out.success(), "the join should have been refused: {out}");
    (out, dir.path().join("node.json").exists())
}

fn node1_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.log_path(1)).unwrap()
}

/// Waits until node1's log has `needle`; fails with the log's last lines.
fn wait_node1_logs(c: &Cluster, what: &str, needle: &str) {
    wait_for(Duration::from_secs(10), what, || {
        let log = node1_log(c);
        if log.contains(needle) {
            Ok(())
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        }
    });
}

/// `SHTKN-1-<fingerprint>-<secret>` split in its two variable parts.
fn parts(token: &str) -> (&str, &str) {
    let rest = token.strip_prefix("SHTKN-1-").unwrap_or_else(|| panic!("not a token: {token}"));
    rest.split_once('-').unwrap()
}

#[test]
fn wrong_tokens_a_wrong_ca_and_plaintext_are_refused() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let token = c.shoal_ok(&["join-token", "worker", "-q"]).trim().to_string();
    let (fingerprint, secret) = parts(&token);
    assert_eq!((fingerprint.len(), secret.len()), (50, 25), "{token}");

    // A token of the wrong shape: refused by the CLI before it dials.
    let (out, joined) = join_with(&c, "SHTKN-1-wrong-wrong", 30);
    assert!(out.stderr.contains("invalid join token: expected SHTKN-1-<50 base-36 characters of CA digest>"), "{out}");
    assert!(!joined);

    // The right CA, a wrong secret: the manager refuses, and logs it.
    let wrong_secret = format!("SHTKN-1-{fingerprint}-{}", "0".repeat(25));
    let (out, joined) = join_with(&c, &wrong_secret, 31);
    assert!(out.stderr.contains("join refused") && out.stderr.contains("invalid join token"), "{out}");
    assert!(!joined, "a refused node keeps no identity");
    assert!(node1_log(&c).contains("join refused: invalid join token"), "the manager logs the refusal");

    // Another CA's fingerprint (one digit changed): the joiner refuses the
    // manager before sending its token; the manager sees the handshake fail.
    let last = fingerprint.chars().last().unwrap();
    let other = format!("{}{}", &fingerprint[..49], if last == '0' { '1' } else { '0' });
    let (out, joined) = join_with(&c, &format!("SHTKN-1-{other}-{secret}"), 32);
    assert!(out.stderr.contains("the manager's CA does not match the join token"), "{out}");
    assert!(!joined);
    wait_node1_logs(&c, "node1 to log the failed handshake", "refused a connection: TLS handshake failed");

    // A plaintext hello (the frame the cluster port took before TLS: a
    // length prefix and MessagePack `{"Hello": {"Session": {"node_id": "x"}}}`)
    // gets no answer: the connection is closed (reset, as the frame was
    // never read), and node1 logs it.
    let body = b"\x81\xa5Hello\x81\xa7Session\x81\xa7node_id\xa1x";
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let mut s = TcpStream::connect(format!("{}:4242", c.addr(1))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&frame).unwrap();
    let mut answer = Vec::new();
    let read = s.read_to_end(&mut answer);
    let closed = match &read {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed && answer.is_empty(), "closed without an answer: {read:?} {answer:?}");
    wait_node1_logs(&c, "node1 to log the plaintext connection", "refused a connection without TLS");

    // Nothing was admitted and the cluster is unharmed.
    let ls = c.shoal_ok(&["node", "ls"]);
    assert!(!ls.contains("intruder"), "{ls}");
    c.assert_unharmed(&[1, 2], CONVERGE);
}

#[test]
fn a_rotated_token_admits_no_new_node_and_joined_nodes_keep_working() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::new(2);
    // A task on each node; node2's container must live through it all.
    c.shoal_ok(&["service", "create", "--name", "steady", "--replicas", "2", busybox_image(), "sleep", "100000"]);
    c.wait_running("steady", 2, CONVERGE);
    let on_node2 = |c: &Cluster| -> Vec<String> {
        c.node_containers(2)
            .into_iter()
            .filter(|r| r.label("shoal.service.name") == Some("steady") && r.state == "running")
            .map(|r| r.id)
            .collect()
    };
    let before = on_node2(&c);
    assert_eq!(before.len(), 1, "one steady task on node2");

    let old = c.shoal_ok(&["join-token", "worker", "-q"]).trim().to_string();
    let manager_token = c.shoal_ok(&["join-token", "manager", "-q"]).trim().to_string();
    let out = c.shoal_ok(&["join-token", "--rotate", "worker"]);
    assert!(out.starts_with("Successfully rotated worker join token.\n\nTo add a worker to this cluster"), "{out}");
    let new = c.shoal_ok(&["join-token", "worker", "-q"]).trim().to_string();
    assert_ne!(new, old);
    assert!(out.contains(&format!("--token {new} ")), "{out}");
    assert_eq!(parts(&new).0, parts(&old).0, "same CA, new secret");
    assert_eq!(c.shoal_ok(&["join-token", "manager", "-q"]).trim(), manager_token, "the manager token is untouched");

    // The old token admits no one.
    let (out, joined) = join_with(&c, &old, 40);
    assert!(out.stderr.contains("invalid join token"), "{out}");
    assert!(!joined);

    // The new one does (the harness joins with `join-token worker -q`).
    let n3 = c.add_worker();
    assert_eq!(n3, 3);

    // node2 kept its session and its task all along.
    c.wait_nodes_ready(&[1, 2, 3], CONVERGE);
    assert_eq!(on_node2(&c), before, "node2's task kept running in the same container");
    c.wait_running("steady", 2, CONVERGE);

    // A restart uses the identity saved at join: node2 is back, adopts its
    // container, and a new service reaches every node.
    c.restart_node(2);
    c.wait_nodes_ready(&[1, 2, 3], CONVERGE);
    assert_eq!(on_node2(&c), before, "adopted after the restart");
    c.shoal_ok(&["service", "create", "--name", "everywhere", "--mode", "global", busybox_image(), "sleep", "100000"]);
    c.wait_running("everywhere", 3, CONVERGE);
}
