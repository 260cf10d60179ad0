//! The routing mesh: a published port answers on every node and spreads
//! connections round robin over all running tasks, through both data paths
//! (nftables and the userspace proxy). Real `shoal` processes, real Docker,
//! real sockets on 127.0.S.x.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tests::{busybox_image, docker_kill, require_docker, running_tasks, wait_for, Cluster, ClusterSpec};

const CONVERGE: Duration = Duration::from_secs(60);
/// Answers HTTP with its container's hostname.
const HOSTNAME_HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

/// One HTTP GET over a fresh connection: the body, or why not.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let body = out.split("\r\n\r\n").nth(1).ok_or_else(|| format!("no body in {out:?}"))?;
    Ok(body.trim().to_string())
}

fn hostnames(addr: SocketAddr, n: usize) -> Result<Vec<String>, String> {
    (0..n).map(|_| get(addr)).collect()
}

/// Container hostnames (short IDs) of the service's running tasks on this cluster.
fn task_hosts(c: &Cluster, svc: &str) -> BTreeSet<String> {
    running_tasks(&c.service_tasks(svc))
        .iter()
        .filter_map(|t| t["status"]["container_id"].as_str().map(|id| id[..12].to_string()))
        .collect()
}

/// Waits until `n` requests to `addr` go round robin over exactly the
/// running tasks: each appears n/tasks times, consecutive ones differ.
fn wait_round_robin(c: &Cluster, svc: &str, addr: SocketAddr, n: usize) -> Vec<String> {
    wait_for(CONVERGE, &format!("round robin over every running task of {svc} at {addr}"), || {
        let hosts = task_hosts(c, svc);
        let got = hostnames(addr, n)?;
        let mut count: BTreeMap<&String, usize> = BTreeMap::new();
        for h in &got {
            *count.entry(h).or_default() += 1;
        }
        let seen: BTreeSet<String> = count.keys().map(|s| s.to_string()).collect();
        let even = count.values().all(|k| *k == n / hosts.len().max(1));
        let alternating = got.windows(2).all(|w| w[0] != w[1]) || hosts.len() == 1;
        if seen == hosts && even && alternating {
            Ok(got)
        } else {
            Err(format!("tasks {hosts:?}, answers {got:?}"))
        }
    })
}

fn ingress_suite(mesh: &str) {
    let mut spec = ClusterSpec::new(1, 2);
    spec.daemon_args = vec!["--mesh".into(), mesh.into()];
    let c = Cluster::start(spec);
    c.shoal_ok(&[
        "service",
        "create",
        "--name",
        "search",
        "--publish",
        "9200:80",
        "--replicas",
        "5",
        busybox_image(),
        "sh",
        "-c",
        HOSTNAME_HTTPD,
    ]);
    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("*:9200->80/tcp"), "{ls}");
    // Every node answers, whether or not it runs a task, round robin over all five.
    for i in 1..=3 {
        let addr = SocketAddr::new(c.addr(i).into(), 9200);
        let got = wait_round_robin(&c, "search", addr, 10);
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 5, "{mesh}: node{i}: {got:?}");
    }

    // Scale down and up: the rotation follows.
    let node2 = SocketAddr::new(c.addr(2).into(), 9200);
    c.shoal_ok(&["service", "scale", "search=2"]);
    wait_round_robin(&c, "search", node2, 6);
    c.shoal_ok(&["service", "scale", "search=4"]);
    wait_round_robin(&c, "search", node2, 8);

    // A task killed: requests keep being answered; a short gap at most.
    let victim = c
        .node_containers(1)
        .into_iter()
        .find(|r| r.state == "running" && r.label("shoal.service.name") == Some("search"))
        .unwrap();
    docker_kill(&victim.id);
    let started = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut longest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(4) {
        match get(node2) {
            Ok(_) => {
                if let Some(f) = failing_since.take() {
                    longest = longest.max(f.elapsed());
                }
            }
            Err(_) => {
                failing_since.get_or_insert_with(Instant::now);
            }
        }
    }
    if let Some(f) = failing_since {
        longest = longest.max(f.elapsed());
    }
    eprintln!("{mesh}: longest run of failing requests after a task was killed: {longest:?}");
    assert!(longest < Duration::from_secs(2), "{mesh}: requests failed for {longest:?}");

    // No running task: connections are refused at once, not left hanging.
    c.shoal_ok(&["service", "scale", "search=0"]);
    wait_for(CONVERGE, "connections refused with no task", || {
        let t = Instant::now();
        match get(node2) {
            Err(e) if t.elapsed() < Duration::from_secs(1) => Ok(e),
            other => Err(format!("{other:?} after {:?}", t.elapsed())),
        }
    });
    // UDP flows are covered against real UDP backends in worker/tests/mesh_proxy.rs
    // and worker/tests/mesh_nft.rs: the busybox test image has no UDP server.
}

#[test]
fn ingress_through_nftables() {
    if !require_docker() {
        return;
    }
    ingress_suite("kernel");
}

#[test]
fn ingress_through_the_userspace_proxy() {
    if !require_docker() {
        return;
    }
    ingress_suite("userspace");
}

