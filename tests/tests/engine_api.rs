//! The Docker Engine API on a shoal manager, driven by the stock clients:
//! the docker CLIs on this machine (`DOCKER_HOST=tcp://MANAGER:4243`), the
//! calls the Swarm visualizer polls, and bad input. What each step does is
//! checked in Docker (containers, their env), not only in what the API says.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use tests::{
    busybox_image, containers_with_label, docker, docker_clients, http, require_docker, wait_for, Cluster, ClusterSpec,
    ContainerRow, EngineCli,
};

const CONVERGE: Duration = Duration::from_secs(90);

fn running(svc: &str) -> Vec<ContainerRow> {
    containers_with_label("shoal.service.name", svc).into_iter().filter(|r| r.state == "running").collect()
}

/// Running containers of `svc` per node hostname.
fn per_node(c: &Cluster, svc: &str) -> BTreeMap<String, usize> {
    let hosts: BTreeMap<String, String> = (1..=c.len()).map(|i| (c.node_id(i), c.hostname(i))).collect();
    let mut m = BTreeMap::new();
    for r in running(svc) {
        let node = r.label("shoal.node.id").and_then(|id| hosts.get(id)).cloned().unwrap_or_else(|| "?".into());
        *m.entry(node).or_default() += 1;
    }
    m
}

