//! Jobs (`--mode replicated-job`, `global-job`): tasks run to completion,
//! at most `--max-concurrent` at once, are not replaced when they exit 0,
//! are retried per the restart policy when they fail, and run again on
//! `service update --force`. Real `shoal`, real Docker; one job also goes
//! through the stock docker CLI and its progress display.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tests::{docker, docker_clients, require_docker, task_state, wait_for, Cluster, EngineCli};

const DONE: Duration = Duration::from_secs(90);

/// Docker's start and finish of every container of service `svc` seen so
/// far, by container id (epoch ms; finish 0 while it runs).
fn record_containers(svc: &str, seen: &mut BTreeMap<String, (u64, u64)>) {
    let filter = format!("label=shoal.service.name={svc}");
    let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]).ok();
    for id in ids.stdout.split_whitespace() {
        let out = docker(&["inspect", "--format", "{{.State.StartedAt}} {{.State.FinishedAt}}", id]);
        let times: Vec<u64> = out.stdout.split_whitespace().map(docker_time_ms).collect();
        if let [start, finish] = times[..] {
            if start > 0 {
                seen.insert(id.to_string(), (start, finish));
            }
        }
    }
}

/// Docker's `2024-05-01T12:00:00.123456789Z` as epoch ms; 0 for Docker's
/// zero time (`0001-01-01…`, not started or not finished).
fn docker_time_ms(s: &str) -> u64 {
    if s.starts_with("0001-") {
        return 0;
    }
    let out = std::process::Command::new("date").args(["-d", s, "+%s%3N"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The most containers that ran at the same moment.
fn max_overlap(seen: &BTreeMap<String, (u64, u64)>) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for (start, finish) in seen.values() {
        edges.push((*start, 1));
        edges.push((if *finish == 0 { u64::MAX } else { *finish }, -1));
    }
    // An end before a start at the same instant: back-to-back is not overlap.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

fn tasks_in_state(tasks: &Value, state: &str) -> usize {
    tasks.as_array().into_iter().flatten().filter(|t| task_state(t) == state).count()
}

#[test]
fn a_replicated_job_runs_two_at_a_time_completes_and_reruns_on_force() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    c.create_service(
        "batch",
        &["-d", "--mode", "replicated-job", "--replicas", "6", "--max-concurrent", "2"],
        &["sh", "-c", "sleep 1.5"],
    );
    let mut seen = BTreeMap::new();
    wait_for(DONE, "6 completed tasks", || {
        record_containers("batch", &mut seen);
        let tasks = c.service_tasks("batch");
        match tasks_in_state(&tasks, "complete") {
            6 => Ok(()),
            n => Err(format!("{n} complete: {tasks}")),
        }
    });
    record_containers("batch", &mut seen);
    assert_eq!(seen.len(), 6, "one container per completion, none rerun: {seen:?}");
    assert_eq!(max_overlap(&seen), 2, "at most --max-concurrent at once, and that many: {seen:?}");

    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("replicated job") && ls.contains("0/0 (6/6 completed)"), "as docker shows it: {ls}");
    let ps = c.shoal_ok(&["service", "ps", "batch"]);
    assert_eq!(ps.matches("Complete").count(), 12, "desired and current state of six tasks: {ps}");

    // A rerun: the same job again from the start, the old run kept as history.
    let out = c.shoal_ok(&["service", "update", "--force", "--detach=false", "batch"]);
    assert!(out.contains("job progress: 6 out of 6 complete") && out.contains("job complete"), "{out}");
    let tasks = c.service_tasks("batch");
    assert_eq!(tasks_in_state(&tasks, "complete"), 12, "{tasks}");
}

#[test]
fn a_failing_job_task_is_retried_per_the_restart_policy_then_left_failed() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    c.create_service(
        "flaky",
        &["-d", "--mode", "replicated-job", "--restart-max-attempts", "2", "--restart-delay", "100ms"],
        &["sh", "-c", "exit 3"],
    );
    let tasks = wait_for(DONE, "three failed attempts", || {
        let tasks = c.service_tasks("flaky");
        match tasks_in_state(&tasks, "failed") {
            3 => Ok(tasks),
            n => Err(format!("{n} failed: {tasks}")),
        }
    });
    for t in tasks.as_array().unwrap() {
        assert_eq!(t["status"]["exit_code"], 3, "{t}");
    }
    // The policy gave up: over a window of many restart delays no fourth
    // attempt comes.
    let window = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < window {
        let tasks = c.service_tasks("flaky");
        assert_eq!(tasks.as_array().map_or(0, Vec::len), 3, "2 restarts allowed, not more: {tasks}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ls = c.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("0/1 (0/1 completed)"), "{ls}");

    // Bad input, docker's words, nothing made.
    c.shoal_fails(
        &["service", "create", "--name", "x", "--mode", "global-job", "--replicas", "2", "img"],
        "replicas can only be used with replicated or replicated-job mode",
    );
    c.shoal_fails(
        &["service", "create", "--name", "x", "--max-concurrent", "2", "img"],
        "max-concurrent can only be used with replicated-job mode",
    );
    c.shoal_fails(
        &["service", "create", "--name", "x", "--mode", "replicated-job", "--update-parallelism", "2", "img"],
        "update and rollback configuration is not supported for jobs",
    );
    c.shoal_fails(
        &["service", "create", "--name", "x", "--mode", "replicated-job", "--max-concurrent", "two", "img"],
        "invalid argument \"two\" for \"--max-concurrent\" flag",
    );
    assert!(!c.shoal_ok(&["service", "ls"]).contains(" x "));
}

#[test]
fn the_docker_cli_runs_a_global_job_and_shows_job_complete() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    let bin = docker_clients().into_iter().next().expect("a docker CLI");
    let d = EngineCli::new(&bin, &format!("tcp://{}", c.api_addr(1)));
    let out = d.run_for(
        DONE,
        &[
            "service",
            "create",
            "--detach=false",
            "--name",
            "once",
            "--mode",
            "global-job",
            tests::busybox_image(),
            "true",
        ],
    );
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("job complete") || out.stderr.contains("job complete"), "{out}");
    let ls = d.ok(&["service", "ls"]);
    assert!(
        ls.contains("global job") && ls.contains("0/0 (2/2 completed)"),
        "docker writes the mode with a space: {ls}"
    );
    let ps = d.ok(&["service", "ps", "once"]);
    assert_eq!(ps.matches("Complete").count(), 4, "{ps}");
}

