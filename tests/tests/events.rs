//! `shoal events`: service, task and node changes, in order, live and
//! replayed with `--since`. Real `shoal` processes, real Docker.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;
use tests::{busybox_image, require_docker, stdout_lines, wait_for, Cluster};

const CONVERGE: Duration = Duration::from_secs(60);

/// The JSON lines a spawned `shoal events --format json` prints.
fn reader(mut child: Child) -> (Child, Receiver<Value>) {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    (child, rx)
}

/// Collects events until `want` holds over everything seen so far.
fn until(rx: &Receiver<Value>, seen: &mut Vec<Value>, what: &str, want: impl Fn(&[Value]) -> bool) {
    wait_for(CONVERGE, what, || {
        while let Ok(v) = rx.try_recv() {
            seen.push(v);
        }
        if want(seen) {
            Ok(())
        } else {
            let tail: Vec<String> =
                seen.iter().rev().take(8).map(|e| format!("{} {} {}", e["type"], e["action"], e["name"])).collect();
            Err(format!("{} events, last: {tail:?}", seen.len()))
        }
    });
}

fn has(seen: &[Value], kind: &str, action: &str, name: &str) -> Option<usize> {
    seen.iter().position(|e| e["type"] == kind && e["action"] == action && e["name"] == name)
}

#[test]
fn events_show_services_tasks_and_nodes_in_order() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::new(2);
    let (mut child, rx) = reader(c.shoal_spawn(&["events", "--format", "json"]));
    let mut seen = Vec::new();

    c.shoal_ok(&["service", "create", "-d", "--name", "web", "--replicas", "2", busybox_image(), "sleep", "100000"]);
    until(&rx, &mut seen, "service created, then both tasks running with their node", |s| {
        let created = has(s, "service", "create", "web");
        let running: Vec<usize> = ["web.1", "web.2"].iter().filter_map(|n| has(s, "task", "running", n)).collect();
        matches!(created, Some(c) if running.len() == 2 && running.iter().all(|r| *r > c))
    });
    let running = seen.iter().find(|e| e["type"] == "task" && e["action"] == "running").unwrap();
    assert!(running["node"].as_str().unwrap().starts_with("node"), "{running}");

    c.shoal_ok(&["node", "update", "--availability", "drain", "node2"]);
    until(&rx, &mut seen, "node2's availability change", |s| {
        s.iter().any(|e| {
            e["type"] == "node"
                && e["action"] == "update"
                && e["name"] == "node2"
                && e["message"] == "availability=drain"
        })
    });
    c.kill_node(2);
    until(&rx, &mut seen, "node2 down", |s| has(s, "node", "down", "node2").is_some());

    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "numbered in order, none missing: {seqs:?}");
    let _ = child.kill();
    let _ = child.wait();

    // Replayed: what happened since a minute ago, services only, as lines.
    let mut text = c.shoal_spawn(&["events", "--since", "1m", "--filter", "type=service"]);
    let lines = stdout_lines(&mut text);
    let mut replay: Vec<String> = Vec::new();
    wait_for(CONVERGE, "the service's creation replayed", || {
        while let Ok(l) = lines.try_recv() {
            replay.push(l);
        }
        if replay.iter().any(|l| l.contains(" service create ") && l.ends_with("(name=web)")) {
            Ok(())
        } else {
            Err(format!("{replay:?}"))
        }
    });
    assert!(replay.iter().all(|l| l.contains(" service ")), "{replay:?}");
    let _ = text.kill();
    let _ = text.wait();
    let bad = c.shoal(&["events", "--filter", "type=container"]);
    assert!(!bad.success() && bad.stderr.contains("invalid filter"), "{bad}");
}