/// Waits until the running containers of `svc` per node are `want`.
#[track_caller]
fn wait_spread(c: &Cluster, svc: &str, want: &[(&str, usize)]) {
    let want: BTreeMap<String, usize> = want.iter().map(|(h, n)| (h.to_string(), *n)).collect();
    wait_for(CONVERGE, &format!("running containers of {svc}: {want:?}"), || {
        let got = per_node(c, svc);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
}

fn container_env(id: &str) -> Vec<String> {
    let out = docker(&["inspect", "--format", "{{json .Config.Env}}", id]);
    serde_json::from_str(out.stdout.trim()).unwrap_or_default()
}

/// The newest docker CLI on the machine against node1.
fn cli(c: &Cluster) -> EngineCli {
    let bin = docker_clients().into_iter().next().expect("a docker CLI");
    EngineCli::new(&bin, &format!("tcp://{}", c.api_addr(1)))
}

/// One GET to a node's address through the routing mesh; the page is the
/// hostname of the container that answered.
fn get_page(addr: &str) -> Option<String> {
    let r = http(addr, "GET", "/index.html", None).ok()?;
    (r.status == 200).then(|| r.text().trim().to_string())
}

#[test]
fn the_docker_cli_runs_the_first_swarm_exercise() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(3);
    let d = cli(&c);
    eprintln!("docker CLI {} at {}", d.client_version(), d.bin.display());

    // docker node ls: the three nodes, this one marked, its leadership shown.
    let nodes = d.ok(&["node", "ls"]);
    let lines: Vec<&str> = nodes.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{nodes}");
    assert!(lines.iter().any(|l| l.contains(" * ") && l.contains("node1") && l.contains("Leader")), "{nodes}");
    for h in ["node2", "node3"] {
        assert!(lines.iter().any(|l| l.contains(h) && l.contains("Ready") && l.contains("Active")), "{nodes}");
    }
    let info = d.ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}} {{.Swarm.Managers}}",
    ]);
    assert_eq!(info.trim(), "active true 3 1");

    // pingpong, verbatim, with the CLI's progress display until converged.
    let out = d.run(&[
        "service",
        "create",
        "--name",
        "pingpong",
        "--replicas",
        "6",
        busybox_image(),
        "sh",
        "-c",
        "while true; do echo ping from $(hostname); sleep 1; done",
    ]);
    assert!(out.success() && out.stdout.contains("converged"), "{out}");
    wait_spread(&c, "pingpong", &[("node1", 2), ("node2", 2), ("node3", 2)]);
    let ps = d.ok(&["service", "ps", "pingpong"]);
    assert_eq!(ps.lines().filter(|l| l.contains("Running") && l.contains("pingpong.")).count(), 6, "{ps}");
    let ls = d.ok(&["service", "ls"]);
    assert!(ls.lines().any(|l| l.contains("pingpong") && l.contains("6/6")), "{ls}");

    // Logs from every node, each line prefixed with its task and node.
    wait_for(Duration::from_secs(30), "pingpong's logs from every node", || {
        let out = d.run_for(Duration::from_secs(20), &["service", "logs", "--tail", "2", "pingpong"]);
        let text = format!("{}{}", out.stdout, out.stderr);
        let from: BTreeSet<&str> = ["node1", "node2", "node3"]
            .into_iter()
            .filter(|h| {
                text.lines()
                    .any(|l| l.starts_with("pingpong.") && l.contains(&format!("@{h}")) && l.contains("| ping from"))
            })
            .collect();
        if out.success() && from.len() == 3 {
            Ok(())
        } else {
            Err(format!("{out}"))
        }
    });

    // Scale, waiting like the CLI does.
    let out = d.run(&["service", "scale", "pingpong=9"]);
    assert!(out.success() && out.stdout.contains("converged"), "{out}");
    wait_spread(&c, "pingpong", &[("node1", 3), ("node2", 3), ("node3", 3)]);

    // A published port answers on every node and spreads over the tasks.
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "search",
        "--replicas",
        "5",
        "--publish",
        "9200:9200",
        busybox_image(),
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 9200 -h /www",
    ]);
    wait_for(CONVERGE, "5 running containers of search", || {
        let n = running("search").len();
        if n == 5 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    let ls = d.ok(&["service", "ls"]);
    assert!(ls.lines().any(|l| l.contains("search") && l.contains("*:9200->9200/tcp")), "{ls}");
    let pages: BTreeSet<String> = wait_for(Duration::from_secs(30), "answers from several tasks on 9200", || {
        let pages: BTreeSet<String> =
            (0..10).filter_map(|i| get_page(&format!("{}:9200", c.addr(1 + i % 3)))).collect();
        if pages.len() >= 2 {
            Ok(pages)
        } else {
            Err(format!("{pages:?}"))
        }
    });
    let ids: BTreeSet<String> = running("search").iter().map(|r| r.id[..12].to_string()).collect();
    assert!(pages.is_subset(&ids), "pages {pages:?} come from the service's containers {ids:?}");

    // Drain: node3's tasks move to the others.
    d.ok(&["node", "update", "--availability", "drain", "node3"]);
    wait_for(CONVERGE, "9 pingpong containers, none on node3", || {
        let m = per_node(&c, "pingpong");
        if m.values().sum::<usize>() == 9 && !m.contains_key("node3") {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    });
    let nodes = d.ok(&["node", "ls"]);
    assert!(nodes.lines().any(|l| l.contains("node3") && l.contains("Drain")), "{nodes}");
    d.ok(&["node", "update", "--availability", "active", "node3"]);

    // A rolling update two at a time with a delay, then a rollback.
    let out = d.run(&[
        "service",
        "update",
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--env-add",
        "GREETING=hi",
        "pingpong",
    ]);
    assert!(out.success() && out.stdout.contains("converged"), "{out}");
    wait_for(CONVERGE, "9 running pingpong containers with GREETING=hi", || {
        let rows = running("pingpong");
        let updated = rows.iter().filter(|r| container_env(&r.id).contains(&"GREETING=hi".to_string())).count();
        if rows.len() == 9 && updated == 9 {
            Ok(())
        } else {
            Err(format!("{updated} of {}", rows.len()))
        }
    });
    let spec = d.ok(&["service", "inspect", "pingpong", "--format", "{{json .Spec}}"]);
    let spec: Value = serde_json::from_str(spec.trim()).unwrap();
    assert_eq!(spec["UpdateConfig"]["Parallelism"], 2, "{spec}");
    assert_eq!(spec["UpdateConfig"]["Delay"], 1_000_000_000i64, "{spec}");
    assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Env"], json!(["GREETING=hi"]), "{spec}");
    let out = d.run(&["service", "rollback", "-d", "pingpong"]);
    assert!(out.success(), "{out}");
    wait_for(CONVERGE, "9 running pingpong containers without GREETING", || {
        let rows = running("pingpong");
        let updated = rows.iter().filter(|r| container_env(&r.id).contains(&"GREETING=hi".to_string())).count();
        if rows.len() == 9 && updated == 0 {
            Ok(())
        } else {
            Err(format!("{updated} of {} still updated", rows.len()))
        }
    });

    // Promote and demote through the CLI.
    assert!(d.ok(&["node", "promote", "node2"]).contains("promoted"));
    let nodes = d.ok(&["node", "ls"]);
    assert!(nodes.lines().any(|l| l.contains("node2") && l.contains("Reachable")), "{nodes}");
    assert!(d.ok(&["node", "demote", "node2"]).contains("demoted"));

    // swarm init says what to do instead; a join token is shoal's.
    d.fails(&["swarm", "init"], "shoal daemon --init");
    let token = d.ok(&["swarm", "join-token", "-q", "worker"]);
    assert!(c.shoal_ok(&["join-token", "worker"]).contains(token.trim()), "{token}");

    // Remove everything the way Swarm users do.
    let out = d.sh("docker service ls -q | xargs docker service rm");
    assert!(out.success(), "{out}");
    assert_eq!(d.ok(&["service", "ls", "-q"]).trim(), "");
    wait_for(CONVERGE, "no containers of pingpong or search", || {
        let n = running("pingpong").len() + running("search").len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} left"))
        }
    });
}