#[test]
fn service_update_max_concurrent_changes_how_many_job_tasks_run_at_once() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    c.create_service(
        "wide",
        &["-d", "--mode", "replicated-job", "--replicas", "4", "--max-concurrent", "1"],
        &["sleep", "6"],
    );
    c.create_service("web", &["-d"], &["sleep", "100000"]);
    // Refused with docker's words, the service unchanged.
    c.shoal_fails(
        &["service", "update", "--max-concurrent", "2", "web"],
        "max-concurrent can only be used with replicated-job mode",
    );
    c.shoal_fails(
        &["service", "update", "--max-concurrent", "two", "wide"],
        "invalid argument \"two\" for \"--max-concurrent\" flag: strconv.ParseUint: parsing \"two\": invalid syntax",
    );
    c.shoal_fails(&["service", "update", "--max-concurrent", "0", "wide"], "max-concurrent must be at least 1");
    let v = c.shoal_json(&["service", "inspect", "wide"]);
    assert_eq!(v[0]["version"], 1, "no update was written: {v}");

    // An update of a job runs it again, now four at a time.
    c.shoal_ok(&["service", "update", "-d", "--max-concurrent", "4", "wide"]);
    let pretty = c.shoal_ok(&["service", "inspect", "--pretty", "wide"]);
    assert!(pretty.contains(" Max Concurrent:\t4\n Total Completions:\t4\n"), "{pretty}");
    wait_for(DONE, "four job tasks running at once", || {
        let tasks = c.service_tasks("wide");
        match tasks_in_state(&tasks, "running") {
            4 => Ok(()),
            n => Err(format!("{n} running: {tasks}")),
        }
    });
}
