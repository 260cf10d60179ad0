//! The task supervisor against the real Docker engine. Needs the offline
//! test image `shoal/busybox:latest` (see deploy/). Each test labels its
//! containers with a random node id and removes them when it ends, pass or
//! fail.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bollard::query_parameters::KillContainerOptions;
use futures::StreamExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::{timeout_at, Instant};

use common::ids::{NodeId, ServiceId, TaskId};
use common::spec::Mount;
use common::task::{Task, TaskState, TaskStatus, TaskStatusUpdate};
use worker::runtime::docker::DockerRuntime;
use worker::runtime::{ContainerState, Runtime, LABEL_NODE};
use worker::supervisor::{Assign, Logs, Stop, SupervisorConfig, TaskSupervisor};

const IMAGE: &str = "shoal/busybox:latest";
const DEADLINE: Duration = Duration::from_secs(30);

/// Removes every container labelled with the node when dropped.
struct Cleanup(NodeId);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_NODE}={}", self.0);
        let ids = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output();
        if let Ok(out) = ids {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).output();
            }
        }
    }
}

fn task(args: &[&str]) -> Task {
    let mut t: Task = serde_json::from_value(serde_json::json!({
        "id": TaskId::random(), "service_id": ServiceId::random(), "service_name": "itest", "slot": 1,
        "node_id": null,
        "spec": {"image": IMAGE, "restart": {"condition": "any", "delay_ms": 0, "max_attempts": null}},
        "desired_state": "running",
        "status": {"state": "assigned", "timestamp": 0},
        "created_at": 0
    }))
    .expect("a minimal task");
    t.spec.args = args.iter().map(|a| a.to_string()).collect();
    t.spec.stop_grace_ms = 1_000;
    t
}

async fn runtime() -> Arc<DockerRuntime> {
    Arc::new(docker().await)
}

async fn docker() -> DockerRuntime {
    let rt = DockerRuntime::connect().await.expect("docker");
    rt.client()
        .inspect_image(IMAGE)
        .await
        .unwrap_or_else(|e| panic!("{IMAGE} is missing ({e}); build it with deploy/'s offline image script"));
    rt
}

/// Docker events drive the supervisor; the poll is only a slow safety net,
/// so these tests are quick only while events work.
fn start(node: &NodeId, rt: &Arc<DockerRuntime>) -> (Addr<TaskSupervisor>, UnboundedReceiver<TaskStatusUpdate>) {
    let (tx, rx) = unbounded_channel();
    let config = SupervisorConfig { poll_every: Duration::from_secs(5), ..Default::default() };
    (TaskSupervisor::with_config(node.clone(), rt.clone(), tx, config).start(), rx)
}

/// Updates for `task` until one reaches `state`; panics at the deadline.
async fn wait_state(rx: &mut UnboundedReceiver<TaskStatusUpdate>, task: &TaskId, state: TaskState) -> Vec<TaskStatus> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(u)) if &u.task_id == task => {
                let done = u.status.state == state;
                seen.push(u.status);
                if done {
                    return seen;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("status channel closed"),
            Err(_) => panic!("timed out waiting for {state}; saw {seen:?}"),
        }
    }
}

async fn running_cid(rx: &mut UnboundedReceiver<TaskStatusUpdate>, task: &TaskId) -> String {
    let running = wait_state(rx, task, TaskState::Running).await.pop().expect("running");
    running.container_id.expect("running reports its container id")
}

#[actix::test]
async fn runs_a_task_and_reports_a_kill_as_failed_137() {
    let rt = runtime().await;
    let node = NodeId::random();
    let _cleanup = Cleanup(node.clone());
    let (addr, mut rx) = start(&node, &rt);
    let t = task(&["sleep", "1000"]);
    addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });

    let seen = wait_state(&mut rx, &t.id, TaskState::Running).await;
    let states: Vec<_> = seen.iter().map(|s| s.state).collect();
    use TaskState::*;
    assert_eq!(states, vec![Accepted, Preparing, Starting, Running]);
    let cid = seen.last().and_then(|s| s.container_id.clone()).expect("container id");

    let info = rt.client().inspect_container(&cid, None).await.expect("inspect");
    assert_eq!(info.name.as_deref(), Some(format!("/itest.1.{}", t.id).as_str()));
    let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get("shoal.node.id").map(String::as_str), Some(node.as_str()));
    assert_eq!(labels.get("shoal.task.id").map(String::as_str), Some(t.id.as_str()));
    assert_eq!(labels.get("shoal.service.id").map(String::as_str), Some(t.service_id.as_str()));
    assert_eq!(labels.get("shoal.service.name").map(String::as_str), Some("itest"));
    assert_eq!(labels.get("shoal.task.slot").map(String::as_str), Some("1"));

    rt.client().kill_container(&cid, None::<KillContainerOptions>).await.expect("docker kill");
    let failed = wait_state(&mut rx, &t.id, Failed).await.pop().expect("failed");
    assert_eq!(failed.exit_code, Some(137));
    assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (137)"));
    assert_eq!(failed.container_id.as_deref(), Some(cid.as_str()));

    // Never restarted: still the one, exited, container.
    let listed = rt.list(&node).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].container_id, cid);
    assert_eq!(listed[0].state, ContainerState::Exited);
    addr.do_send(Stop);
}