fn nft_tables() -> Vec<String> {
    let out = std::process::Command::new("nft").args(["list", "tables"]).output().expect("nft");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn each_node_owns_one_nft_table_removed_on_stop_and_rebuilt_on_restart() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::new(2);
    c.create_service("web", &["--publish", "8088:80", "--replicas", "2"], &["sh", "-c", HOSTNAME_HTTPD]);
    let table = |i: usize| format!("table ip shoal_{}", &c.node_id(i)[..12]);
    let (t1, t2) = (table(1), table(2));
    assert_eq!(nft_tables().iter().filter(|l| **l == t2).count(), 1);
    c.stop_node(2);
    assert!(!nft_tables().contains(&t2), "a stopped node leaves no table");
    assert!(nft_tables().contains(&t1), "the other node's table is untouched");
    c.restart_node(2);
    c.wait_nodes_ready(&[1, 2], CONVERGE);
    let addr = SocketAddr::new(c.addr(2).into(), 8088);
    wait_round_robin(&c, "web", addr, 4);
    assert_eq!(nft_tables().iter().filter(|l| **l == t2).count(), 1, "rebuilt once, no duplicate");
}

#[test]
fn host_mode_binds_on_task_nodes_only_one_per_node() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(3);
    c.create_service(
        "edge",
        &["--publish", "published=9300,target=80,mode=host", "--replicas", "2"],
        &["sh", "-c", HOSTNAME_HTTPD],
    );
    let on: Vec<usize> = (1..=3).filter(|i| c.node_containers(*i).iter().any(|r| r.state == "running")).collect();
    assert_eq!(on.len(), 2, "two tasks on two different nodes");
    for i in 1..=3 {
        let r = get(SocketAddr::new(c.addr(i).into(), 9300));
        if on.contains(&i) {
            let own = c.node_containers(i).into_iter().find(|r| r.state == "running").unwrap();
            assert_eq!(r.unwrap(), own.id[..12], "node{i} answers with its own task");
        } else {
            assert!(r.is_err(), "node{i} runs no task and does not bind the port");
        }
    }
    // A fourth replica fits nowhere: three nodes, one port each.
    c.shoal_ok(&["service", "scale", "-d", "edge=4"]);
    wait_for(CONVERGE, "one task pending with the explanation", || {
        let t = c.service_tasks("edge");
        let pending: Vec<String> = t
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| tests::task_state(t) == "pending")
            .map(|t| t["status"]["err"].as_str().unwrap_or("").to_string())
            .collect();
        if pending == ["no suitable node (host-mode port already in use on 3 nodes)"] {
            Ok(())
        } else {
            Err(format!("{pending:?}"))
        }
    });
    c.wait_running("edge", 3, CONVERGE);
}

#[test]
fn bad_publishes_are_refused_clearly() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let fails = |args: &[&str], needle: &str| c.shoal_fails(args, needle);
    fails(&["service", "create", "--name", "x", "--publish", "70000:80", busybox_image()], "ports are 1-65535");
    fails(&["service", "create", "--name", "x", "--publish", "8080:80/sctp", busybox_image()], "expected tcp or udp");
    fails(
        &["service", "create", "--name", "x", "--publish", "published=1,target=2,mode=fast", busybox_image()],
        "expected ingress or host",
    );
    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "first",
        "--publish",
        "8090:80",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    fails(
        &["service", "create", "--name", "second", "--publish", "8090:81", busybox_image()],
        "port 8090/tcp is already published by service first",
    );
    c.shoal_ok(&["service", "create", "-d", "--name", "second", busybox_image(), "sleep", "100000"]);
    fails(&["service", "update", "--publish-add", "8090:80", "second"], "already published by service first");
    // An unnumbered publish gets a port from 30000.
    c.shoal_ok(&["service", "update", "-d", "--publish-add", "80", "second"]);
    let info = c.shoal_json(&["service", "inspect", "second"]);
    let published = info[0]["spec"]["task"]["ports"][0]["published"].as_u64().unwrap();
    assert!((30000..=32767).contains(&published), "{published}");
    c.shoal_ok(&["service", "update", "-d", "--publish-rm", "80", "second"]);
    let info = c.shoal_json(&["service", "inspect", "second"]);
    assert_eq!(info[0]["spec"]["task"]["ports"].as_array().unwrap().len(), 0);

    // A port the machine already uses on node2: node2 says so; the other node serves it.
    let taken = TcpListener::bind(SocketAddr::new(c.addr(2).into(), 8095)).unwrap();
    c.shoal_ok(&[
        "service",
        "create",
        "--name",
        "clash",
        "--publish",
        "8095:80",
        busybox_image(),
        "sh",
        "-c",
        HOSTNAME_HTTPD,
    ]);
    let served = SocketAddr::new(c.addr(1).into(), 8095);
    wait_round_robin(&c, "clash", served, 2);
    let mesh_errors = || c.shoal_json(&["service", "inspect", "clash"])[0]["mesh_errors"].clone();
    wait_for(CONVERGE, "service inspect shows the port node2 cannot serve", || {
        let errors = mesh_errors();
        let text = errors.to_string();
        if text.contains("node2: published port 8095/tcp cannot be served on this node")
            && text.contains("already in use")
        {
            Ok(())
        } else {
            Err(text)
        }
    });
    let pretty = c.shoal_ok(&["service", "inspect", "--pretty", "clash"]);
    assert!(pretty.contains("Mesh error:\tnode2: published port 8095/tcp"), "{pretty}");
    drop(taken);
    // Once free, node2 serves it too, and the error is gone.
    wait_round_robin(&c, "clash", SocketAddr::new(c.addr(2).into(), 8095), 2);
    wait_for(CONVERGE, "the mesh error cleared", || {
        let errors = mesh_errors();
        if errors.as_array().is_some_and(|a| a.is_empty()) {
            Ok(())
        } else {
            Err(errors.to_string())
        }
    });
}