#[test]
fn every_docker_cli_on_the_machine_works_and_bad_calls_get_dockers_errors() {
    if !require_docker() {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(1, 1));
    let api = c.api_addr(1);
    for bin in docker_clients() {
        let d = EngineCli::new(&bin, &format!("tcp://{api}"));
        let name = format!("old{}", d.client_version().split('.').next().unwrap_or("x"));
        eprintln!("docker CLI {} at {}", d.client_version(), bin.display());
        let v = d.ok(&["version", "--format", "{{.Server.APIVersion}} {{.Server.Os}}"]);
        assert_eq!(v.trim(), "1.47 linux");
        let out = d.run(&[
            "service",
            "create",
            "--detach=false",
            "--name",
            &name,
            "--replicas",
            "2",
            busybox_image(),
            "sh",
            "-c",
            "echo up; sleep 100000",
        ]);
        assert!(out.success(), "{out}");
        wait_for(CONVERGE, "2 running containers", || {
            let n = running(&name).len();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        });
        // The cluster's events, as `docker events` shows them (bounded by --until).
        let until =
            format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1);
        let events = d.ok(&[
            "events",
            "--since",
            "10m",
            "--until",
            &until,
            "--filter",
            "type=service",
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
        ]);
        assert!(events.lines().any(|l| l == format!("service create {name}")), "{events}");
        assert!(!events.lines().any(|l| l.starts_with("node ")), "filtered to services: {events}");
        let ps = d.ok(&["service", "ps", &name]);
        assert_eq!(ps.lines().filter(|l| l.contains("Running")).count(), 2, "{ps}");
        wait_for(Duration::from_secs(30), "its logs", || {
            let out = d.run_for(Duration::from_secs(20), &["service", "logs", &name]);
            if out.stdout.matches("| up").count() == 2 {
                Ok(())
            } else {
                Err(format!("{out}"))
            }
        });
        let insp =
            d.ok(&["service", "inspect", &name, "--format", "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.Name}}"]);
        assert_eq!(insp.trim(), format!("2 {name}"));
        d.fails(&["service", "inspect", "nope"], "no such service: nope");
        d.fails(&["service", "create", "--name", &name, busybox_image()], "already in use");
        d.ok(&["service", "rm", &name]);
        wait_for(CONVERGE, "its containers gone", || {
            let n = containers_with_label("shoal.service.name", &name).len();
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        });
        // Not part of what shoal serves: a clear error, not a hang.
        d.fails(&["ps"], "shoal serves the Swarm part of the Docker Engine API only");
    }

    // Raw calls: versions, bodies, specs, stale versions, unknown objects.
    let before = http(&api, "GET", "/services", None).unwrap().json();
    let check = |method: &str, path: &str, body: Option<&[u8]>, status: u16, message: &str| {
        let r = http(&api, method, path, body).unwrap();
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let got = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(got.contains(message), "{method} {path}: {got:?} lacks {message:?}");
        assert_eq!(r.header("api-version"), Some("1.47"));
    };
    check("GET", "/v1.99/services", None, 400, "client version 1.99 is too new. Maximum supported API version is 1.47");
    check("GET", "/v1.12/services", None, 400, "client version 1.12 is too old. Minimum supported API version is 1.24");
    check("POST", "/v1.47/services/create", Some(b"{not json"), 400, "invalid JSON");
    let huge = format!("{{\"Name\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    check("POST", "/v1.47/services/create", Some(huge.as_bytes()), 413, "request body is larger than");
    let empty_image = json!({"Name": "bad", "TaskTemplate": {"ContainerSpec": {"Image": ""}}}).to_string();
    check("POST", "/v1.47/services/create", Some(empty_image.as_bytes()), 400, "the image name must not be empty");
    // Jobs are served now (tests/tests/jobs.rs); a mount type shoal does not run is not.
    let npipe = json!({"Name": "bad", "TaskTemplate": {"ContainerSpec": {"Image": "i",
        "Mounts": [{"Type": "npipe", "Source": "p", "Target": "/p"}]}}});
    check("POST", "/v1.47/services/create", Some(npipe.to_string().as_bytes()), 400, "is not supported by shoal yet");
    check("GET", "/v1.47/services/nope", None, 404, "service nope not found");
    check("GET", "/v1.47/tasks/nope", None, 404, "task nope not found");
    check("GET", "/v1.47/nodes/nope", None, 404, "node nope not found");
    check("GET", "/v1.47/tasks?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D", None, 400, "invalid filter 'bogus'");
    // The Python SDK's casing, then an update for a version that is gone.
    let sent = json!({"name": "web", "taskTemplate": {"containerSpec": {"image": busybox_image(), "args": ["sleep", "100000"]}},
                      "mode": {"replicated": {"replicas": 1}}});
    let r = http(&api, "POST", "/v1.47/services/create", Some(sent.to_string().as_bytes())).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["ID"].as_str().unwrap().to_string();
    let svc = http(&api, "GET", &format!("/v1.47/services/{id}"), None).unwrap().json();
    assert_eq!(svc["Spec"]["Mode"], json!({"Replicated": {"Replicas": 1}}), "{svc}");
    let version = svc["Version"]["Index"].as_u64().unwrap();
    let mut spec = svc["Spec"].clone();
    spec["Mode"]["Replicated"]["Replicas"] = json!(2);
    let r = http(
        &api,
        "POST",
        &format!("/v1.47/services/{id}/update?version={version}"),
        Some(spec.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!((r.status, r.json()), (200, json!({"Warnings": null})));
    spec["Mode"]["Replicated"]["Replicas"] = json!(7);
    check(
        "POST",
        &format!("/v1.47/services/{id}/update?version={version}"),
        Some(spec.to_string().as_bytes()),
        409,
        "update out of sequence",
    );
    let now = http(&api, "GET", &format!("/services/{id}"), None).unwrap().json();
    assert_eq!(now["Spec"]["Mode"]["Replicated"]["Replicas"], 2, "the stale update changed nothing");
    wait_for(CONVERGE, "2 running containers of web", || {
        let n = running("web").len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    let after = http(&api, "GET", "/services", None).unwrap().json();
    assert_eq!(after.as_array().unwrap().len(), before.as_array().unwrap().len() + 1, "only web was created");
}

/// What a task writes to stderr comes back on stderr, through both front
/// ends: `docker service logs` (stream 2 of the multiplexed framing) and
/// `shoal service logs`, each with the docker CLI's own demultiplexing.
#[test]
fn service_logs_keep_stdout_and_stderr_apart_in_docker_and_shoal() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let d = cli(&c);
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "streams",
        "--replicas",
        "2",
        busybox_image(),
        "sh",
        "-c",
        "echo out; echo err >&2; exec sleep 100000",
    ]);
    let lines = |text: &str, word: &str| text.lines().filter(|l| l.ends_with(&format!("| {word}"))).count();
    wait_for(CONVERGE, "docker service logs: out on stdout, err on stderr", || {
        let o = d.run_for(Duration::from_secs(20), &["service", "logs", "streams"]);
        let ok = o.success()
            && lines(&o.stdout, "out") == 2
            && lines(&o.stderr, "err") == 2
            && lines(&o.stdout, "err") == 0
            && lines(&o.stderr, "out") == 0;
        ok.then_some(()).ok_or(o.to_string())
    });
    // Only one stream asked for: only its lines (the raw API; the CLI asks for both).
    let svc = d.ok(&["service", "inspect", "streams", "--format", "{{.ID}}"]);
    let r = http(&c.api_addr(1), "GET", &format!("/v1.47/services/{}/logs?stderr=1", svc.trim()), None).unwrap();
    assert_eq!(r.status, 200);
    let (mut streams, mut rest) = (Vec::new(), &r.body[..]);
    while rest.len() >= 8 {
        let n = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
        streams.push((rest[0], String::from_utf8_lossy(&rest[8..8 + n]).trim().to_string()));
        rest = &rest[8 + n..];
    }
    assert_eq!(streams, vec![(2, "err".to_string()), (2, "err".to_string())], "stderr only");
    let o = c.shoal(&["service", "logs", "streams"]);
    assert!(o.success(), "{o}");
    assert_eq!((lines(&o.stdout, "out"), lines(&o.stdout, "err")), (2, 0), "{o}");
    assert_eq!((lines(&o.stderr, "err"), lines(&o.stderr, "out")), (2, 0), "{o}");
    // docker's formatting flags, the same text from both CLIs.
    for flags in [&["--raw"][..], &["--no-task-ids"], &["--no-resolve"], &["--no-task-ids", "--no-resolve"]] {
        let args = [&["service", "logs"][..], flags, &["streams"]].concat();
        let (ours, theirs) = (c.shoal(&args), d.run_for(Duration::from_secs(20), &args));
        assert!(ours.success() && theirs.success(), "{flags:?}: {ours}\n{theirs}");
        let sorted = |t: &str| {
            let mut v: Vec<String> = t.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&ours.stdout), sorted(&theirs.stdout), "{flags:?}");
        assert_eq!(sorted(&ours.stdout).len(), 2, "{flags:?}: {ours}");
    }
    // --since: the lines are older than a minute from now, newer than an hour ago.
    let in_a_minute = (std::time::SystemTime::now() + Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let o = c.shoal(&["service", "logs", "--since", &in_a_minute, "streams"]);
    assert!(o.success() && o.stdout.trim().is_empty() && o.stderr.trim().is_empty(), "{o}");
    let o = c.shoal(&["service", "logs", "--since", "1h", "streams"]);
    assert_eq!(lines(&o.stdout, "out"), 2, "{o}");
    let o = c.shoal(&["service", "logs", "--since", "yesterday", "streams"]);
    assert!(!o.success() && o.stderr.contains("invalid --since \"yesterday\""), "{o}");
    d.ok(&["service", "rm", "streams"]);
}

#[test]
fn the_visualizers_calls_answer_what_it_reads() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    c.create_service("viz", &["-d", "--replicas", "2"], &["sleep", "100000"]);
    c.wait_running("viz", 2, CONVERGE);
    let api = c.api_addr(1);
    let ping = http(&api, "HEAD", "/_ping", None).unwrap();
    assert_eq!(
        (ping.status, ping.header("swarm"), ping.header("api-version")),
        (200, Some("active/manager"), Some("1.47"))
    );
    let ping = http(&c.api_addr(2), "GET", "/_ping", None).unwrap();
    assert_eq!((ping.status, ping.header("swarm"), ping.text().as_str()), (200, Some("active/worker"), "OK"));
    let r = http(&c.api_addr(2), "GET", "/nodes", None).unwrap();
    assert_eq!(r.status, 503, "a worker refuses cluster calls: {}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("This node is not a swarm manager"));

    // Unversioned, as the visualizer polls them.
    let nodes = http(&api, "GET", "/nodes", None).unwrap().json();
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(n["Status"]["State"], "ready", "{n}");
        assert!(n["ID"].as_str().is_some_and(|s| s.len() == 25), "{n}");
        assert!(n["Description"]["Hostname"].as_str().unwrap().starts_with("node"), "{n}");
        assert!(n["Description"]["Resources"]["MemoryBytes"].is_u64(), "{n}");
        assert!(n["Description"]["Platform"]["OS"].is_string(), "{n}");
        assert!(matches!(n["Spec"]["Role"].as_str(), Some("manager" | "worker")), "{n}");
        assert!(n["Spec"]["Labels"].is_object(), "{n}");
    }
    let services = http(&api, "GET", "/services", None).unwrap().json();
    let viz = services.as_array().unwrap().iter().find(|s| s["Spec"]["Name"] == "viz").expect("viz listed").clone();
    let tasks = http(&api, "GET", "/tasks", None).unwrap().json();
    let tasks: Vec<&Value> = tasks.as_array().unwrap().iter().filter(|t| t["ServiceID"] == viz["ID"]).collect();
    let in_docker: BTreeSet<String> = running("viz").into_iter().map(|r| r.id).collect();
    let reported: BTreeSet<String> = tasks
        .iter()
        .filter(|t| t["Status"]["State"] == "running")
        .map(|t| t["Status"]["ContainerStatus"]["ContainerID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reported, in_docker, "the tasks name the containers Docker runs");
    let node_ids: BTreeSet<&str> = nodes.iter().map(|n| n["ID"].as_str().unwrap()).collect();
    for t in &tasks {
        assert!(node_ids.contains(t["NodeID"].as_str().unwrap()), "{t}");
        assert!(t["UpdatedAt"].as_str().unwrap().ends_with('Z'), "{t}");
        assert_eq!(t["Spec"]["ContainerSpec"]["Image"], busybox_image(), "{t}");
        assert_eq!(t["Spec"]["ContainerSpec"]["Args"], json!(["sleep", "100000"]), "{t}");
        assert_eq!(t["DesiredState"], "running");
        assert!(t["Slot"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn the_engine_api_is_served_on_a_unix_socket_too() {
    if !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let mut spec = ClusterSpec::new(1, 0);
    spec.daemon_args = vec!["--docker-socket".into(), sock.display().to_string()];
    let c = Cluster::start(spec);
    let bin = docker_clients().into_iter().next().expect("a docker CLI");
    let d = EngineCli::new(&bin, &format!("unix://{}", sock.display()));
    let nodes = d.ok(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]);
    assert_eq!(nodes.trim(), "node1 Leader");
    d.ok(&["service", "create", "-d", "--name", "sock", busybox_image(), "sleep", "100000"]);
    wait_for(CONVERGE, "the service's container", || {
        let n = running("sock").len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    drop(c);
}

#[test]
fn the_docker_sdk_for_python_drives_services_tasks_and_nodes() {
    if !require_docker() || !tests::require_python_sdk() {
        return;
    }
    let c = Cluster::new(2);
    let script = tests::workspace_root().join("tests/python/docker_sdk.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .env("SHOAL_DOCKER_HOST", format!("tcp://{}", c.api_addr(1)))
        .env("SHOAL_IMAGE", busybox_image())
        .env_remove("DOCKER_HOST");
    let out = tests::run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap();
    drop(c);
    // The Docker networks of `sdknet`, should the script stop before removing it.
    for name in docker(&["network", "ls", "--format", "{{.Name}}"]).stdout.lines() {
        if name.starts_with("shoal-sdknet-") {
            docker(&["network", "rm", name]);
        }
    }
    assert!(out.success() && out.stdout.contains("all checks passed"), "{out}");
}

/// The Docker Go SDK (`github.com/docker/docker/client`, Debian's package)
/// through ping, info, nodes, a service's create/inspect/update (with a
/// stale version too)/list/remove and its tasks: `tests/go/swarm_client`.
#[test]
fn the_docker_sdk_for_go_drives_services_tasks_and_nodes() {
    if !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = tests::build_go_program("swarm_client", dir.path()) else { return };
    let c = Cluster::new(2);
    let mut cmd = std::process::Command::new(&bin);
    cmd.env("SHOAL_DOCKER_HOST", format!("tcp://{}", c.api_addr(1)))
        .env("SHOAL_IMAGE", busybox_image())
        .env("SHOAL_NODES", "2")
        .env_remove("DOCKER_HOST");
    let out = tests::run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap();
    assert!(out.success() && out.stdout.contains("all checks passed"), "{out}");
}

#[test]
fn the_docker_cli_manages_overlay_networks_and_services_join_them() {
    if !require_docker() {
        return;
    }
    // Names no other test of this file uses: they share the Docker engine.
    let c = Cluster::new(1);
    let d = cli(&c);
    let id = d.ok(&["network", "create", "-d", "overlay", "--subnet", "10.77.0.0/16", "--label", "team=a", "app"]);
    assert!(!id.trim().is_empty(), "prints the id: {id}");
    let ls = d.ok(&["network", "ls"]);
    assert!(ls.lines().any(|l| l.contains(" app ") && l.contains("overlay") && l.contains("swarm")), "{ls}");
    let insp = d.ok(&[
        "network",
        "inspect",
        "app",
        "--format",
        "{{.Driver}} {{(index .IPAM.Config 0).Subnet}} {{.Labels.team}}",
    ]);
    assert_eq!(insp.trim(), "overlay 10.77.0.0/16 a");
    // The same network through shoal's own CLI.
    assert!(c.shoal_ok(&["network", "ls"]).contains("app"));
    // docker asks for a bridge unless told: refused, with what to do.
    d.fails(&["network", "create", "plain"], "use `docker network create -d overlay plain`");
    d.fails(&["network", "inspect", "nope"], "not found");

    d.ok(&["service", "create", "-d", "--name", "netweb", "--network", "app", busybox_image(), "sleep", "100000"]);
    let vips = d.ok(&["service", "inspect", "netweb", "--format", "{{json .Endpoint.VirtualIPs}}"]);
    assert!(vips.contains(id.trim()) && vips.contains("10.77."), "a VIP on app: {vips}");
    d.fails(&["network", "rm", "app"], "is in use by service netweb");
    d.ok(&["service", "rm", "netweb"]);
    d.ok(&["network", "rm", "app"]);
    assert!(!d.ok(&["network", "ls"]).contains(" app "));
    // Both show in `docker events --filter type=network`, and nothing else does.
    let until =
        format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1);
    let events = d.ok(&[
        "events",
        "--since",
        "10m",
        "--until",
        &until,
        "--filter",
        "type=network",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.type}}",
    ]);
    let lines: Vec<&str> = events.lines().collect();
    assert_eq!(lines, ["network create app overlay", "network remove app overlay"], "{events}");
}

/// `shoal daemon --init --default-addr-pool … --default-addr-pool-mask-length`
/// (`docker swarm init`'s flags): networks without --subnet get their range
/// from those pools, and `docker info` shows them; a mask the pools cannot
/// take stops the daemon before it makes anything.
#[test]
fn the_default_address_pools_chosen_at_init_give_networks_their_ranges() {
    if !require_docker() {
        return;
    }
    let mut spec = ClusterSpec::new(1, 0);
    spec.init_args = ["--default-addr-pool", "10.88.0.0/23", "--default-addr-pool", "10.89.4.0/24"]
        .into_iter()
        .chain(["--default-addr-pool-mask-length", "24"])
        .map(String::from)
        .collect();
    let c = Cluster::start(spec);
    let d = cli(&c);
    let info = d.ok(&["info", "--format", "{{.Swarm.Cluster.DefaultAddrPool}} {{.Swarm.Cluster.SubnetSize}}"]);
    assert_eq!(info.trim(), "[10.88.0.0/23 10.89.4.0/24] 24");
    for (name, want) in [("pool1", "10.88.0.0/24"), ("pool2", "10.88.1.0/24"), ("pool3", "10.89.4.0/24")] {
        c.shoal_ok(&["network", "create", name]);
        let got = d.ok(&["network", "inspect", name, "--format", "{{(index .IPAM.Config 0).Subnet}}"]);
        assert_eq!(got.trim(), want, "{name}");
    }
    c.shoal_fails(
        &["network", "create", "pool4"],
        "no free /24 left in the default address pool 10.88.0.0/23, 10.89.4.0/24 (3 networks use it)",
    );
    // An explicit --subnet outside the pools is still taken.
    c.shoal_ok(&["network", "create", "--subnet", "10.90.0.0/16", "own"]);

    let dir = tempfile_dir("bad-pool");
    let mut cmd = std::process::Command::new(tests::shoal_bin());
    cmd.args(["daemon", "--init", "--advertise-addr", "127.0.0.1", "--port", "1", "--data-dir"]).arg(&dir).args([
        "--default-addr-pool",
        "10.0.0.0/8",
        "--default-addr-pool-mask-length",
        "27",
    ]);
    let out = tests::run_with_timeout(&mut cmd, Duration::from_secs(30)).unwrap();
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("invalid --default-addr-pool-mask-length 27: a network's subnet must be /8 to /26"),
        "{out}"
    );
    let written = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(written, 0, "the daemon wrote to {}", dir.display());
}

#[test]
fn docker_stack_deploy_creates_the_network_secrets_and_services_and_stack_rm_removes_them() {
    if !require_docker() {
        return;
    }
    // One node: the nodes of this harness share one Docker engine, where a
    // second node's copy of the stack's network would collide with the
    // first's (tests/tests/networks.rs runs networks on real hosts).
    let c = Cluster::new(1);
    let d = cli(&c);
    let dir = tempfile_dir("stack");
    std::fs::write(dir.join("pw.txt"), "s3cret-value\n").unwrap();
    let compose = format!(
        "version: \"3.8\"\n\
         services:\n\
         \x20 web:\n\
         \x20   image: {img}\n\
         \x20   command: [\"sh\", \"-c\", \"cat /run/secrets/pw; exec sleep 100000\"]\n\
         \x20   secrets: [pw]\n\
         \x20   deploy:\n\
         \x20     replicas: 2\n\
         \x20 worker:\n\
         \x20   image: {img}\n\
         \x20   command: [\"sleep\", \"100000\"]\n\
         secrets:\n\
         \x20 pw:\n\
         \x20   file: ./pw.txt\n",
        img = busybox_image()
    );
    std::fs::write(dir.join("compose.yml"), compose).unwrap();
    let file = dir.join("compose.yml");
    let out = d.run_for(CONVERGE, &["stack", "deploy", "-c", file.to_str().unwrap(), "st"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("Creating network st_default"), "{out}");
    assert!(
        out.stdout.contains("Creating service st_web") && out.stdout.contains("Creating service st_worker"),
        "{out}"
    );
    let nets = d.ok(&["network", "ls"]);
    assert!(nets.contains("st_default"), "{nets}");
    let stacks = d.ok(&["stack", "ls"]);
    assert!(stacks.lines().any(|l| l.starts_with("st ") && l.contains('2')), "{stacks}");
    c.wait_running("st_web", 2, CONVERGE);
    c.wait_running("st_worker", 1, CONVERGE);
    let ps = d.ok(&["stack", "services", "st"]);
    assert!(ps.contains("st_web") && ps.contains("2/2"), "{ps}");
    wait_for(CONVERGE, "the secret read inside a task", || {
        let logs = d.run_for(Duration::from_secs(20), &["service", "logs", "st_web"]);
        (logs.stdout.matches("s3cret-value").count() == 2).then_some(()).ok_or(logs.to_string())
    });
    // Deploying again updates in place.
    let again = d.run_for(CONVERGE, &["stack", "deploy", "-c", file.to_str().unwrap(), "st"]);
    assert!(again.status.success() && again.stdout.contains("Updating service st_web"), "{again}");

    let rm = d.run_for(CONVERGE, &["stack", "rm", "st"]);
    assert!(rm.status.success(), "{rm}");
    wait_for(CONVERGE, "the stack gone", || {
        let ls = d.ok(&["service", "ls"]);
        let nets = d.ok(&["network", "ls"]);
        (!ls.contains("st_") && !nets.contains("st_default")).then_some(()).ok_or(format!("{ls}{nets}"))
    });
    assert!(!d.ok(&["secret", "ls"]).contains("st_pw"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system temp dir.
fn tempfile_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-{what}-{}-{}", std::process::id(), common_nanos()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn common_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
