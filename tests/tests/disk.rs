//! A full disk is an alarm, not an outage: a manager whose data dir (a small
//! tmpfs here) fills up refuses writes with a clear error, keeps answering
//! reads, shows the alarm, and takes writes again by itself once space is
//! back; `--storage-quota` compacts first and raises the same alarm before
//! the disk fills. Real `shoal` processes; the tmpfs needs root.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tests::{busybox_image, require_docker, wait_for, Cluster, ClusterSpec};

const DEADLINE: Duration = Duration::from_secs(15);

fn refusal(data_dir: &Path) -> String {
    format!("no space left on the manager's disk ({}): writes are refused until space is freed", data_dir.display())
}

/// A tmpfs mounted for the test, unmounted when dropped (even when the test
/// fails). Declare it before the cluster, so the nodes stop first.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::Builder::new().prefix("shoal-disk-").tempdir().expect("a temp dir");
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (the disk tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir, _parent: parent }
    }

    /// A file that takes all the space left; remove it to free the space.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = File::create(&path).expect("create the filler");
        for chunk in [64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn metrics(c: &Cluster, i: usize) -> String {
    let mut s = TcpStream::connect(c.api_addr(i)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of an unlabelled gauge in node i's `/metrics`.
fn gauge(c: &Cluster, i: usize, name: &str) -> Option<i64> {
    let text = metrics(c, i);
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `node ls` through node `via`: node `i`'s MANAGER STATUS column.
fn manager_status(c: &Cluster, via: usize, i: usize) -> String {
    let out = c.shoal_on(via, &["node", "ls"]).ok();
    let host = c.hostname(i);
    let line = out.stdout.lines().find(|l| l.split_whitespace().any(|w| w == host));
    let line = line.unwrap_or_else(|| panic!("{host} not in node ls: {}", out.stdout));
    // Columns: ID [*] HOSTNAME STATUS AVAILABILITY MANAGER STATUS…
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == host).unwrap();
    words[at + 3..].join(" ")
}

fn create(c: &Cluster, via: usize, name: &str) -> tests::Output {
    c.shoal_on(via, &["service", "create", "-d", "--name", name, "--replicas", "0", busybox_image(), "sleep", "1"])
}

fn service_names(c: &Cluster, via: usize) -> Vec<String> {
    let out = c.shoal_on(via, &["service", "ls", "--format", "json"]).ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("service ls json: {e}: {out}"));
    let mut names: Vec<String> =
        v.as_array().unwrap().iter().map(|s| s["spec"]["name"].as_str().unwrap_or_default().to_string()).collect();
    names.sort();
    names
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    if !require_docker() {
        return;
    }
    let disk = Tmpfs::mount("24m");
    let data_dir = disk.dir.join("node1");
    let mut spec = ClusterSpec::new(1, 0);
    spec.data_dirs.insert(1, data_dir.clone());
    let mut c = Cluster::start(spec);
    assert!(create(&c, 1, "before").success());
    let mut events = c.shoal_spawn(&["events", "--format", "json", "--filter", "type=node"]);
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });

    let filler = disk.fill();
    let out = create(&c, 1, "during");
    assert!(!out.success(), "a write on a full disk should fail: {out}");
    assert!(out.stderr.contains(&refusal(&data_dir)), "{out}");
    // Reads answer, the process stays up, the alarm shows.
    assert_eq!(service_names(&c, 1), ["before"]);
    assert!(c.is_running(1), "the manager stopped");
    wait_for(DEADLINE, "the alarm in node ls", || {
        // No leader while it cannot write, so not "Leader".
        let s = manager_status(&c, 1, 1);
        if s == "Reachable (disk full)" {
            Ok(())
        } else {
            Err(s)
        }
    });
    let inspect = c.shoal_ok(&["node", "inspect", "--pretty", "node1"]);
    assert!(inspect.contains("Disk alarm:") && inspect.contains("No space left on device"), "{inspect}");
    assert_eq!(gauge(&c, 1, "shoal_disk_alarm"), Some(1));
    c.shoal_fails(&["service", "create", "-d", "--name", "again", busybox_image()], &refusal(&data_dir));

    // Space back: writes resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_for(DEADLINE, "a write accepted again", || {
        let out = create(&c, 1, "after");
        if out.success() {
            Ok(())
        } else {
            Err(out)
        }
    });
    assert_eq!(gauge(&c, 1, "shoal_disk_alarm"), Some(0));
    wait_for(DEADLINE, "the alarm gone from node ls", || {
        let s = manager_status(&c, 1, 1);
        if s == "Leader" {
            Ok(())
        } else {
            Err(s)
        }
    });
    let mut seen = Vec::new();
    wait_for(DEADLINE, "disk_alarm then disk_alarm_cleared events", || {
        seen.extend(
            rx.try_iter().filter(|e| e["name"] == "node1").map(|e| e["action"].as_str().unwrap_or("").to_string()),
        );
        let raised = seen.iter().position(|a| a == "disk_alarm");
        let cleared = seen.iter().position(|a| a == "disk_alarm_cleared");
        if matches!((raised, cleared), (Some(r), Some(c)) if r < c) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    let _ = events.kill();
    let _ = events.wait();

    // Every acknowledged write is there after a restart; the refused ones are not.
    c.restart_node(1);
    wait_for(DEADLINE, "the services after a restart", || {
        let out = c.shoal_on(1, &["service", "ls", "--format", "json"]);
        if out.success() {
            Ok(())
        } else {
            Err(out)
        }
    });
    // A change refused outright is not there; one that had reached the log
    // when the disk filled (and said so) may be.
    let in_flight = out.stderr.contains("may still be applied");
    let names = service_names(&c, 1);
    let allowed: &[&[&str]] =
        if in_flight { &[&["after", "before"], &["after", "before", "during"]] } else { &[&["after", "before"]] };
    assert!(
        allowed.contains(&names.iter().map(String::as_str).collect::<Vec<_>>().as_slice()),
        "{names:?} after {out}"
    );
}

#[test]
fn with_three_managers_a_full_leader_disk_leaves_writes_to_the_others() {
    if !require_docker() {
        return;
    }
    let disk = Tmpfs::mount("24m");
    let data_dir = disk.dir.join("node1");
    let mut spec = ClusterSpec::new(3, 0);
    spec.data_dirs.insert(1, data_dir.clone());
    let c = Cluster::start(spec);
    assert!(create(&c, 1, "before").success());
    assert_eq!(c.leader_seen_from(1), Ok(1), "node1 bootstrapped the cluster and leads it");

    // node1 (the leader) cannot write: the other two elect a leader and go on.
    let filler = disk.fill();
    let out = create(&c, 2, "via-node2");
    assert!(out.success(), "a write through node2: {out}");
    assert!(create(&c, 3, "via-node3").success());
    c.shoal_fails(&["service", "create", "-d", "--name", "x", busybox_image()], &refusal(&data_dir));
    wait_for(DEADLINE, "node1's alarm in node2's node ls", || {
        let s = manager_status(&c, 2, 1);
        if s == "Reachable (disk full)" {
            Ok(())
        } else {
            Err(s)
        }
    });
    // node1 still answers reads, from what it applied before its disk filled.
    assert!(service_names(&c, 1).contains(&"before".to_string()));

    // Space back: node1 catches up and takes writes again.
    std::fs::remove_file(&filler).unwrap();
    wait_for(DEADLINE, "node1 caught up", || {
        let names = service_names(&c, 1);
        if names == ["before", "via-node2", "via-node3"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    });
    wait_for(DEADLINE, "a write through node1", || {
        let out = create(&c, 1, "via-node1");
        if out.success() {
            Ok(())
        } else {
            Err(out)
        }
    });
    wait_for(DEADLINE, "node1's alarm cleared in node2's node ls", || {
        let s = manager_status(&c, 2, 1);
        if s == "Reachable" {
            Ok(())
        } else {
            Err(s)
        }
    });
    assert_eq!(service_names(&c, 3), ["before", "via-node1", "via-node2", "via-node3"]);
}

#[test]
fn a_storage_quota_compacts_first_then_refuses_writes_before_the_disk_fills() {
    if !require_docker() {
        return;
    }
    let mut spec = ClusterSpec::new(1, 0);
    spec.daemon_args = vec!["--storage-quota".into(), "1MiB".into()];
    let c = Cluster::start(spec);
    let label = format!("big={}", "x".repeat(24 << 10));
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 200, "the quota was never reached");
        let name = format!("s{accepted}");
        let out =
            c.shoal(&["service", "create", "-d", "--name", &name, "--replicas", "0", "-l", &label, busybox_image()]);
        if !out.success() {
            break out;
        }
        accepted += 1;
    };
    let data_dir = c.data_dir(1);
    assert!(refused.stderr.contains(&refusal(&data_dir)), "{refused}");
    assert!(accepted >= 10, "refused after only {accepted} writes: {refused}");
    // The log was compacted before the quota was reached, and the files stay under it.
    assert!(gauge(&c, 1, "shoal_raft_compactions").is_some_and(|n| n >= 1), "{}", metrics(&c, 1));
    assert!(gauge(&c, 1, "shoal_raft_storage_bytes").is_some_and(|b| b <= 1 << 20), "{}", metrics(&c, 1));
    assert_eq!(gauge(&c, 1, "shoal_disk_alarm"), Some(1));
    wait_for(DEADLINE, "the quota alarm in node inspect", || {
        let inspect = c.shoal_ok(&["node", "inspect", "--pretty", "node1"]);
        if inspect.contains("Disk alarm:") && inspect.contains("the storage quota of 1048576 bytes would be exceeded") {
            Ok(())
        } else {
            Err(inspect)
        }
    });
    assert_eq!(service_names(&c, 1).len(), accepted, "reads answer");
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    assert!(!log.contains("No space left on device"), "ENOSPC was reached");
}
