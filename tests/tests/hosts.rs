//! Real hosts (`deploy/hosts.sh`): every node in its own network namespace
//! with its own Docker engine. Each test shares one harness between several
//! checks, in order, to keep engine start-ups few.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{busybox_image, require_hosts, task_host, wait_for, Hosts, Mesh};

const CONVERGE: Duration = Duration::from_secs(60);

const SEARCH: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

/// `service create -d --name NAME FLAGS… busybox COMMAND…` through host 1.
fn create(h: &Hosts, via: usize, name: &str, flags: &[&str], command: &[&str]) {
    let mut args = vec!["service", "create", "-d", "--name", name];
    args.extend_from_slice(flags);
    args.push(busybox_image());
    args.extend_from_slice(command);
    h.shoal_ok(via, &args);
}

/// `n` requests from host `from`'s namespace to `to`'s address on `port`:
/// the answers (each task serves its container's hostname).
fn curl_from(h: &Hosts, from: usize, to: usize, port: u16, n: usize) -> Vec<String> {
    let url = format!("http://{}:{port}/", h.addr(to));
    (0..n)
        .map(|_| {
            let out = h.exec(from, Path::new("curl"), &["-sS", "-m", "3", &url], Duration::from_secs(10));
            assert!(out.success(), "request from host{from} to {url} failed: {out}");
            out.stdout.trim().to_string()
        })
        .collect()
}

/// The mesh from host3 to host1 reaches several tasks on several hosts.
fn assert_mesh_spreads(h: &Hosts) {
    create(h, 1, "search", &["--publish", "9200:80", "--replicas", "5"], &["sh", "-c", SEARCH]);
    h.wait_running(1, "search", 5, CONVERGE);
    // Container hostname (the first 12 of its id) → its host.
    let mut host_of = BTreeMap::new();
    for (i, rows) in h.running("search") {
        for c in rows {
            host_of.insert(c.id[..12].to_string(), i);
        }
    }
    assert_eq!(host_of.len(), 5, "{host_of:?}");
    // The first connections may race the mesh table reaching host1.
    wait_for(Duration::from_secs(20), "host1 to serve 9200", || {
        let url = format!("http://{}:9200/", h.addr(1));
        let out = h.exec(3, Path::new("curl"), &["-sS", "-m", "2", &url], Duration::from_secs(5));
        if out.success() {
            Ok(())
        } else {
            Err(out)
        }
    });
    let answers = curl_from(h, 3, 1, 9200, 10);
    let tasks: BTreeSet<&String> = answers.iter().collect();
    let hosts: BTreeSet<usize> = answers.iter().filter_map(|a| host_of.get(a).copied()).collect();
    assert!(tasks.len() >= 3, "10 requests reached only {tasks:?}");
    assert!(hosts.len() >= 2, "10 requests reached tasks on hosts {hosts:?} only: {answers:?} ({host_of:?})");
    assert!(answers.iter().all(|a| host_of.contains_key(a)), "an answer from no task: {answers:?} {host_of:?}");
}

/// A task serving, at /cgi-bin/ip, the address its connection came from.
const WHOAMI: &str = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www";