#[actix::test]
async fn a_missing_image_is_rejected_with_dockers_message() {
    let rt = runtime().await;
    let node = NodeId::random();
    let _cleanup = Cleanup(node.clone());
    let (addr, mut rx) = start(&node, &rt);
    let mut t = task(&[]);
    t.spec.image = "shoal/nope:latest".into();
    addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
    let rejected = wait_state(&mut rx, &t.id, TaskState::Rejected).await.pop().expect("rejected");
    let err = rejected.err.expect("err");
    eprintln!("docker said: {err}");
    assert!(err.starts_with("No such image: shoal/nope:latest: "), "{err}");
    assert!(rt.list(&node).await.expect("list").is_empty());
    addr.do_send(Stop);
}

#[actix::test]
async fn desired_shutdown_stops_the_container() {
    let rt = runtime().await;
    let node = NodeId::random();
    let _cleanup = Cleanup(node.clone());
    let (addr, mut rx) = start(&node, &rt);
    let mut t = task(&["sleep", "1000"]);
    addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
    let cid = running_cid(&mut rx, &t.id).await;

    t.status.state = TaskState::Running;
    t.desired_state = TaskState::Shutdown;
    addr.do_send(Assign { full: false, tasks: vec![t.clone()], removed: vec![] });
    let shut = wait_state(&mut rx, &t.id, TaskState::Shutdown).await.pop().expect("shutdown");
    assert_eq!(shut.container_id.as_deref(), Some(cid.as_str()));
    let info = rt.client().inspect_container(&cid, None).await.expect("inspect");
    assert_eq!(info.state.and_then(|s| s.running), Some(false));
    addr.do_send(Stop);
}

