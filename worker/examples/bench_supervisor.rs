//! The task supervisor's reconcile core with many tasks on one node: how
//! long one event takes (an operation's outcome, an assignment diff, a
//! container list) as the node's task count grows. Issue 15 asks that a
//! worker with 1,000 assigned tasks reconciles in bounded time per event.
//!
//! usage: cargo run --release -p worker --example bench_supervisor [N…]
//!   (default 100 1000 5000 tasks)

use std::time::Instant;

use common::ids::{ServiceId, TaskId};
use common::spec::TaskTemplate;
use common::task::{Task, TaskState, TaskStatus};
use worker::runtime::{ContainerInfo, ContainerState};
use worker::supervisor::core::{Action, Event, Outcome, SupervisorCore};

fn task(i: usize) -> Task {
    let mut t: Task = serde_json::from_value(serde_json::json!({
        "id": format!("task{i:021}"), "service_id": "svc", "service_name": "web", "slot": i + 1, "node_id": "node1",
        "spec": {"image": "shoal/busybox:latest", "restart": {"condition": "any", "delay_ms": 0, "max_attempts": null}},
        "desired_state": "running",
        "status": {"state": "assigned", "timestamp": 0},
        "created_at": 0
    }))
    .expect("a task");
    t.spec = TaskTemplate {
        args: vec!["sleep".into(), "3600".into()],
        env: (0..10).map(|k| format!("VAR{k}=value{k}")).collect(),
        ..TaskTemplate::new("shoal/busybox:latest")
    };
    t.service_id = ServiceId::from("svc");
    t.status = TaskStatus::new(TaskState::Assigned, 0, "assigned");
    t
}

fn running(i: usize) -> ContainerInfo {
    ContainerInfo {
        container_id: format!("c{i}"),
        task_id: TaskId::from(format!("task{i:021}").as_str()),
        state: ContainerState::Running,
        exit_code: None,
        started_at: Some(1),
        finished_at: None,
        stop_grace_ms: None,
        service_id: Some(ServiceId::from("svc")),
        slot: Some(i as u64 + 1),
        log_retention_ms: None,
        ports: vec![],
        address: None,
        health: None,
        health_output: None,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![100, 1_000, 5_000] } else { sizes };
    println!("| tasks on the node | an outcome (Done) | an assignment diff (1 task) | a container list | start all: events, total |");
    println!("|---|---|---|---|---|");
    for n in sizes {
        let mut core = SupervisorCore::new();
        let tasks: Vec<Task> = (0..n).map(task).collect();
        let mut now = 1_000;
        core.step(Event::Observed { ticket: core.ticket(), containers: vec![] }, now);
        let t0 = Instant::now();
        let mut events = 0u64;
        let mut actions = core.step(Event::Assigned { full: true, tasks: tasks.clone(), removed: vec![] }, now);
        events += 1;
        // Every Prepare, then every Start, answered one event at a time, as
        // the actor feeds them.
        let mut done_time = std::time::Duration::ZERO;
        let mut dones = 0u32;
        let mut started = Vec::new();
        while !actions.is_empty() {
            let mut next = Vec::new();
            for a in actions {
                let ev = match a {
                    Action::Prepare(t) => Event::Done { task_id: t.id, outcome: Outcome::Prepared },
                    Action::Start(t) => {
                        let i: usize = t.id.as_str()[4..].parse().expect("index");
                        started.push(running(i));
                        Event::Done { task_id: t.id, outcome: Outcome::Started { container_id: format!("c{i}") } }
                    }
                    _ => continue,
                };
                now += 1;
                let s = Instant::now();
                next.extend(core.step(ev, now));
                done_time += s.elapsed();
                dones += 1;
                events += 1;
            }
            actions = next;
        }
        let s = Instant::now();
        core.step(Event::Observed { ticket: core.ticket(), containers: started.clone() }, now);
        let list = s.elapsed();
        events += 1;
        let total = t0.elapsed();
        // One task's spec changes (a diff of one).
        let mut changed = tasks[n / 2].clone();
        changed.desired_state = TaskState::Shutdown;
        let s = Instant::now();
        let rounds = 200u32;
        for r in 0..rounds {
            let mut t = changed.clone();
            t.desired_state = if r % 2 == 0 { TaskState::Shutdown } else { TaskState::Running };
            core.step(Event::Assigned { full: false, tasks: vec![t], removed: vec![] }, now);
        }
        let diff = s.elapsed() / rounds;
        println!(
            "| {n} | {:.1} µs | {:.1} µs | {:.2} ms | {events} events, {:.0} ms |",
            done_time.as_secs_f64() * 1e6 / dones as f64,
            diff.as_secs_f64() * 1e6,
            list.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
    }
}
