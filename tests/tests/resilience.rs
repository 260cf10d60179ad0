//! Work moves and nothing is lost: drain/pause/active, rolling updates and
//! rollbacks, restart policies, global services, dead nodes and node removal.
//! Real `shoal` processes, real Docker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{busybox_image, docker, require_docker, running_tasks, task_state, wait_for, Cluster};

const CONVERGE: Duration = Duration::from_secs(60);

fn running_on(c: &Cluster, i: usize, svc: &str) -> usize {
    c.node_containers(i).iter().filter(|r| r.label("shoal.service.name") == Some(svc) && r.state == "running").count()
}

fn wait_counts(c: &Cluster, svc: &str, want: &[(usize, usize)]) {
    wait_for(CONVERGE, &format!("{svc} containers per node {want:?}"), || {
        let got: Vec<(usize, usize)> = want.iter().map(|(i, _)| (*i, running_on(c, *i, svc))).collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
}

fn tasks(c: &Cluster, svc: &str) -> Vec<Value> {
    c.service_tasks(svc).as_array().cloned().unwrap_or_default()
}

#[test]
fn drain_pause_and_active_move_work_and_restart_policies_hold() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(3);
    c.shoal_ok(&["service", "create", "-d", "--name", "web", "--replicas", "6", busybox_image(), "sleep", "100000"]);
    wait_counts(&c, "web", &[(1, 2), (2, 2), (3, 2)]);

    // Drain node3: its two tasks move to the others.
    c.shoal_ok(&["node", "update", "--availability", "drain", "node3"]);
    wait_counts(&c, "web", &[(1, 3), (2, 3), (3, 0)]);
    c.wait_running("web", 6, CONVERGE);
    let drained: Vec<Value> = tasks(&c, "web").into_iter().filter(|t| t["node_hostname"] == "node3").collect();
    assert_eq!(drained.len(), 2, "the drained tasks stay in history with their node");
    assert!(drained.iter().all(|t| t["desired_state"] == "shutdown"));
    let ls = c.shoal_ok(&["node", "ls"]);
    assert!(ls.lines().any(|l| l.contains("node3") && l.contains("Drain")), "{ls}");
    let ps = c.shoal_ok(&["service", "ps", "web"]);
    assert_eq!(ps.lines().filter(|l| l.contains("node3") && l.contains("Shutdown")).count(), 2, "{ps}");

    // Active again: nothing moves back by itself, new tasks go there.
    c.shoal_ok(&["node", "update", "--availability", "active", "node3"]);
    c.shoal_ok(&["service", "scale", "web=9"]);
    wait_counts(&c, "web", &[(1, 3), (2, 3), (3, 3)]);

    // Pause node2: it keeps its tasks and takes no new one.
    c.shoal_ok(&["node", "update", "--availability", "pause", "node2"]);
    c.shoal_ok(&["service", "scale", "web=13"]);
    c.wait_running("web", 13, CONVERGE);
    assert_eq!(running_on(&c, 2, "web"), 3);
    assert_eq!(running_on(&c, 1, "web") + running_on(&c, 3, "web"), 10);

    // Labels: constraints follow them.
    c.shoal_ok(&["node", "update", "--label-add", "zone=east", "node1"]);
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "east",
        "--constraint",
        "node.labels.zone==east",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    c.wait_running("east", 1, CONVERGE);
    assert_eq!(running_on(&c, 1, "east"), 1);
    let n1 = c.shoal_json(&["node", "inspect", "node1"]);
    assert_eq!(n1[0]["labels"]["zone"], "east");
    c.shoal_ok(&["node", "update", "--label-rm", "zone", "node1"]);
    let n1 = c.shoal_json(&["node", "inspect", "node1"]);
    assert!(n1[0]["labels"].get("zone").is_none());

    // on-failure with one attempt: the slot fails twice, then stays down.
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "flaky",
        "--restart-condition",
        "on-failure",
        "--restart-max-attempts",
        "1",
        "--restart-delay",
        "200ms",
        busybox_image(),
        "false",
    ]);
    wait_for(CONVERGE, "two failed tasks and no more", || {
        let t = tasks(&c, "flaky");
        let failed = t.iter().filter(|t| task_state(t) == "failed").count();
        if failed == 2 && t.iter().all(|t| t["desired_state"] == "shutdown") {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(tasks(&c, "flaky").len(), 2, "no third attempt");
    // none: a task that completes is not replaced.
    c.shoal_ok(&["service", "create", "-d", "--name", "once", "--restart-condition", "none", busybox_image(), "true"]);
    wait_for(CONVERGE, "the task completed", || {
        let t = tasks(&c, "once");
        if t.len() == 1 && task_state(&t[0]) == "complete" {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
}

/// Samples `service ps` until stopped; returns the fewest running tasks seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    min: Arc<Mutex<usize>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(bin: std::path::PathBuf, api: String, svc: &'static str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let min = Arc::new(Mutex::new(usize::MAX));
        let (s, m) = (stop.clone(), min.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = std::process::Command::new(&bin)
                    .args(["-H", &api, "service", "ps", svc, "--format", "json"])
                    .output()
                    .unwrap();
                if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                    let n = running_tasks(&v).len();
                    let mut g = m.lock().unwrap();
                    *g = (*g).min(n);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler { stop, min, handle: Some(handle) }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let m = *self.min.lock().unwrap();
        m
    }
}

fn active_images(c: &Cluster, svc: &str) -> BTreeSet<String> {
    tasks(c, svc)
        .iter()
        .filter(|t| t["desired_state"] == "running")
        .map(|t| format!("{} {}", t["spec"]["image"].as_str().unwrap(), t["spec"]["args"]))
        .collect()
}

#[test]
fn rolling_updates_keep_tasks_up_and_roll_back_on_failure() {
    if !require_docker() {
        return;
    }
    docker(&["tag", busybox_image(), "shoal/busybox:v2"]).ok();
    let c = Cluster::new(3);
    let api = c.api_addr(1);
    let flags = ["--replicas", "6", "--update-parallelism", "2", "--update-delay", "1s", "--update-monitor", "1s"];
    let rollback = ["--rollback-parallelism", "0", "--rollback-monitor", "1s"];
    c.create_service("web", &[&flags[..], &rollback[..]].concat(), &["sleep", "100000"]);
    let started = c.service_tasks("web");
    let first_created = started.as_array().unwrap().iter().map(|t| t["created_at"].as_u64().unwrap()).max().unwrap();

    // Stop-first, two at a time, a second apart: never more than two down.
    let sampler = Sampler::start(tests::shoal_bin(), api.clone(), "web");
    let out = c.shoal_ok(&["service", "update", "--image", "shoal/busybox:v2", "web"]);
    let fewest = sampler.finish();
    assert!(out.contains("verify: Service converged"), "{out}");
    assert!(fewest >= 4, "at most two tasks down at once, saw {fewest} running");
    assert_eq!(active_images(&c, "web"), BTreeSet::from(["shoal/busybox:v2 [\"sleep\",\"100000\"]".to_string()]));
    let mut created: Vec<u64> = tasks(&c, "web")
        .iter()
        .filter(|t| t["desired_state"] == "running")
        .map(|t| t["created_at"].as_u64().unwrap())
        .filter(|at| *at > first_created)
        .collect();
    created.sort();
    assert_eq!(created.len(), 6);
    let batches: Vec<&[u64]> = created.chunks(2).collect();
    for b in &batches {
        assert!(b[1] - b[0] < 500, "a batch starts together: {created:?}");
    }
    for w in batches.windows(2) {
        assert!(w[1][0] >= w[0][1] + 1000, "batches at least --update-delay apart: {created:?}");
    }
    let info = c.shoal_json(&["service", "inspect", "web"]);
    assert_eq!(info[0]["update_status"]["state"], "completed");

    // A manual rollback restores the previous spec exactly; docker's
    // `update --rollback` takes no other change, and `-q` keeps it quiet.
    c.shoal_fails(
        &["service", "update", "--rollback", "--image", "x:1", "web"],
        "other flags may not be combined with --rollback",
    );
    let out = c.shoal_ok(&["service", "update", "--rollback", "-q", "web"]);
    assert_eq!(out.trim(), "web", "no progress with --quiet: {out:?}");
    assert_eq!(active_images(&c, "web"), BTreeSet::from([format!("{} [\"sleep\",\"100000\"]", busybox_image())]));
    let info = c.shoal_json(&["service", "inspect", "web"]);
    assert_eq!(info[0]["update_status"]["state"], "rollback_completed");
    assert_eq!(info[0]["spec"]["task"]["image"], busybox_image());

    // Start-first never drops below six running.
    let sampler = Sampler::start(tests::shoal_bin(), api.clone(), "web");
    c.shoal_ok(&["service", "update", "--update-order", "start-first", "--image", "shoal/busybox:v2", "web"]);
    let fewest = sampler.finish();
    assert!(fewest >= 6, "start-first kept every task up, saw {fewest} running");

    // A command that exits at once, with failure action rollback: back to
    // the old spec on every task, and the CLI says so.
    let out = c.shoal_timeout(
        1,
        Duration::from_secs(120),
        &[
            "service",
            "update",
            "--update-failure-action",
            "rollback",
            "--update-order",
            "stop-first",
            "--args",
            "false",
            "web",
        ],
    );
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("service rolled back: update rolled back due to failure"), "{out}");
    wait_for(CONVERGE, "every task back on the old spec", || {
        let imgs = active_images(&c, "web");
        let running = running_tasks(&c.service_tasks("web")).len();
        if imgs == BTreeSet::from(["shoal/busybox:v2 [\"sleep\",\"100000\"]".to_string()]) && running == 6 {
            Ok(())
        } else {
            Err(format!("{imgs:?}, {running} running"))
        }
    });
    let info = c.shoal_json(&["service", "inspect", "web"]);
    assert_eq!(info[0]["update_status"]["state"], "rollback_completed");

    // --force rolls every task with an unchanged spec (how to rebalance).
    let before: BTreeSet<String> = running_tasks(&c.service_tasks("web")).iter().map(|t| t["id"].to_string()).collect();
    c.shoal_ok(&["service", "update", "--force", "--update-parallelism", "0", "web"]);
    let after: BTreeSet<String> = running_tasks(&c.service_tasks("web")).iter().map(|t| t["id"].to_string()).collect();
    assert_eq!(after.len(), 6);
    assert!(before.is_disjoint(&after), "every task was replaced");
}

#[test]
fn a_dead_worker_loses_its_tasks_to_the_others_and_cleans_up_when_back() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::new(3);
    c.shoal_ok(&["service", "create", "-d", "--name", "web", "--replicas", "6", busybox_image(), "sleep", "100000"]);
    wait_counts(&c, "web", &[(1, 2), (2, 2), (3, 2)]);
    let node3 = c.node_id(3);

    let killed = Instant::now();
    c.kill_node(3);
    wait_for(CONVERGE, "six tasks running on node1 and node2", || {
        let t = c.service_tasks("web");
        let running = running_tasks(&t);
        let off3 = running.iter().all(|t| t["node_id"] != Value::String(node3.clone()));
        if running.len() == 6 && off3 {
            Ok(())
        } else {
            Err(format!("{} running", running.len()))
        }
    });
    eprintln!("replacements running {:?} after kill -9", killed.elapsed());
    c.wait_node_status(3, "down", CONVERGE);
    let orphaned = tasks(&c, "web").into_iter().filter(|t| task_state(t) == "orphaned").count();
    assert_eq!(orphaned, 2);

    // Back: its stale containers are stopped and removed; exactly one
    // running task per slot.
    c.restart_node(3);
    c.wait_nodes_ready(&[1, 2, 3], CONVERGE);
    wait_for(CONVERGE, "node3's stale containers gone from Docker", || {
        let left = c.node_containers(3).len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} containers"))
        }
    });
    let running = running_tasks(&c.service_tasks("web"));
    let slots: BTreeSet<u64> = running.iter().map(|t| t["slot"].as_u64().unwrap()).collect();
    assert_eq!(slots, (1..=6).collect::<BTreeSet<u64>>());
    let live: usize = (1..=3).map(|i| running_on(&c, i, "web")).sum();
    assert_eq!(live, 6, "no duplicate container anywhere");
}

