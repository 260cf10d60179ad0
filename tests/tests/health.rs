//! Health checks, as Swarm runs them: a task with a check counts as running
//! only once Docker calls its container healthy, an unhealthy one is shut
//! down and replaced, the image's own HEALTHCHECK applies unless
//! `--no-healthcheck`, and a rolling update to a spec whose check never
//! passes stops (here: rolls back) while the routing mesh never sends a
//! request to the unhealthy task. Real `shoal`, real Docker.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{busybox_image, docker, require_docker, running_tasks, task_state, wait_for, Cluster};

const CONVERGE: Duration = Duration::from_secs(60);
/// Answers HTTP with its container's hostname (its short ID).
const HOSTNAME_HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

fn inspect_container(id: &str) -> Value {
    let out = docker(&["inspect", id]).ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("docker inspect json");
    v[0].clone()
}

/// Docker's `2024-05-01T12:00:00.123456789Z` as epoch milliseconds.
fn docker_time_ms(s: &str) -> u64 {
    let out = std::process::Command::new("date").args(["-d", s, "+%s%3N"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a time")
}

#[test]
fn a_task_runs_once_healthy_and_is_replaced_when_its_check_starts_failing() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    c.create_service(
        "hc",
        &[
            "-d",
            "--health-cmd",
            "test ! -f /tmp/bad",
            "--health-interval",
            "1s",
            "--health-timeout",
            "1s",
            "--health-retries",
            "2",
            "--restart-delay",
            "1s",
        ],
        &["sh", "-c", "sleep 10; touch /tmp/bad; exec sleep 100000"],
    );
    let first = wait_for(CONVERGE, "a healthy task", || {
        let running = running_tasks(&c.service_tasks("hc"));
        match running.as_slice() {
            [t] if t["status"]["health"] == "healthy" => Ok(t.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let ps = c.shoal_ok(&["service", "ps", "hc"]);
    assert!(ps.contains("Running (healthy)"), "{ps}");
    let cid = first["status"]["container_id"].as_str().expect("container id").to_string();
    let ctr = inspect_container(&cid);
    assert_eq!(ctr["Config"]["Healthcheck"]["Test"], json!(["CMD-SHELL", "test ! -f /tmp/bad"]));
    assert_eq!(ctr["Config"]["Healthcheck"]["Interval"], 1_000_000_000i64);
    assert_eq!(ctr["Config"]["Healthcheck"]["Retries"], 2);
    // RUNNING only from the first passing probe, a second after the start.
    let started = docker_time_ms(ctr["State"]["StartedAt"].as_str().expect("started"));
    let running_at = first["status"]["timestamp"].as_u64().expect("timestamp");
    assert!(running_at >= started + 900, "running at {running_at}, container started at {started}");

    // Ten seconds in, the check fails: the task fails with Swarm's error,
    // its container is stopped, and a new task takes the slot.
    let first_id = first["id"].clone();
    let replaced = wait_for(CONVERGE, "the unhealthy task replaced by a healthy one", || {
        let tasks = c.service_tasks("hc");
        let old = tasks.as_array().into_iter().flatten().find(|t| t["id"] == first_id).cloned().unwrap_or_default();
        let new: Vec<Value> = running_tasks(&tasks)
            .into_iter()
            .filter(|t| t["id"] != first_id && t["status"]["health"] == "healthy")
            .collect();
        if task_state(&old) == "failed" && new.len() == 1 {
            Ok(old)
        } else {
            Err(format!("old {}: {}, {} new healthy", task_state(&old), old["status"]["err"], new.len()))
        }
    });
    assert_eq!(replaced["status"]["err"], "dockerexec: unhealthy container");
    let failed_at = replaced["status"]["timestamp"].as_u64().expect("timestamp");
    assert!(failed_at >= started + 10_000, "failed {}ms after the start", failed_at - started);
    wait_for(CONVERGE, "the unhealthy container stopped", || {
        let st = inspect_container(&cid);
        match st["State"]["Status"].as_str() {
            Some("exited") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let ps = c.shoal_ok(&["service", "ps", "hc"]);
    assert!(ps.contains("\"dockerexec: unhealthy contain…\""), "{ps}");
}

#[test]
fn the_images_own_healthcheck_applies_unless_switched_off() {
    if !require_docker() {
        return;
    }
    // An image with a HEALTHCHECK of its own, made offline from busybox.
    let maker = format!("shoal-hc-image-{}", std::process::id());
    docker(&["create", "--name", &maker, busybox_image(), "true"]).ok();
    let image = "shoal/busybox:own-healthcheck";
    let committed = docker(&["commit", "--change", "HEALTHCHECK --interval=1s CMD true", &maker, image]);
    docker(&["rm", "-f", &maker]).ok();
    assert!(committed.success(), "{committed}");

    let c = Cluster::new(1);
    c.shoal_ok(&["service", "create", "-d", "--name", "own", image, "sleep", "100000"]);
    c.shoal_ok(&["service", "create", "-d", "--name", "off", "--no-healthcheck", image, "sleep", "100000"]);
    for (svc, health) in [("own", json!("healthy")), ("off", Value::Null)] {
        let t =
            wait_for(CONVERGE, &format!("{svc} running"), || match running_tasks(&c.service_tasks(svc)).as_slice() {
                [t] => Ok(t.clone()),
                other => Err(format!("{other:?}")),
            });
        assert_eq!(t["status"]["health"], health, "{svc}: {t}");
    }
    let off = running_tasks(&c.service_tasks("off"));
    let ctr = inspect_container(off[0]["status"]["container_id"].as_str().expect("cid"));
    assert_eq!(ctr["Config"]["Healthcheck"]["Test"], json!(["NONE"]));
    assert!(ctr["State"]["Health"].is_null(), "{}", ctr["State"]);

    // Docker's error texts, before anything is written.
    let bad = c.shoal(&["service", "create", "--health-interval", "soon", busybox_image()]);
    assert!(!bad.success());
    assert!(
        bad.stderr
            .contains("invalid argument \"soon\" for \"--health-interval\" flag: time: invalid duration \"soon\""),
        "{bad}"
    );
    let clash = c.shoal(&["service", "create", "--no-healthcheck", "--health-retries", "2", busybox_image()]);
    assert!(clash.stderr.contains("--no-healthcheck conflicts with --health-* options"), "{clash}");
    let ls = c.shoal_ok(&["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 2, "{ls}");
    drop(c);
    docker(&["rmi", image]);
}

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

#[test]
fn an_update_whose_health_check_never_passes_rolls_back_and_gets_no_traffic() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    c.create_service(
        "web",
        &[
            "-d",
            "--replicas",
            "2",
            "--publish",
            "9310:80",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "1s",
        ],
        &["sh", "-c", HOSTNAME_HTTPD],
    );
    c.wait_running("web", 2, CONVERGE);
    let addr = SocketAddr::new(c.addr(1).into(), 9310);
    wait_for(CONVERGE, "the mesh answering", || get(addr));

    // Every answer during the update, from a thread of its own.
    let answers = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (answers, stop) = (answers.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(body) = get(addr) {
                    answers.lock().unwrap_or_else(|e| e.into_inner()).push(body);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    c.shoal_ok(&[
        "service",
        "update",
        "-d",
        "--health-cmd",
        "false",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "web",
    ]);
    let began = Instant::now();
    let info = wait_for(CONVERGE, "the update rolled back", || {
        let info = c.shoal_json(&["service", "inspect", "web"]);
        match info[0]["update_status"]["state"].as_str() {
            Some("rollback_completed") => Ok(info[0].clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let message = info["update_status"]["message"].as_str().unwrap_or("");
    assert!(message.contains("update rolled back due to failure or early termination of task"), "{message}");
    assert!(info["spec"]["task"]["container"]["healthcheck"].is_null(), "{}", info["spec"]["task"]);
    c.wait_running("web", 2, CONVERGE);
    // Keep asking for a moment after the rollback, then stop.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");

    let tasks = c.service_tasks("web");
    let unhealthy: BTreeSet<String> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["status"]["err"] == "dockerexec: unhealthy container")
        .filter_map(|t| t["status"]["container_id"].as_str().map(|id| id[..12].to_string()))
        .collect();
    assert!(!unhealthy.is_empty(), "a task of the new spec went unhealthy: {tasks}");
    let answers = answers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(answers.len() >= 10, "the mesh kept answering during the update ({:?}): {answers:?}", began.elapsed());
    let hit: Vec<&String> = answers.iter().filter(|a| unhealthy.contains(*a)).collect();
    assert!(hit.is_empty(), "requests reached unhealthy tasks {hit:?} (unhealthy: {unhealthy:?})");
}
