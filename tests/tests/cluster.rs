//! The first Swarm exercise, end to end: a 3-node cluster of real `shoal`
//! processes running real containers, and what a user sees through the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use tests::{
    busybox_image, containers_with_label, docker_kill, require_docker, running_tasks, stdout_lines, wait_for, Cluster,
};

const CONVERGE: Duration = Duration::from_secs(60);

/// Running containers of a service per node hostname.
fn per_node(c: &Cluster, svc: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in 1..=c.len() {
        let n = c
            .node_containers(i)
            .iter()
            .filter(|r| r.label("shoal.service.name") == Some(svc) && r.state == "running")
            .count();
        m.insert(c.hostname(i), n);
    }
    m
}

fn wait_spread(c: &Cluster, svc: &str, each: usize) {
    wait_for(CONVERGE, &format!("{each} running containers of {svc} on each node"), || {
        let m = per_node(c, svc);
        if m.values().all(|n| *n == each) {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    });
}

fn all_containers(svc: &str) -> Vec<tests::ContainerRow> {
    containers_with_label("shoal.service.name", svc)
}

fn running_container_ids(c: &Cluster, i: usize) -> BTreeSet<String> {
    c.node_containers(i).into_iter().filter(|r| r.state == "running").map(|r| r.id).collect()
}

#[test]
fn a_service_that_pings_its_tasks_logs_scaling_failure_restarts_and_removal() {
    if !require_docker() {
        return;
    }
    // Snapshots every 20 entries, so that the manager restart below resumes
    // from a snapshot plus the log after it.
    let mut spec = tests::ClusterSpec::new(1, 2);
    spec.daemon_args = vec!["--snapshot-interval".into(), "20".into()];
    let mut c = Cluster::start(spec);

    // 1. Three Ready nodes with the right roles and hostnames.
    let nodes = c.shoal_json(&["node", "ls", "--format", "json"]);
    let mut seen: Vec<(String, String, String, String)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap().to_string(),
                n["role"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
                n["manager_status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("node1".into(), "manager".into(), "ready".into(), "Leader".into()),
            ("node2".into(), "worker".into(), "ready".into(), "".into()),
            ("node3".into(), "worker".into(), "ready".into(), "".into()),
        ]
    );
    let table = c.shoal_ok(&["node", "ls"]);
    let header = table.lines().next().unwrap();
    for col in ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"] {
        assert!(header.contains(col), "{table}");
    }
    let me = table.lines().find(|l| l.contains("node1")).unwrap();
    assert!(me.contains(&format!("{} *", c.node_id(1))), "the answering node is starred: {table}");
    assert!(me.contains("Ready") && me.contains("Active") && me.contains("Leader"), "{table}");

    // 2. Six pings converge, two per node; the CLI follows until converged.
    let out = c.shoal_ok(&[
        "service",
        "create",
        "--name",
        "pingpong",
        "--replicas",
        "6",
        busybox_image(),
        "ping",
        "127.0.0.1",
    ]);
    assert!(out.contains("overall progress: 6 out of 6 tasks"), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    wait_spread(&c, "pingpong", 2);
    let ps = c.shoal_ok(&["service", "ps", "pingpong"]);
    assert_eq!(ps.lines().filter(|l| l.contains(" Running ")).count(), 6, "{ps}");
    for h in ["node1", "node2", "node3"] {
        assert_eq!(ps.lines().filter(|l| l.contains(h)).count(), 2, "{ps}");
    }
    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.lines().any(|l| l.contains("pingpong") && l.contains("replicated") && l.contains("6/6")), "{ls}");

    // 3. Logs of all six tasks, prefixed name.slot.task@node; --follow streams.
    let logs = wait_for(Duration::from_secs(20), "two log lines of each task", || {
        let out = c.shoal(&["service", "logs", "pingpong", "--tail", "2"]);
        let slots: BTreeMap<String, usize> = out.stdout.lines().fold(BTreeMap::new(), |mut m, l| {
            if let Some((prefix, _)) = l.split_once(" | ") {
                *m.entry(prefix.trim().to_string()).or_default() += 1;
            }
            m
        });
        if slots.len() == 6 && slots.values().all(|n| *n == 2) {
            Ok(out.stdout)
        } else {
            Err(out.to_string())
        }
    });
    for l in logs.lines() {
        let (prefix, text) = l.split_once(" | ").unwrap();
        let prefix = prefix.trim_end();
        assert!(prefix.starts_with("pingpong."), "{l}");
        assert!(prefix.contains("@node"), "{l}");
        assert!(text.contains("bytes from 127.0.0.1") || text.starts_with("PING"), "{l}");
    }
    let mut follow = c.shoal_spawn(&["service", "logs", "-f", "--tail", "0", "pingpong"]);
    let rx = stdout_lines(&mut follow);
    let mut streamed = BTreeSet::new();
    wait_for(Duration::from_secs(20), "--follow streams new lines from every task", || {
        while let Ok(l) = rx.try_recv() {
            if let Some((p, _)) = l.split_once(" | ") {
                streamed.insert(p.trim().to_string());
            }
        }
        if streamed.len() == 6 {
            Ok(())
        } else {
            Err(format!("{streamed:?}"))
        }
    });
    let _ = follow.kill();
    let _ = follow.wait();

    // 4. Scale to 9 (3 per node), then to 3 (1 per node); removed containers are gone.
    let out = c.shoal_ok(&["service", "scale", "pingpong=9"]);
    assert!(out.contains("pingpong scaled to 9"), "{out}");
    wait_spread(&c, "pingpong", 3);
    c.shoal_ok(&["service", "scale", "pingpong=3"]);
    wait_spread(&c, "pingpong", 1);
    wait_for(CONVERGE, "only 3 pingpong containers left in Docker", || {
        let all = all_containers("pingpong");
        if all.len() == 3 {
            Ok(())
        } else {
            Err(format!("{} containers", all.len()))
        }
    });

    // 5. A container killed behind shoal's back is replaced in its slot.
    let victim = c.node_containers(2).into_iter().find(|r| r.state == "running").unwrap();
    let slot = victim.label("shoal.task.slot").unwrap().to_string();
    let dead_task = victim.label("shoal.task.id").unwrap().to_string();
    docker_kill(&victim.id);
    let tasks = wait_for(CONVERGE, "a replacement in the killed task's slot", || {
        let tasks = c.service_tasks("pingpong");
        let in_slot: Vec<Value> = tasks
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["slot"].as_u64() == slot.parse::<u64>().ok())
            .cloned()
            .collect();
        let replaced =
            in_slot.iter().any(|t| t["id"] != Value::String(dead_task.clone()) && tests::task_state(t) == "running");
        if replaced && running_tasks(&tasks).len() == 3 {
            Ok(tasks)
        } else {
            Err(format!("{in_slot:?}"))
        }
    });
    let dead = tasks.as_array().unwrap().iter().find(|t| t["id"] == Value::String(dead_task.clone())).unwrap();
    assert_eq!(tests::task_state(dead), "failed");
    assert_eq!(dead["desired_state"], "shutdown");
    assert!(dead["status"]["err"].as_str().unwrap().contains("137"), "{dead}");
    let ps = c.shoal_ok(&["service", "ps", "pingpong"]);
    assert!(ps.contains(&format!(" \\_ pingpong.{slot}")), "{ps}");
    assert!(ps.contains("Failed") && ps.contains("\"task: non-zero exit (137)\""), "{ps}");
    let ps = c.shoal_ok(&["service", "ps", "--filter", "desired-state=running", "-q", "pingpong"]);
    assert_eq!(ps.lines().count(), 3, "{ps}");

    // 6. Restart the manager: everything is still there, nothing duplicated or lost.
    let before: Vec<BTreeSet<String>> = (1..=3).map(|i| running_container_ids(&c, i)).collect();
    c.stop_node(1);
    c.restart_node(1);
    c.wait_nodes_ready(&[1, 2, 3], CONVERGE);
    c.wait_running("pingpong", 3, CONVERGE);
    let after: Vec<BTreeSet<String>> = (1..=3).map(|i| running_container_ids(&c, i)).collect();
    assert_eq!(before, after, "a manager restart touches no container");
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    let reopened = log.lines().rfind(|l| l.contains("raft storage opened")).unwrap();
    assert!(!reopened.contains("snapshot_index=0 "), "the restart resumed from a snapshot: {reopened}");
    // Restart a worker: it adopts its running containers (same IDs).
    c.stop_node(2);
    c.restart_node(2);
    c.wait_nodes_ready(&[1, 2, 3], CONVERGE);
    c.wait_running("pingpong", 3, CONVERGE);
    assert_eq!(running_container_ids(&c, 2), before[1], "the worker adopted its containers");
    assert_eq!(all_containers("pingpong").iter().filter(|r| r.state == "running").count(), 3);

    // 8. `service ls -q | xargs shoal service rm` removes everything everywhere.
    c.shoal_ok(&["service", "create", "-d", "--name", "second", "--replicas", "2", busybox_image(), "sleep", "100000"]);
    c.wait_running("second", 2, CONVERGE);
    let ids = c.shoal_ok(&["service", "ls", "-q"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 2);
    let mut args = vec!["service", "rm"];
    args.extend(ids);
    c.shoal_ok(&args);
    wait_for(CONVERGE, "every container of every service gone", || {
        let left = all_containers("pingpong").len() + all_containers("second").len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    });
    assert_eq!(c.shoal_ok(&["service", "ls", "-q"]).trim(), "");
}

fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn bad_input_gets_a_clear_error_and_leaves_the_cluster_unharmed() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let fails = |args: &[&str], needle: &str| c.shoal_fails(args, needle);
    fails(&["service", "ps", "nope"], "service nope not found");
    fails(&["service", "rm", "nope"], "service nope not found");
    fails(&["service", "scale", "nope=2"], "service nope not found");
    fails(&["service", "create", "--name", "x", "--replicas", "-1", busybox_image()], "invalid replicas \"-1\"");
    fails(
        &["service", "create", "--name", "x", "--constraint", "node.role=manager", busybox_image()],
        "invalid constraint",
    );
    fails(&["service", "create", "--name", "x", "--constraint", "node.colour==red", busybox_image()], "unknown key");
    fails(&["service", "create", "--name", "x", "--mount", "type=bind,target=/data", busybox_image()], "invalid mount");
    fails(&["service", "create", "--name", "x", "--mount", "source=/tmp,target=/d", busybox_image()], "invalid mount");
    fails(&["service", "create", "--name", "x", "-e", "NOVALUE", busybox_image()], "invalid environment variable");
    fails(&["service", "create", "--name", "bad name", busybox_image()], "invalid name");
    fails(
        &["service", "create", "--name", "x", "--restart-condition", "sometimes", busybox_image()],
        "invalid restart condition",
    );
    assert_eq!(c.shoal_ok(&["service", "ls", "-q"]).trim(), "", "nothing was created");

    // A name in use is refused, naming the service that has it.
    c.shoal_ok(&["service", "create", "-d", "--name", "dup", busybox_image(), "sleep", "100000"]);
    fails(&["service", "create", "-d", "--name", "dup", busybox_image()], "service name \"dup\" is already in use");

    // A constraint nothing satisfies: PENDING with the explanation.
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "mars",
        "--constraint",
        "node.labels.zone==mars",
        busybox_image(),
    ]);
    wait_for(CONVERGE, "the task pending with an explanation", || {
        let t = c.service_tasks("mars");
        let t = &t[0];
        if tests::task_state(t) == "pending"
            && t["status"]["err"] == "no suitable node (scheduling constraints not satisfied on 2 nodes)"
        {
            Ok(())
        } else {
            Err(t.to_string())
        }
    });
    let ps = c.shoal_ok(&["service", "ps", "--no-trunc", "mars"]);
    assert!(
        ps.contains("Pending") && ps.contains("no suitable node (scheduling constraints not satisfied on 2 nodes)"),
        "{ps}"
    );

    // An image that does not exist: REJECTED with Docker's message; the
    // waiting CLI gives up with the errors and a non-zero exit.
    let out = c.shoal_timeout(
        1,
        Duration::from_secs(90),
        &["service", "create", "--name", "ghost", "--restart-delay", "1s", "shoal/does-not-exist:latest"],
    );
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("keep failing"), "{out}");
    let t = c.service_tasks("ghost");
    let rejected = t.as_array().unwrap().iter().find(|t| tests::task_state(t) == "rejected").expect("a rejected task");
    let err = rejected["status"]["err"].as_str().unwrap();
    assert!(err.contains("shoal/does-not-exist"), "Docker's message names the image: {err}");

    // A wrong join token (the cluster's CA, a wrong secret) is refused on
    // both sides. (tests/tests/security.rs has the other refusals.)
    let token = c.shoal_ok(&["join-token", "worker", "-q"]);
    let (ca, _) = token.trim().strip_prefix("SHTKN-1-").unwrap().split_once('-').unwrap();
    let wrong = format!("SHTKN-1-{ca}-{}", "w".repeat(25));
    let dir = tempfile::tempdir().unwrap();
    let joiner = tests::run_with_timeout(
        std::process::Command::new(tests::shoal_bin()).args([
            "daemon",
            "--join",
            &format!("{}:4242", c.addr(1)),
            "--token",
            &wrong,
            "--advertise-addr",
            &format!("127.0.{}.30", c.subnet()),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!joiner.success(), "{joiner}");
    assert!(joiner.stderr.contains("join refused") && joiner.stderr.contains("invalid join token"), "{joiner}");
    assert!(!dir.path().join("node.json").exists(), "a refused node keeps no identity");
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    assert!(log.contains("invalid join token"), "the manager logs the refusal");

    // Random bytes and an oversized frame on the cluster port (not TLS)
    // close only that connection, unanswered.
    let cluster = format!("{}:4242", c.addr(1));
    for junk in [
        b"\x00\x00\x00\x08\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1".to_vec(),
        vec![0xff; 64],
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(&cluster).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&junk);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "no answer to junk: {buf:?}");
    }

    // Malformed JSON to the API: 400 with a message.
    let api = c.api_addr(1);
    let body = "{\"name\": ";
    let resp = http(&api, &format!(
        "POST /v1/services HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("malformed request body"), "{resp}");

    // Unharmed: every node Ready, a new service converges.
    c.assert_unharmed(&[1, 2], CONVERGE);
}

#[test]
fn a_worker_api_says_it_is_not_a_manager() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let out = c.shoal_on(2, &["service", "ls"]);
    assert!(!out.success());
    assert!(out.stderr.contains("is a worker, not a manager"), "{out}");
    wait_for(Duration::from_secs(10), "the worker sees both nodes through gossip", || {
        let metrics = http(&c.api_addr(2), "GET /metrics HTTP/1.0\r\n\r\n");
        if metrics.contains("shoal_gossip_live_members 2") {
            Ok(())
        } else {
            Err(metrics)
        }
    });
    let metrics = http(&c.api_addr(1), "GET /metrics HTTP/1.0\r\n\r\n");
    for m in [
        "shoal_raft_term",
        "shoal_raft_applied_index",
        "shoal_raft_leader 1",
        "shoal_actor_messages_total{actor=\"raft\"}",
        "shoal_tasks{state=\"running\"}",
    ] {
        assert!(metrics.contains(m), "{m} missing: {metrics}");
    }
}