/// The kernel mesh keeps the client's address for a connection from
/// another machine to a task on the host it arrived at (no SNAT), and SNATs
/// (the default) one it forwards to a task on another host.
fn the_task_on_the_entry_host_sees_the_client(h: &Hosts) {
    create(h, 1, "whoami", &["--publish", "9300:80", "--constraint", "node.hostname==host1"], &["sh", "-c", WHOAMI]);
    h.wait_running_where(1, "whoami", 1, CONVERGE, |i| i == 1);
    let ask = |from: usize, to: usize, port: u16| {
        let url = format!("http://{}:{port}/cgi-bin/ip", h.addr(to));
        let mut out = h.exec(from, Path::new("curl"), &["-sS", "-m", "2", &url], Duration::from_secs(5));
        // httpd listens on IPv6 too: `[::ffff:10.231.1.13]`.
        let addr = out.stdout.trim().trim_start_matches('[').trim_end_matches(']').trim_start_matches("::ffff:");
        out.stdout = addr.to_string();
        out
    };
    // The mesh table reaches each host on its own time: wait for both.
    let (from3, to1, to2) = (h.addr(3).to_string(), 1, 2);
    wait_for(
        Duration::from_secs(20),
        "host1's mesh to hand host3's connection to its task with host3's address",
        || {
            let out = ask(3, to1, 9300);
            if out.success() && out.stdout == from3 {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    wait_for(Duration::from_secs(20), "host2's mesh to forward to host1's task", || {
        let out = ask(3, to2, 9300);
        // Forwarded to another host: SNATed to the entry host's address,
        // so the answers come back through it.
        if out.success() && out.stdout == h.addr(2).to_string() {
            Ok(())
        } else {
            Err(out)
        }
    });
    // Made on host1 itself: answered too (masqueraded to the bridge).
    let local = ask(1, 1, 9300);
    assert!(local.success(), "a connection made on host1 to its own published port: {local}");
    h.shoal_ok(1, &["service", "rm", "whoami"]);

    // preserve-source=true: host2 hands host3's connection to host1 as it
    // is (the hosts share a bridge), and host1's task sees host3.
    let publish = "published=9301,target=80,preserve-source=true";
    create(h, 1, "whoami-ps", &["--publish", publish, "--constraint", "node.hostname==host1"], &["sh", "-c", WHOAMI]);
    h.wait_running_where(1, "whoami-ps", 1, CONVERGE, |i| i == 1);
    for entry in [2, 1] {
        wait_for(Duration::from_secs(20), &format!("host1's task to see host3 through host{entry}"), || {
            let out = ask(3, entry, 9301);
            if out.success() && out.stdout == from3 {
                Ok(())
            } else {
                Err(out)
            }
        });
    }
    // Many connections (different client ports, so different hashes): all
    // answered, none SNATed.
    for _ in 0..10 {
        let out = ask(3, 2, 9301);
        assert!(out.success() && out.stdout == from3, "through host2: {out}");
    }
    h.shoal_ok(1, &["service", "rm", "whoami-ps"]);
}

/// Every slot of `svc` runs exactly once over all engines, `n` slots.
fn wait_one_per_slot(h: &Hosts, svc: &str, n: usize) {
    wait_for(CONVERGE, &format!("one running container per slot of {svc}"), || {
        let per = h.running_per_slot(svc);
        if per.len() == n && per.values().all(|&c| c == 1) {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    });
}

/// Running container ids and start times of `svc`, over every engine.
fn started(h: &Hosts, svc: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for i in 1..=h.len() {
        let out = h.docker(
            i,
            &["ps", "-q", "--no-trunc", "--filter", &format!("label=shoal.service.name={svc}"), "--format", "{{.ID}}"],
        );
        for id in out.stdout.split_whitespace() {
            let at = h.docker(i, &["inspect", "-f", "{{.State.StartedAt}}", id]).ok();
            m.insert(id.to_string(), at.stdout.trim().to_string());
        }
    }
    m
}

#[test]
fn three_real_hosts_kernel_mesh_restarts_and_a_dead_host() {
    if !require_hosts() {
        return;
    }
    let h = Hosts::up(3, 1, Mesh::Kernel);

    // pingpong ×6: two per host, in the hosts' own engines, logs from all.
    create(&h, 1, "pingpong", &["--replicas", "6"], &["ping", "127.0.0.1"]);
    h.wait_running(1, "pingpong", 6, CONVERGE);
    let per_host: Vec<usize> = h.running("pingpong").values().map(Vec::len).collect();
    assert_eq!(per_host, vec![2, 2, 2], "containers per host engine");
    wait_for(Duration::from_secs(20), "logs from every host", || {
        let out = h.shoal(1, &["service", "logs", "pingpong", "--tail", "1"]);
        let from: BTreeSet<&str> =
            ["@host1", "@host2", "@host3"].into_iter().filter(|s| out.stdout.contains(s)).collect();
        if from.len() == 3 && out.stdout.contains("bytes from 127.0.0.1") {
            Ok(())
        } else {
            Err(out)
        }
    });

    // The routing mesh forwards from one host's kernel to tasks on others.
    assert_mesh_spreads(&h);
    the_task_on_the_entry_host_sees_the_client(&h);

    // Whole-cluster restart: the same containers, none restarted.
    let before = started(&h, "pingpong");
    assert_eq!(before.len(), 6);
    for i in 1..=3 {
        h.script_ok(&["stop", &i.to_string()]);
    }
    for i in 1..=3 {
        h.script_ok(&["start", &i.to_string()]);
    }
    h.wait_status(1, &[1, 2, 3], "ready", CONVERGE);
    h.wait_running(1, "pingpong", 6, CONVERGE);
    h.wait_running(1, "search", 5, CONVERGE);
    assert_eq!(started(&h, "pingpong"), before, "container ids and start times after a whole-cluster restart");

    // Host3's dockerd restarted under the running cluster (its containers
    // die with it): every replica back, none twice.
    h.script_ok(&["docker-restart", "3"]);
    h.wait_running(1, "pingpong", 6, CONVERGE);
    h.wait_running(1, "search", 5, CONVERGE);
    wait_one_per_slot(&h, "pingpong", 6);
    wait_one_per_slot(&h, "search", 5);

    // kill -9 of host2's shoal: its tasks are replaced on the other hosts.
    let t = Instant::now();
    h.script_ok(&["kill", "2"]);
    h.wait_running_where(1, "pingpong", 6, CONVERGE, |i| i != 2);
    eprintln!("host2's shoal killed -> pingpong replaced elsewhere in {:.2} s", t.elapsed().as_secs_f64());
    // Back: it stops what it no longer holds, so no slot runs twice.
    h.script_ok(&["start", "2"]);
    h.wait_status(1, &[2], "ready", CONVERGE);
    wait_one_per_slot(&h, "pingpong", 6);
    wait_one_per_slot(&h, "search", 5);

    drain_and_rolling_update(&h);
}

/// Env of a container in host i's engine, one `K=V` a line.
fn container_env(h: &Hosts, i: usize, id: &str) -> String {
    h.docker(i, &["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", id]).ok().stdout
}

/// Drain host3: its containers of pingpong stop and the others' engines run
/// every slot; back to active. Then a rolling update: every slot gets a new
/// container with the new env, in the hosts' own engines, none twice.
fn drain_and_rolling_update(h: &Hosts) {
    h.shoal_ok(1, &["node", "update", "--availability", "drain", "host3"]);
    h.wait_running_where(1, "pingpong", 6, CONVERGE, |i| i != 3);
    wait_for(CONVERGE, "host3's engine to run no pingpong", || {
        let on3 = h.running("pingpong")[&3].len();
        if on3 == 0 {
            Ok(())
        } else {
            Err(format!("{on3} still running"))
        }
    });
    wait_one_per_slot(h, "pingpong", 6);
    let per_host: Vec<usize> = h.running("pingpong").values().map(Vec::len).collect();
    assert_eq!(per_host, vec![3, 3, 0], "containers per host engine with host3 drained");
    h.shoal_ok(1, &["node", "update", "--availability", "active", "host3"]);

    let before: BTreeSet<String> = started(h, "pingpong").into_keys().collect();
    let flags = ["--update-parallelism", "2", "--update-monitor", "1s", "--env-add", "ROLLED=1"];
    let mut args = vec!["service", "update"];
    args.extend_from_slice(&flags);
    args.push("pingpong");
    let out = h.shoal_timeout(1, Duration::from_secs(120), &args).ok();
    assert!(out.stdout.contains("verify: Service converged"), "{out}");
    wait_one_per_slot(h, "pingpong", 6);
    for (i, rows) in h.running("pingpong") {
        for c in rows {
            assert!(!before.contains(&c.id), "host{i}'s container {} was not replaced", c.id);
            let env = container_env(h, i, &c.id);
            assert!(env.lines().any(|l| l == "ROLLED=1"), "host{i}'s container {} lacks ROLLED=1: {env}", c.id);
        }
    }
}

#[test]
fn three_real_hosts_userspace_mesh() {
    if !require_hosts() {
        return;
    }
    let h = Hosts::up(3, 1, Mesh::Userspace);
    assert_mesh_spreads(&h);
}

#[test]
fn real_partitions_an_isolated_leader_host() {
    if !require_hosts() {
        return;
    }
    let h = Hosts::up(5, 3, Mesh::Kernel);
    create(&h, 1, "part", &["--replicas", "5"], &["sleep", "100000"]);
    let tasks = h.wait_running(1, "part", 5, CONVERGE);
    let leader = h.leader_seen_from(1).expect("a leader");
    assert_eq!(leader, 1, "host1 inits the cluster");
    let on_leader = h.running("part")[&leader].clone();
    assert_eq!(on_leader.len(), 1, "one task per host: {tasks:?}");

    // Isolate the leader's host: the majority elects a new leader and
    // accepts writes.
    let t = Instant::now();
    h.script_ok(&["isolate", &leader.to_string()]);
    let (new_leader, via) = wait_for(Duration::from_secs(10), "a write accepted by the majority", || {
        for via in [2, 3] {
            let out =
                h.shoal_timeout(via, Duration::from_secs(3), &["node", "update", "--label-add", "cut=1", "host4"]);
            if out.success() {
                return h.leader_seen_from(via).map(|l| (l, via));
            }
        }
        Err("no write accepted yet".to_string())
    });
    eprintln!("leader's host isolated -> first write accepted by the majority in {:.2} s", t.elapsed().as_secs_f64());
    assert_ne!(new_leader, leader);
    assert!([2, 3].contains(&new_leader), "the new leader is a manager of the majority: host{new_leader}");
    // The isolated manager refuses writes, and its container keeps running.
    wait_for(Duration::from_secs(20), "the isolated manager to refuse writes with no quorum", || {
        let out = h.shoal_timeout(leader, Duration::from_secs(15), &["node", "update", "--label-add", "x=1", "host5"]);
        if !out.success() && out.stderr.contains("no quorum") {
            Ok(())
        } else {
            Err(out)
        }
    });
    // Its task is replaced elsewhere.
    h.wait_running_where(via, "part", 5, CONVERGE, |i| i != leader);
    let still: Vec<String> = h.running("part")[&leader].iter().map(|c| c.id.clone()).collect();
    assert_eq!(still, vec![on_leader[0].id.clone()], "the isolated host's container keeps running");

    // Rejoin: the old leader follows, and no slot runs twice.
    h.script_ok(&["rejoin", &leader.to_string()]);
    h.wait_status(via, &[leader], "ready", CONVERGE);
    wait_for(CONVERGE, "the old leader to follow the new one", || match h.leader_seen_from(leader) {
        Ok(l) if l == new_leader => Ok(()),
        other => Err(format!("{other:?}")),
    });
    wait_one_per_slot(&h, "part", 5);

    worker_cut_from_the_managers_only(&h, new_leader);
    a_flapping_link_converges(&h, new_leader);
}

/// `shoal_gossip_live_members` on host `via`: how many nodes its gossip sees.
fn gossip_members(h: &Hosts, via: usize) -> Result<u64, String> {
    let out =
        h.exec(via, Path::new("curl"), &["-sS", "-m", "3", "http://127.0.0.1:4243/metrics"], Duration::from_secs(5));
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("shoal_gossip_live_members ")?.trim().parse().ok())
        .ok_or_else(|| format!("no gossip gauge: {out}"))
}

/// Host5 (a worker) cut from the three managers while it still reaches
/// host4: gossip relayed through host4 keeps it alive, but its session with
/// the leader is gone, so every manager calls it Down and its tasks are
/// replaced; after the heal no slot runs twice.
fn worker_cut_from_the_managers_only(h: &Hosts, leader: usize) {
    let cut = 5;
    assert!(!h.running("part")[&cut].is_empty(), "host{cut} runs a task of part: {:?}", h.running_per_slot("part"));
    let t = Instant::now();
    for m in 1..=3 {
        h.script_ok(&["partition", &cut.to_string(), &m.to_string()]);
    }
    // The session timeout (15 s: three 5 s heartbeats) and a margin.
    h.wait_status(leader, &[cut], "down", Duration::from_secs(30));
    eprintln!("host{cut} cut from the managers -> Down on the leader in {:.2} s", t.elapsed().as_secs_f64());
    // The followers agree within a few seconds.
    for m in (1..=3).filter(|m| *m != leader) {
        h.wait_status(m, &[cut], "down", Duration::from_secs(5));
    }
    // This is the case gossip alone gets wrong: it still sees all five.
    assert_eq!(gossip_members(h, leader), Ok(5), "gossip on the leader still sees host{cut} (relayed by host4)");
    h.wait_running_where(leader, "part", 5, CONVERGE, |i| i != cut);
    eprintln!("host{cut} cut from the managers -> its task replaced in {:.2} s", t.elapsed().as_secs_f64());

    for m in 1..=3 {
        h.script_ok(&["heal", &cut.to_string(), &m.to_string()]);
    }
    for m in 1..=3 {
        h.wait_status(m, &[cut], "ready", CONVERGE);
    }
    wait_one_per_slot(h, "part", 5);
}

/// The links from the leader's host to another manager and to a worker cut
/// and healed every second for 20 s while that manager takes writes:
/// afterwards every acknowledged write is on every manager and no slot runs
/// twice.
fn a_flapping_link_converges(h: &Hosts, leader: usize) {
    let other = if leader == 1 { 2 } else { 1 };
    let (l, o, w) = (leader.to_string(), other.to_string(), "4");
    let flapping = Duration::from_secs(20);
    let acked: Vec<String> = std::thread::scope(|s| {
        s.spawn(|| {
            let end = Instant::now() + flapping;
            while Instant::now() < end {
                h.script_ok(&["partition", &l, &o]);
                h.script_ok(&["partition", &l, w]);
                std::thread::sleep(Duration::from_secs(1));
                h.script_ok(&["heal", &l, &o]);
                h.script_ok(&["heal", &l, w]);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let end = Instant::now() + flapping;
        let mut acked = Vec::new();
        for n in 0.. {
            if Instant::now() >= end {
                break;
            }
            let name = format!("flap{n}");
            let args = ["service", "create", "-d", "--name", &name, busybox_image(), "sleep", "100000"];
            if h.shoal_timeout(other, Duration::from_secs(10), &args).success() {
                acked.push(name);
            }
        }
        acked
    });
    h.script_ok(&["heal", &l, &o]);
    h.script_ok(&["heal", &l, w]);
    eprintln!("flapping links host{leader}-host{other} and host{leader}-host4: {} writes acknowledged", acked.len());
    assert!(acked.len() >= 3, "writes through host{other} while its link flapped: only {acked:?} acknowledged");
    for m in 1..=3 {
        wait_for(CONVERGE, &format!("every acknowledged write on host{m}"), || {
            let out = h.shoal_timeout(m, Duration::from_secs(10), &["service", "ls", "--format", "json"]);
            let v: Value = serde_json::from_str(&out.stdout).map_err(|_| out.to_string())?;
            let names: BTreeSet<&str> =
                v.as_array().into_iter().flatten().filter_map(|s| s["spec"]["name"].as_str()).collect();
            let missing: Vec<&String> = acked.iter().filter(|a| !names.contains(a.as_str())).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        });
    }
    wait_one_per_slot(h, "part", 5);
    for name in &acked {
        wait_one_per_slot(h, name, 1);
    }
}

/// Issue 17, the worker side: a host whose engine cannot run a service's
/// tasks (its copy of the image is gone and no registry is reachable, as
/// when a full disk makes Docker fail) reports Docker's error for each of
/// them, and once the service failed there 5 times (the scheduler's
/// `MAX_FAILURES`) its tasks go to the other hosts, new ones too.
#[test]
fn tasks_failing_on_one_host_are_placed_on_the_others() {
    if !require_hosts() {
        return;
    }
    let h = Hosts::up(3, 1, Mesh::Userspace);
    h.docker(2, &["rmi", busybox_image()]).ok();

    let t = Instant::now();
    create(&h, 1, "spill", &["--replicas", "6", "--restart-delay", "1s"], &["sleep", "100000"]);
    h.wait_running_where(1, "spill", 6, Duration::from_secs(30), |i| i != 2);
    eprintln!("6 replicas running on host1 and host3 in {:.2} s", t.elapsed().as_secs_f64());

    // `service ps`: every task host2 got was rejected with Docker's error.
    let table = h.shoal_ok(1, &["service", "ps", "spill"]);
    eprintln!("{table}");
    let on_host2: Vec<&str> = table.lines().filter(|l| l.contains(" host2 ")).collect();
    assert!(on_host2.len() >= 5, "at least 5 failures on host2 before it is avoided:\n{table}");
    for row in &on_host2 {
        assert!(
            row.contains(" Shutdown ")
                && row.contains(" Rejected ")
                && row.contains(r#""No such image: shoal/busybox:…""#),
            "a task host2 got:\n{row}\nin\n{table}"
        );
    }
    let tasks = |h: &Hosts| -> Vec<Value> {
        let out = h.shoal_ok(1, &["service", "ps", "spill", "--no-trunc", "--format", "json"]);
        serde_json::from_str::<Value>(&out).expect("service ps json").as_array().cloned().unwrap_or_default()
    };
    let host2_ids = |tasks: &[Value]| -> BTreeSet<String> {
        tasks.iter().filter(|t| task_host(t) == Some(2)).filter_map(|t| t["id"].as_str().map(String::from)).collect()
    };
    let before = tasks(&h);
    for t in before.iter().filter(|t| task_host(t) == Some(2)) {
        let err = t.pointer("/status/err").and_then(Value::as_str).unwrap_or("");
        let docker = err.strip_prefix("No such image: shoal/busybox:latest: ").unwrap_or("");
        assert!(!docker.trim().is_empty(), "Docker's own words after shoal's: {err:?}");
    }
    if let Some(err) = before.iter().find(|t| task_host(t) == Some(2)).and_then(|t| t.pointer("/status/err")) {
        eprintln!("host2's error in full: {err}");
    }

    // Scaled up while host2's failures are recent: the new tasks avoid it.
    h.shoal_ok(1, &["service", "scale", "-d", "spill=8"]);
    h.wait_running_where(1, "spill", 8, Duration::from_secs(20), |i| i != 2);
    let after = host2_ids(&tasks(&h));
    assert!(after.is_subset(&host2_ids(&before)), "no new task on host2: {after:?}");
    assert_eq!(h.running("spill")[&2].len(), 0, "nothing of spill runs in host2's engine");
}
