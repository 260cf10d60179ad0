//! Encryption at rest (issue 16): no secret of the store on any manager's
//! disk in the clear, and autolock: a restarted manager stays locked until
//! `shoal unlock` gives it the right key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::{busybox_image, require_docker, run_with_timeout, shoal_bin, wait_for, Cluster, ClusterSpec, Output};

const READY: Duration = Duration::from_secs(60);

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The files under `dir` whose raw bytes contain `needle`.
fn holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())).unwrap_or(false))
        .collect()
}

#[test]
fn no_manager_keeps_the_ca_key_tokens_or_store_values_in_plaintext() {
    if !require_docker() {
        return;
    }
    let mut spec = ClusterSpec::new(3, 0);
    // Snapshots early, so the grep covers snapshot files as well as the log.
    spec.daemon_args = vec!["--snapshot-interval".into(), "20".into()];
    let c = Cluster::start(spec);
    let marker = "sealed-value-3f9c1e7a";
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "at-rest",
        "--env",
        &format!("MARKER={marker}"),
        busybox_image(),
        "sleep",
        "100000",
    ]);
    // A secret's value, too (shoal secret create reads it from a file here).
    let secret_value = "secret-value-8d2b61f0";
    let file = c.dir().join("secret.txt");
    std::fs::write(&file, secret_value).unwrap();
    c.shoal_ok(&["secret", "create", "at_rest_pw", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    let worker = c.shoal_ok(&["join-token", "worker", "-q"]).trim().to_string();
    let manager = c.shoal_ok(&["join-token", "manager", "-q"]).trim().to_string();
    // Enough writes for a compaction on every manager.
    for i in 0..25 {
        c.shoal_ok(&["service", "scale", "-d", &format!("at-rest={}", i % 2)]);
    }
    wait_for(READY, "every manager to hold a snapshot", || {
        let missing: Vec<usize> = (1..=3).filter(|&i| !c.data_dir(i).join("raft/snapshot").exists()).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no snapshot on nodes {missing:?}"))
        }
    });
    // A compaction may just have emptied a log: a few more writes put
    // entries after every snapshot, so the grep reads both kinds of file.
    for i in 0..3 {
        c.shoal_ok(&["service", "scale", "-d", &format!("at-rest={}", i % 2)]);
    }
    wait_for(READY, "entries after the snapshot on every manager", || {
        let empty: Vec<usize> = (1..=3)
            .filter(|&i| std::fs::metadata(c.data_dir(i).join("raft/log")).map(|m| m.len()).unwrap_or(0) == 0)
            .collect();
        if empty.is_empty() {
            Ok(())
        } else {
            Err(format!("empty raft log on nodes {empty:?}"))
        }
    });
    for i in 1..=3 {
        let dir = c.data_dir(i);
        // The raft files are there and not empty: the grep looks at real data.
        let log = std::fs::metadata(dir.join("raft/log")).unwrap().len();
        assert!(log > 0, "node{i} has an empty raft log");
        // The secret part of each token (after the CA fingerprint).
        for token in [&worker, &manager] {
            let secret = token.rsplit('-').next().unwrap();
            assert_eq!(holding(&dir, secret), Vec::<PathBuf>::new(), "node{i}: files holding a join token");
        }
        assert_eq!(holding(&dir, marker), Vec::<PathBuf>::new(), "node{i}: files holding a service's env value");
        assert_eq!(holding(&dir, secret_value), Vec::<PathBuf>::new(), "node{i}: files holding a secret's value");
        // The CA key is PEM in the store; the only private key on disk is
        // the node's own.
        let keys: Vec<PathBuf> = holding(&dir, "PRIVATE KEY");
        assert_eq!(keys, vec![dir.join("tls/node.key")], "node{i}: files holding a private key");
    }
}

/// `shoal -H <node1> unlock` with `key` on its stdin.
fn unlock(c: &Cluster, key: &str) -> Output {
    let script = r#"printf '%s\n' "$1" | "$0" -H "$2" unlock"#;
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", script]).arg(shoal_bin()).arg(key).arg(c.api_addr(1)).env_remove("SHOAL_HOST");
    run_with_timeout(&mut cmd, Duration::from_secs(20)).unwrap()
}

#[test]
fn an_autolocked_manager_stays_locked_until_the_right_key() {
    if !require_docker() {
        return;
    }
    let mut spec = ClusterSpec::new(1, 0);
    spec.init_args = vec!["--autolock".into()];
    let mut c = Cluster::start(spec);
    c.shoal_ok(&["service", "create", "-d", "--name", "kept", busybox_image(), "sleep", "100000"]);
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    let key = log
        .split_whitespace()
        .find(|w| w.starts_with("SHKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key printed at --init:\n{log}"))
        .to_string();
    assert!(log.contains("To unlock this manager after it restarts, run `shoal unlock`"), "{log}");
    assert!(!c.data_dir(1).join("raft/kek").exists(), "autolock keeps no key-encrypting key");
    assert!(holding(&c.data_dir(1), &key).is_empty(), "the unlock key is stored nowhere");

    c.restart_node(1);
    let locked = "this manager is locked (autolock)";
    wait_for(READY, "the restarted manager to answer, locked", || {
        let out = c.shoal(&["service", "ls"]);
        if !out.success() && out.stderr.contains(locked) {
            Ok(())
        } else {
            Err(out)
        }
    });
    let out = c.shoal(&["node", "ls"]);
    assert!(
        out.stderr.contains("run `shoal unlock` and enter the unlock key printed when the cluster was created"),
        "{out}"
    );
    assert!(std::fs::read_to_string(c.log_path(1)).unwrap().contains(locked), "the log says it is locked");

    let wrong = format!("SHKEY-1-{}", "ab".repeat(32));
    let out = unlock(&c, &wrong);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("wrong unlock key") && out.stderr.contains("the manager stays locked"), "{out}");
    let out = unlock(&c, "not-a-key");
    assert!(out.stderr.contains("invalid unlock key: not a key: expected SHKEY-1- and 64 hex digits"), "{out}");
    assert!(c.shoal(&["service", "ls"]).stderr.contains(locked), "still locked after wrong keys");

    unlock(&c, &key).ok();
    c.wait_nodes_ready(&[1], READY);
    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("kept"), "the store came back whole: {ls}");
}

#[test]
fn a_damaged_key_file_stops_the_manager_with_a_clear_error() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::new(1);
    c.stop_node(1);
    let kek = c.data_dir(1).join("raft/kek");
    std::fs::write(&kek, "SHKEY-1-garbage\n").unwrap();
    let out = run_with_timeout(
        std::process::Command::new(shoal_bin()).args(["daemon", "--data-dir", c.data_dir(1).to_str().unwrap()]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(65), "EX_DATAERR: {out}");
    assert!(
        out.stderr.contains(&format!("{} is damaged: not a key: expected SHKEY-1- and 64 hex digits", kek.display())),
        "{out}"
    );
}