/// The value of `name{actor="actor"}` in an OpenMetrics text, if present.
fn actor_metric(text: &str, name: &str, actor: &str) -> Option<f64> {
    let key = format!("{name}{{actor=\"{actor}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[test]
fn per_actor_metrics_move_when_work_happens() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let scrape = |i: usize| http(&c.api_addr(i), "GET /metrics HTTP/1.0\r\n\r\n");
    let manager_actors = ["raft", "orchestrator", "scheduler", "dispatcher"];
    let before = scrape(1);
    let worker_before = scrape(2);
    c.shoal_ok(&["service", "create", "--name", "metered", "--replicas", "4", busybox_image(), "sleep", "100000"]);
    c.wait_running("metered", 4, CONVERGE);
    wait_for(CONVERGE, "every actor's counters to move", || {
        let (after, worker_after) = (scrape(1), scrape(2));
        let mut still = Vec::new();
        let mut check = |b: &str, a: &str, actor: &str| {
            for name in ["shoal_actor_messages_total", "shoal_actor_handle_seconds_count"] {
                let (x, y) = (actor_metric(b, name, actor).unwrap_or(0.0), actor_metric(a, name, actor));
                if !y.is_some_and(|y| y > x) {
                    still.push(format!("{name}{{actor={actor}}}: {x} → {y:?}"));
                }
            }
        };
        for actor in manager_actors {
            check(&before, &after, actor);
        }
        // The worker's own supervisor ran its two tasks.
        check(&worker_before, &worker_after, "supervisor");
        if still.is_empty() {
            Ok(())
        } else {
            Err(still.join("; "))
        }
    });
    // The error counters exist per actor (zero here: nothing failed).
    let after = scrape(1);
    for actor in manager_actors {
        assert!(actor_metric(&after, "shoal_actor_errors_total", actor).is_some(), "no error counter for {actor}");
    }
}

#[test]
fn three_managers_replicate_over_the_cluster_port_and_followers_take_writes() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(tests::ClusterSpec::new(3, 0));
    let statuses = wait_for(CONVERGE, "one leader and two reachable managers", || {
        let nodes = c.shoal_json(&["node", "ls", "--format", "json"]);
        let mut s: Vec<String> =
            nodes.as_array().unwrap().iter().map(|n| n["manager_status"].as_str().unwrap().to_string()).collect();
        s.sort();
        if s == ["Leader", "Reachable", "Reachable"] {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    });
    assert_eq!(statuses.len(), 3);
    // A write through a follower is forwarded to the leader; every manager reads it.
    let leader = c.shoal_json(&["node", "ls", "--format", "json"]);
    let leader_host =
        leader.as_array().unwrap().iter().find(|n| n["manager_status"] == "Leader").unwrap()["hostname"].clone();
    let follower = (1..=3).find(|i| Value::String(c.hostname(*i)) != leader_host).unwrap();
    c.set_api_node(follower);
    c.shoal_ok(&["service", "create", "-d", "--name", "web", "--replicas", "3", busybox_image(), "sleep", "100000"]);
    for i in 1..=3 {
        c.set_api_node(i);
        c.wait_running("web", 3, CONVERGE);
    }
    wait_spread(&c, "web", 1);
}