#[actix::test]
async fn an_unassigned_container_is_removed_after_a_full_set() {
    let rt = runtime().await;
    let node = NodeId::random();
    let _cleanup = Cleanup(node.clone());
    let (addr, mut rx) = start(&node, &rt);
    let t = task(&["sleep", "1000"]);
    addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
    let cid = running_cid(&mut rx, &t.id).await;

    addr.do_send(Assign { full: true, tasks: vec![], removed: vec![] });
    let deadline = Instant::now() + DEADLINE;
    loop {
        match rt.client().inspect_container(&cid, None).await {
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => break,
            _ => {
                assert!(Instant::now() < deadline, "container {cid} still there");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    addr.do_send(Stop);
}

#[actix::test]
async fn a_fresh_supervisor_adopts_a_running_container() {
    let rt = runtime().await;
    let node = NodeId::random();
    let _cleanup = Cleanup(node.clone());
    let (first, mut rx) = start(&node, &rt);
    let mut t = task(&["sleep", "1000"]);
    first.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
    let cid = running_cid(&mut rx, &t.id).await;
    first.send(Stop).await.expect("stop");

    // The manager's copy lags at STARTING: the new supervisor must say
    // RUNNING, about the same container.
    t.status.state = TaskState::Starting;
    let (second, mut rx) = start(&node, &rt);
    second.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
    let adopted = running_cid(&mut rx, &t.id).await;
    assert_eq!(adopted, cid);
    let listed = rt.list(&node).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, ContainerState::Running);
    second.do_send(Stop);
}

#[actix::test]
async fn logs_env_and_readonly_bind_mounts() {
    let rt = runtime().await;
    let node = NodeId::random();
    let _cleanup = Cleanup(node.clone());
    let dir = std::env::temp_dir().join(format!("shoal-itest-{node}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("file"), "x").expect("write");
    let (addr, mut rx) = start(&node, &rt);
    let mut t = task(&[
        "sh",
        "-c",
        "echo out $FOO; echo err >&2; (echo x > /data/new) 2>/dev/null || echo readonly; sleep 1000",
    ]);
    t.spec.env = vec!["FOO=bar".into()];
    t.spec.mounts = vec![Mount::bind(&dir.display().to_string(), "/data", true)];
    addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
    running_cid(&mut rx, &t.id).await;

    let deadline = Instant::now() + DEADLINE;
    let lines = loop {
        let stream =
            addr.send(Logs { task_id: t.id.clone(), follow: false, tail: None }).await.expect("mailbox").expect("logs");
        let lines: Vec<_> = stream.collect::<Vec<_>>().await.into_iter().map(|l| l.expect("log line")).collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut text: Vec<_> = lines.iter().map(|l| l.line.as_str()).collect();
    text.sort();
    assert_eq!(text.len(), 3, "{lines:?}");
    assert_eq!(text[0], "err");
    assert_eq!(text[1], "out bar");
    assert_eq!(text[2], "readonly");
    for l in &lines {
        assert_eq!(l.task_id, t.id);
        assert!(l.timestamp.ends_with('Z') && l.timestamp.contains('T'), "{l:?}");
    }
    assert!(!dir.join("new").exists());

    // Tail and follow: the last line, then the stream stays open.
    let mut follow =
        addr.send(Logs { task_id: t.id.clone(), follow: true, tail: Some(1) }).await.expect("mailbox").expect("logs");
    let first = tokio::time::timeout(DEADLINE, follow.next()).await.expect("a line").expect("item").expect("ok");
    assert!(text.contains(&first.line.as_str()));
    assert!(tokio::time::timeout(Duration::from_millis(300), follow.next()).await.is_err(), "follow ended early");
    addr.do_send(Stop);
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn published_ports_bind_on_the_advertise_address_and_are_reported() {
    use common::mesh::{HostPort, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An address of its own, as a test node would advertise.
    let ip: std::net::IpAddr = format!("127.0.{}.{}", 100 + rand_u8() % 100, 2 + rand_u8() % 250).parse().expect("ip");
    let rt = Arc::new(docker().await.publish_on(ip));
    let node = NodeId::random();
    let _cleanup = Cleanup(node.clone());
    let (addr, mut rx) = start(&node, &rt);
    let host_port = {
        let l = std::net::TcpListener::bind((ip, 0)).expect("free port");
        l.local_addr().expect("addr").port()
    };
    let mut t = task(&["sh", "-c", "mkdir -p /www && echo hi > /www/index.html && httpd -f -p 80 -h /www"]);
    t.spec.ports = vec![
        "8080:80".parse().expect("port"),
        format!("published={host_port},target=80,protocol=tcp,mode=host").parse().expect("port"),
    ];
    // Two publishes of one target would be one Docker key; use another.
    t.spec.ports[1].target = 81;
    addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
    let running = wait_state(&mut rx, &t.id, TaskState::Running).await.pop().expect("running");
    assert_eq!(running.ports.len(), 2, "{:?}", running.ports);
    let ingress = running.ports.iter().find(|p| p.target == 80).expect("80/tcp");
    assert_eq!(ingress.protocol, Protocol::Tcp);
    assert!(ingress.host_port >= 32768, "ephemeral: {ingress:?}");
    assert_eq!(
        running.ports.iter().find(|p| p.target == 81),
        Some(&HostPort { protocol: Protocol::Tcp, target: 81, host_port })
    );

    // Reachable on the advertise address at the reported port.
    let deadline = Instant::now() + DEADLINE;
    let body = loop {
        let got = async {
            let mut s = tokio::net::TcpStream::connect((ip, ingress.host_port)).await?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        }
        .await;
        match got {
            Ok(b) if b.contains("hi") => break b,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("no answer at {ip}:{}: {other:?}", ingress.host_port),
        }
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");

    // The same host-mode port again on this node: failed, clearly, once.
    let mut clash = task(&["sleep", "1000"]);
    clash.spec.ports = vec![format!("published={host_port},target=80,mode=host").parse().expect("port")];
    addr.do_send(Assign { full: false, tasks: vec![clash.clone()], removed: vec![] });
    let failed = wait_state(&mut rx, &clash.id, TaskState::Failed).await.pop().expect("failed");
    assert_eq!(
        failed.err.as_deref(),
        Some(format!("host port {ip}:{host_port}/tcp is already in use on this node").as_str())
    );

    // A fresh supervisor adopting the container reports the same ports.
    addr.send(Stop).await.expect("stop");
    let mut adopted = t.clone();
    adopted.status.state = TaskState::Starting;
    let (second, mut rx) = start(&node, &rt);
    second.do_send(Assign { full: true, tasks: vec![adopted.clone()], removed: vec![] });
    let again = wait_state(&mut rx, &t.id, TaskState::Running).await.pop().expect("running");
    assert_eq!(again.ports, running.ports);
    second.do_send(Stop);
}

fn rand_u8() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() as u8
}