#[test]
fn global_services_follow_nodes_joining_draining_and_leaving() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::new(2);
    c.shoal_ok(&["service", "create", "-d", "--name", "mon", "--mode", "global", busybox_image(), "sleep", "100000"]);
    c.wait_running("mon", 2, CONVERGE);
    let ps = c.shoal_ok(&["service", "ps", "mon"]);
    assert!(ps.contains(&format!("mon.{}", c.node_id(2))), "{ps}");
    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.lines().any(|l| l.contains("mon") && l.contains("global") && l.contains("2/2")), "{ls}");

    let n3 = c.add_worker();
    c.wait_running("mon", 3, CONVERGE);
    assert_eq!(running_on(&c, n3, "mon"), 1);

    c.shoal_ok(&["node", "update", "--availability", "drain", &c.hostname(n3)]);
    c.wait_running("mon", 2, CONVERGE);
    wait_counts(&c, "mon", &[(n3, 0)]);

    // node rm: refused for a Ready node without --force; a Down node goes.
    let out = c.shoal(&["node", "rm", &c.hostname(n3)]);
    assert!(!out.success() && out.stderr.contains("is not down"), "{out}");
    c.kill_node(n3);
    c.wait_node_status(n3, "down", CONVERGE);
    c.shoal_ok(&["node", "rm", &c.hostname(n3)]);
    let nodes = c.shoal_json(&["node", "ls", "--format", "json"]);
    assert_eq!(nodes.as_array().unwrap().len(), 2);
}
