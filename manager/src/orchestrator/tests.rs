//! The orchestrator's decisions over a store, pass after pass, both modes.

use common::node::Availability;
use common::spec::{RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, TaskTemplate};
use common::task::{Task, TaskState, TaskStatus};
use common::time::Millis;
use common::{ServiceId, TaskId};

use super::*;
use crate::scheduler::plan::{self, NodeView};
use crate::store::{Assignment, Service, Unplaceable};
use crate::testing::node;

fn spec(replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        labels: Default::default(),
        mode: ServiceMode::Replicated { replicas },
        task: TaskTemplate::new("img"),
        update: Default::default(),
        rollback: Default::default(),
        engine_spec: None,
        endpoint_mode: Default::default(),
    }
}

struct Harness {
    store: Store,
    health: NodeHealth,
    next: u64,
}

impl Harness {
    fn new(replicas: u64) -> Self {
        let mut store = Store::default();
        let svc = Service::new(ServiceId::from("svc"), spec(replicas), 0);
        store.apply(Command::CreateService(svc)).unwrap();
        for n in ["n1", "n2", "n3"] {
            store.apply(Command::AddNode(node(n))).unwrap();
        }
        Harness { store, health: NodeHealth::default(), next: 0 }
    }
    fn svc(&mut self) -> &mut Service {
        self.store.services.get_mut(&ServiceId::from("svc")).unwrap()
    }
    /// Reconciles and applies, as the orchestrator actor does; then the
    /// scheduler admits the global tasks on their nodes, as it does in a
    /// cluster (where replicated tasks go is left to each test).
    fn step(&mut self, now: Millis) -> Decision {
        let d = self.reconcile(now);
        for c in &d.commands {
            self.store.apply(c.clone()).unwrap();
        }
        self.admit(now);
        d
    }
    fn reconcile(&mut self, now: Millis) -> Decision {
        let mut next = self.next;
        let d = reconcile(&self.store, &self.health, now, &Params::default(), &mut || {
            next += 1;
            TaskId::from(format!("t{next:03}"))
        });
        self.next = next;
        d
    }
    /// The scheduler's verdict on the tasks that name their node; every
    /// node not down is ready.
    fn admit(&mut self, now: Millis) {
        let p = {
            let views: Vec<NodeView> =
                self.store.nodes.values().map(|n| NodeView::new(n, !self.health.down.contains(&n.id))).collect();
            plan::plan(&views, &self.store.tasks, &plan::RecentFailures::default())
        };
        let preassigned = |id: &TaskId| self.store.tasks[id].node_id.is_some();
        let assign: Vec<Assignment> = p
            .assign
            .into_iter()
            .filter(|(task, _)| preassigned(task))
            .map(|(task, node)| Assignment { task, node, at: now })
            .collect();
        let refuse: Vec<Unplaceable> = p
            .unplaceable
            .into_iter()
            .filter(|(task, _)| preassigned(task))
            .map(|(task, reason)| Unplaceable { task, reason, at: now })
            .collect();
        self.store.apply(Command::AssignTasks(assign)).unwrap();
        self.store.apply(Command::MarkUnplaceable(refuse)).unwrap();
    }
    fn run_all_on(&mut self, nodes: &[&str]) {
        let ids: Vec<TaskId> = self.store.tasks.keys().cloned().collect();
        for (i, id) in ids.iter().enumerate() {
            let mut t = self.store.tasks.get_mut(id).unwrap();
            if t.node_id.is_none() {
                t.node_id = Some(nodes[i % nodes.len()].into());
                t.status = TaskStatus::new(TaskState::Running, 0, "");
            }
        }
    }
    fn active_slots(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self.store.tasks.values().filter(|t| t.is_active()).map(|t| t.slot).collect();
        s.sort();
        s
    }
    fn fail(&mut self, slot: u64, state: TaskState, at: Millis) -> TaskId {
        let id = self.store.tasks.values().find(|t| t.slot == slot && t.is_active()).unwrap().id.clone();
        self.store.tasks.get_mut(&id).unwrap().status = TaskStatus::new(state, at, "");
        id
    }
}

#[test]
fn creates_one_task_per_slot_and_is_then_quiet() {
    let mut h = Harness::new(3);
    h.step(0);
    assert_eq!(h.active_slots(), [1, 2, 3]);
    assert_eq!(h.step(1), Decision::default());
}

#[test]
fn scale_down_removes_from_the_busiest_node_first() {
    let mut h = Harness::new(4);
    h.step(0);
    // Slots 1,2,3 on n1; slot 4 on n2.
    h.store.tasks.update_all(|t| {
        t.node_id = Some(if t.slot < 4 { "n1" } else { "n2" }.into());
        t.status = TaskStatus::new(TaskState::Running, 0, "");
    });
    h.svc().spec.mode = ServiceMode::Replicated { replicas: 2 };
    h.step(1);
    let on_n1 = h.store.tasks.values().filter(|t| t.node_id == Some("n1".into())).count();
    assert_eq!(on_n1, 1);
    assert_eq!(h.store.tasks.len(), 2);
    // Scale up again fills the lowest free slots.
    h.svc().spec.mode = ServiceMode::Replicated { replicas: 4 };
    h.step(2);
    assert_eq!(h.active_slots().len(), 4);
    let mut slots: Vec<u64> = h.store.tasks.values().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, [1, 2, 3, 4]);
}

#[test]
fn unplaced_slots_go_first_on_scale_down() {
    let mut h = Harness::new(3);
    h.step(0);
    h.run_all_on(&["n1"]);
    h.svc().spec.mode = ServiceMode::Replicated { replicas: 4 };
    h.step(1); // slot 4, unassigned
    h.svc().spec.mode = ServiceMode::Replicated { replicas: 3 };
    h.step(2);
    assert_eq!(h.active_slots(), [1, 2, 3]);
}

#[test]
fn a_failed_task_is_replaced_in_its_slot_after_the_delay() {
    let mut h = Harness::new(2);
    h.step(0);
    h.run_all_on(&["n1", "n2"]);
    let dead = h.fail(2, TaskState::Failed, 1_000);
    let d = h.step(2_000);
    assert_eq!(d.wake_at, Some(6_000));
    assert!(d.commands.is_empty());
    h.step(6_000);
    let slot2: Vec<&Task> = h.store.tasks.values().filter(|t| t.slot == 2).collect();
    assert_eq!(slot2.len(), 2, "old task kept in history");
    assert_eq!(h.store.tasks[&dead].desired_state, TaskState::Shutdown);
    let new = slot2.iter().find(|t| t.id != dead).unwrap();
    assert_eq!((new.attempt, new.desired_state, new.status.state), (1, TaskState::Running, TaskState::New));
}

#[test]
fn restart_conditions_and_max_attempts() {
    for (cond, state, replaced) in [
        (RestartCondition::None, TaskState::Failed, false),
        (RestartCondition::OnFailure, TaskState::Complete, false),
        (RestartCondition::OnFailure, TaskState::Failed, true),
        (RestartCondition::OnFailure, TaskState::Rejected, true),
        (RestartCondition::Any, TaskState::Complete, true),
    ] {
        let mut h = Harness::new(1);
        h.svc().spec.task.restart = RestartPolicy { condition: cond, delay_ms: 0, max_attempts: None, window_ms: None };
        h.step(0);
        h.run_all_on(&["n1"]);
        h.fail(1, state, 10);
        h.step(10);
        assert_eq!(h.active_slots().len(), replaced as usize, "{cond} {state}");
        assert_eq!(h.step(11), Decision::default(), "{cond} {state}: settles");
    }
    let mut h = Harness::new(1);
    h.svc().spec.task.restart =
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 0, max_attempts: Some(2), window_ms: None };
    h.step(0);
    for i in 0..3 {
        h.run_all_on(&["n1"]);
        h.fail(1, TaskState::Failed, 10 + i);
        h.step(10 + i);
    }
    assert_eq!(h.active_slots().len(), 0, "two restarts, then the slot stays down");
    assert_eq!(h.store.tasks.len(), 3);
}

#[test]
fn history_is_bounded_per_slot() {
    let mut h = Harness::new(1);
    h.svc().spec.task.restart.delay_ms = 0;
    h.step(0);
    for i in 0..10 {
        h.run_all_on(&["n1"]);
        h.fail(1, TaskState::Failed, 100 + i);
        h.step(100 + i);
    }
    h.step(200);
    assert!(h.store.tasks.len() <= 5, "{}", h.store.tasks.len());
    assert_eq!(h.active_slots(), [1]);
}

impl Harness {
    /// `service update`, as the API commits it.
    fn update(&mut self, at: Millis, f: impl FnOnce(&mut ServiceSpec)) {
        let mut spec = self.svc().spec.clone();
        f(&mut spec);
        self.store.apply(Command::UpdateService { id: "svc".into(), spec, at, expect_version: None }).unwrap();
    }
    fn status(&mut self) -> Option<common::spec::UpdateState> {
        self.svc().update_status.as_ref().map(|s| s.state)
    }
    fn active_on(&self, node: &str) -> usize {
        self.store.tasks.values().filter(|t| t.is_active() && t.node_id == Some(node.into())).count()
    }
    fn place_new_on(&mut self, node: &str) {
        self.store.tasks.update_all(|t| {
            if t.node_id.is_none() && t.is_active() {
                t.node_id = Some(node.into());
                t.status = TaskStatus::new(TaskState::Assigned, 0, "");
            }
        });
    }
    /// Every assigned, meant-to-run task reports RUNNING at `at`.
    fn all_run(&mut self, at: Millis) {
        self.store.tasks.update_all(|t| {
            if t.is_active() && t.node_id.is_some() && t.status.state < TaskState::Running {
                t.status = TaskStatus::new(TaskState::Running, at, "");
            }
        });
    }
    /// Stopped tasks report SHUTDOWN.
    fn stopped(&mut self, at: Millis) {
        self.store.tasks.update_all(|t| {
            if t.desired_state == TaskState::Shutdown && !t.status.state.is_terminal() {
                t.status = TaskStatus::new(TaskState::Shutdown, at, "");
            }
        });
    }
    fn images(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.store.tasks.values().filter(|t| t.is_active()).map(|t| t.spec.image.clone()).collect();
        v.sort();
        v
    }
}

#[test]
fn an_image_change_rolls_in_batches_with_the_delay_and_completes_after_monitor() {
    let mut h = Harness::new(6);
    h.step(0);
    h.run_all_on(&["n1", "n2", "n3"]);
    h.update(1_000, |s| {
        s.task.image = "img:2".into();
        s.update.parallelism = 2;
        s.update.delay_ms = 1_000;
        s.update.monitor_ms = 500;
    });
    let mut starts = Vec::new();
    let mut now = 1_000;
    for _ in 0..100 {
        let before = h.images().iter().filter(|i| *i == "img:2").count();
        let d = h.step(now);
        let after = h.images().iter().filter(|i| *i == "img:2").count();
        if after > before {
            starts.push((now, after - before));
            // Never more than two slots down at once (stop-first).
            assert!(h.active_slots().len() >= 4);
        }
        h.stopped(now);
        h.place_new_on("n1");
        h.all_run(now + 100);
        now = d.wake_at.unwrap_or(now + 100).max(now + 100);
        if h.status() == Some(common::spec::UpdateState::Completed) {
            break;
        }
    }
    assert_eq!(starts.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2, 2, 2]);
    for w in starts.windows(2) {
        assert!(w[1].0 >= w[0].0 + 1_000, "batches at least the delay apart: {starts:?}");
    }
    assert_eq!(h.images(), vec!["img:2"; 6]);
    assert_eq!(h.status(), Some(common::spec::UpdateState::Completed));
    assert_eq!(h.active_slots(), [1, 2, 3, 4, 5, 6]);
}

#[test]
fn start_first_keeps_the_old_task_until_the_new_one_runs() {
    let mut h = Harness::new(2);
    h.step(0);
    h.run_all_on(&["n1"]);
    h.update(1_000, |s| {
        s.task.image = "img:2".into();
        s.update.order = common::spec::UpdateOrder::StartFirst;
    });
    h.step(1_000);
    assert_eq!(h.store.tasks.values().filter(|t| t.is_active()).count(), 3, "old and new side by side");
    h.step(1_050);
    assert_eq!(h.store.tasks.values().filter(|t| t.is_active()).count(), 3, "old kept while the new one starts");
    h.place_new_on("n2");
    h.all_run(1_100);
    h.step(1_200);
    let running_old = h.store.tasks.values().filter(|t| t.is_active() && t.spec.image == "img").count();
    assert_eq!(running_old, 1, "the replaced old task is shut down once the new one runs");
}

#[test]
fn a_failing_update_pauses_or_rolls_back() {
    use common::spec::{FailureAction, UpdateState};
    for (action, want) in
        [(FailureAction::Pause, UpdateState::Paused), (FailureAction::Rollback, UpdateState::RollbackCompleted)]
    {
        let mut h = Harness::new(3);
        h.step(0);
        h.run_all_on(&["n1"]);
        h.update(1_000, |s| {
            s.task.image = "broken".into();
            s.update.failure_action = action;
            s.update.monitor_ms = 0;
            s.rollback.monitor_ms = 0;
            s.rollback.parallelism = 0;
        });
        h.step(1_000);
        // The new task exits at once.
        let id = h.store.tasks.values().find(|t| t.is_active() && t.spec.image == "broken").unwrap().id.clone();
        {
            let mut new = h.store.tasks.get_mut(&id).unwrap();
            new.node_id = Some("n1".into());
            new.status = TaskStatus::new(TaskState::Failed, 1_100, "");
        }
        let mut now = 1_200;
        for _ in 0..20 {
            let d = h.step(now);
            h.stopped(now);
            h.place_new_on("n1");
            h.all_run(now + 10);
            now = d.wake_at.unwrap_or(now + 100).max(now + 100);
        }
        assert_eq!(h.status(), Some(want), "{action:?}");
        if action == FailureAction::Rollback {
            assert_eq!(h.images(), vec!["img"; 3], "every task back on the old spec");
            assert_eq!(h.svc().spec.task.image, "img");
        } else {
            // The update stopped after its first slot (which keeps being
            // restarted by its restart policy, as in Swarm).
            assert_eq!(h.images().iter().filter(|i| *i == "img").count(), 2);
            assert!(h.svc().update_status.as_ref().unwrap().message.starts_with("update paused due to failure"));
        }
    }
}

#[test]
fn drained_and_down_nodes_lose_their_tasks_to_others_at_once() {
    let mut h = Harness::new(6);
    h.step(0);
    h.run_all_on(&["n1", "n2", "n3"]);
    h.store.apply(Command::SetNodeAvailability { id: "n3".into(), availability: Availability::Drain, at: 10 }).unwrap();
    h.step(10);
    assert_eq!(h.active_on("n3"), 0);
    assert_eq!(h.active_slots(), [1, 2, 3, 4, 5, 6], "replacements at once, same slots");
    let drained: Vec<&Task> = h.store.tasks.values().filter(|t| t.node_id == Some("n3".into())).collect();
    assert_eq!(drained.len(), 2, "the drained tasks stay in history with their node");
    assert!(drained.iter().all(|t| t.desired_state == TaskState::Shutdown));

    // n2 dies: its tasks are orphaned and replaced with no restart delay.
    h.place_new_on("n1");
    h.all_run(20);
    h.health.down.insert("n2".into());
    h.step(30);
    assert_eq!(h.active_on("n2"), 0);
    assert_eq!(h.active_slots(), [1, 2, 3, 4, 5, 6]);
    let orphaned = h.store.tasks.values().filter(|t| t.status.state == TaskState::Orphaned).count();
    assert_eq!(orphaned, 2);
    assert_eq!(h.step(31).commands, vec![], "settled");
}

#[test]
fn global_services_follow_nodes() {
    let mut h = Harness::new(1);
    h.svc().spec.mode = ServiceMode::Global;
    h.step(0);
    let mut on: Vec<String> = h.store.tasks.values().map(|t| t.node_id.clone().unwrap().to_string()).collect();
    on.sort();
    assert_eq!(on, ["n1", "n2", "n3"]);
    assert!(h.store.tasks.values().all(|t| t.slot == 0 && t.status.state == TaskState::Assigned));
    h.all_run(5);
    // A node joins: it gets a task.
    h.store.apply(Command::AddNode(node("n4"))).unwrap();
    h.step(10);
    assert_eq!(h.active_on("n4"), 1);
    // Drain: the task goes and is not replaced elsewhere.
    h.store.apply(Command::SetNodeAvailability { id: "n4".into(), availability: Availability::Drain, at: 20 }).unwrap();
    h.step(20);
    assert_eq!(h.active_on("n4"), 0);
    assert_eq!(h.store.tasks.values().filter(|t| t.is_active()).count(), 3);
    // Pause after active: no new task until active again.
    h.stopped(25);
    h.store.apply(Command::SetNodeAvailability { id: "n4".into(), availability: Availability::Pause, at: 30 }).unwrap();
    h.step(30);
    assert_eq!(h.active_on("n4"), 0);
    h.store
        .apply(Command::SetNodeAvailability { id: "n4".into(), availability: Availability::Active, at: 40 })
        .unwrap();
    h.step(40);
    assert_eq!(h.active_on("n4"), 1);
    // A node goes down: its task is orphaned, nothing moves.
    h.health.down.insert("n1".into());
    h.step(50);
    assert_eq!(h.active_on("n1"), 0);
    assert_eq!(h.store.tasks.values().filter(|t| t.is_active()).count(), 3);
    assert_eq!(h.step(51).commands, vec![]);
}

/// A global service publishing 9000 in host mode, as `--mode global
/// --publish published=9000,target=80,mode=host` makes it.
fn global_on_port(id: &str, at: Millis) -> Service {
    let mut spec = spec(1);
    spec.name = id.into();
    spec.mode = ServiceMode::Global;
    spec.task.ports = vec!["published=9000,target=80,mode=host".parse().unwrap()];
    Service::new(ServiceId::from(id), spec, at)
}

impl Harness {
    fn tasks_of(&self, svc: &str) -> Vec<&Task> {
        self.store.tasks.values().filter(|t| t.service_id.as_str() == svc).collect()
    }
    fn states_of(&self, svc: &str) -> Vec<(String, TaskState, Option<String>)> {
        self.tasks_of(svc)
            .iter()
            .map(|t| {
                (t.node_id.as_ref().map(|n| n.to_string()).unwrap_or_default(), t.status.state, t.status.err.clone())
            })
            .collect()
    }
}

#[test]
fn global_tasks_start_new_on_their_node_and_only_the_scheduler_assigns_them() {
    let mut h = Harness::new(1);
    h.svc().spec.mode = ServiceMode::Global;
    let d = h.reconcile(0);
    for c in &d.commands {
        h.store.apply(c.clone()).unwrap();
    }
    let mut on: Vec<String> = h.store.tasks.values().map(|t| t.node_id.clone().unwrap().to_string()).collect();
    on.sort();
    assert_eq!(on, ["n1", "n2", "n3"], "each names its node");
    assert!(h.store.tasks.values().all(|t| t.status.state == TaskState::New && t.assigned_node().is_none()));
    assert_eq!(h.reconcile(1), Decision::default(), "waiting for the scheduler is not a reason to act");
    h.admit(2);
    assert!(h.store.tasks.values().all(|t| t.status.state == TaskState::Assigned && t.assigned_node().is_some()));
}

#[test]
fn a_second_global_service_on_a_taken_host_port_waits_pending_until_the_first_goes() {
    let mut h = Harness::new(1);
    h.store.apply(Command::RemoveService("svc".into())).unwrap();
    h.store.apply(Command::CreateService(global_on_port("first", 0))).unwrap();
    h.step(0);
    h.all_run(1);
    assert!(h.states_of("first").iter().all(|(_, s, _)| *s == TaskState::Running));

    h.store.apply(Command::CreateService(global_on_port("second", 2))).unwrap();
    h.step(2);
    let why = Some("no suitable node (host-mode port already in use on 1 node)".to_string());
    assert_eq!(
        h.states_of("second"),
        ["n1", "n2", "n3"].map(|n| (n.to_string(), TaskState::Pending, why.clone())),
        "refused on its node, with the scheduler's reason"
    );
    // Nothing more to say while nothing changes.
    assert_eq!(h.step(3), Decision::default());
    let views: Vec<NodeView> = h.store.nodes.values().map(|n| NodeView::new(n, true)).collect();
    assert_eq!(plan::plan(&views, &h.store.tasks, &plan::RecentFailures::default()), plan::Plan::default());

    h.store.apply(Command::RemoveService("first".into())).unwrap();
    h.step(4);
    assert_eq!(
        h.states_of("second"),
        ["n1", "n2", "n3"].map(|n| (n.to_string(), TaskState::Assigned, None)),
        "admitted once the port is free"
    );
}

#[test]
fn a_global_task_never_admitted_is_deleted_when_its_node_goes() {
    let mut h = Harness::new(1);
    h.store.apply(Command::RemoveService("svc".into())).unwrap();
    h.store.apply(Command::CreateService(global_on_port("first", 0))).unwrap();
    h.step(0);
    h.all_run(1);
    h.store.apply(Command::CreateService(global_on_port("second", 2))).unwrap();
    h.step(2);
    let waiting: Vec<TaskId> = h
        .tasks_of("second")
        .iter()
        .filter(|t| t.node_id != Some("n1".into()) && t.status.state == TaskState::Pending)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(waiting.len(), 2);

    // Drained, down: nothing ran there, so nothing is left behind to stop.
    h.store.apply(Command::SetNodeAvailability { id: "n3".into(), availability: Availability::Drain, at: 10 }).unwrap();
    h.health.down.insert("n2".into());
    let d = h.step(10);
    let deleted: Vec<&TaskId> = d
        .commands
        .iter()
        .filter_map(|c| if let Command::DeleteTasks(ids) = c { Some(ids) } else { None })
        .flatten()
        .collect();
    assert_eq!(deleted, waiting.iter().collect::<Vec<_>>(), "{:?}", d.commands);
    let reported: Vec<&TaskId> = d
        .commands
        .iter()
        .filter_map(|c| if let Command::UpdateTaskStatus(u) = c { Some(u) } else { None })
        .flatten()
        .map(|u| &u.task_id)
        .collect();
    assert!(waiting.iter().all(|id| !reported.contains(&id)), "no ORPHANED for a task that never ran: {reported:?}");
    assert_eq!(h.tasks_of("second").len(), 1, "only n1's task is left");
    // The running tasks of "first" there are stopped as before.
    let first: Vec<(String, TaskState)> = h
        .tasks_of("first")
        .iter()
        .filter(|t| t.node_id != Some("n1".into()))
        .map(|t| (t.node_id.clone().unwrap().to_string(), t.desired_state))
        .collect();
    assert_eq!(first, [("n2".to_string(), TaskState::Shutdown), ("n3".to_string(), TaskState::Shutdown)]);
    assert_eq!(h.step(11).commands, vec![], "settled");
}

// ---- jobs ----

/// A replicated job's harness: tasks placed on n1 as they are made.
fn job(total: u64, max_concurrent: u64) -> Harness {
    let mut h = Harness::new(0);
    h.svc().spec.mode = ServiceMode::ReplicatedJob { total_completions: total, max_concurrent };
    h
}

impl Harness {
    /// Tasks of the job's current run meant to run and not finished.
    fn running_job_slots(&self) -> Vec<u64> {
        let it = self.store.services[&ServiceId::from("svc")].job_iteration;
        let mut s: Vec<u64> = self
            .store
            .tasks
            .values()
            .filter(|t| t.is_active() && t.job_iteration == Some(it))
            .map(|t| t.slot)
            .collect();
        s.sort();
        s
    }
    fn finish(&mut self, slot: u64, state: TaskState, at: Millis) {
        self.run_all_on(&["n1"]);
        self.fail(slot, state, at);
    }
    fn completed(&self) -> u64 {
        let it = self.store.services[&ServiceId::from("svc")].job_iteration;
        self.store
            .tasks
            .values()
            .filter(|t| t.job_iteration == Some(it) && t.status.state == TaskState::Complete)
            .count() as u64
    }
}

#[test]
fn a_replicated_job_runs_max_concurrent_at_a_time_until_all_complete() {
    let mut h = job(6, 2);
    h.step(0);
    assert_eq!(h.running_job_slots(), [1, 2]);
    assert!(h.store.tasks.values().all(|t| t.job_iteration == Some(0)));
    h.finish(1, TaskState::Complete, 10);
    h.step(11);
    assert_eq!(h.running_job_slots(), [2, 3], "a completed slot is not rerun; the next one starts");
    for (slot, at) in [(2, 20), (3, 30), (4, 40), (5, 50)] {
        h.finish(slot, TaskState::Complete, at);
        h.step(at + 1);
    }
    assert_eq!(h.running_job_slots(), [6]);
    h.finish(6, TaskState::Complete, 60);
    assert_eq!(h.step(61).commands, vec![], "a complete job is quiet");
    assert_eq!(h.completed(), 6);
    assert_eq!(h.store.tasks.len(), 6);
}

#[test]
fn a_failed_job_task_is_retried_per_policy_and_any_means_on_failure() {
    let mut h = job(1, 1);
    h.svc().spec.task.restart =
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 100, max_attempts: Some(1), window_ms: None };
    h.step(0);
    h.finish(1, TaskState::Failed, 10);
    let d = h.step(20);
    assert_eq!(d.wake_at, Some(110), "the restart delay holds the slot");
    assert_eq!(h.running_job_slots(), Vec::<u64>::new());
    h.step(110);
    assert_eq!(h.running_job_slots(), [1], "retried after the delay");
    h.finish(1, TaskState::Failed, 120);
    h.step(300);
    assert_eq!(h.running_job_slots(), Vec::<u64>::new(), "max attempts used up: the slot stays failed");
    assert_eq!(h.step(400).commands, vec![]);
    assert_eq!(h.completed(), 0);
}

#[test]
fn a_given_up_slot_frees_its_concurrency_place_and_an_update_reruns_the_job() {
    let mut h = job(3, 1);
    h.svc().spec.task.restart.condition = RestartCondition::None;
    h.step(0);
    h.finish(1, TaskState::Failed, 10);
    h.step(11);
    assert_eq!(h.running_job_slots(), [2], "slot 1 gave up; slot 2 runs");
    h.finish(2, TaskState::Complete, 20);
    h.step(21);
    h.finish(3, TaskState::Complete, 30);
    h.step(31);
    assert_eq!(h.completed(), 2);
    // `service update --force` on a job: a new run from the start.
    let mut spec = h.svc().spec.clone();
    spec.task.force_update += 1;
    h.store.apply(Command::UpdateService { id: "svc".into(), spec, at: 40, expect_version: None }).unwrap();
    assert_eq!(h.svc().job_iteration, 1);
    assert_eq!(h.svc().update_status, None, "jobs have no rolling update");
    h.step(41);
    assert_eq!(h.running_job_slots(), [1]);
    assert_eq!(h.completed(), 0, "the old run's completions do not count");
    let old: Vec<&Task> = h.store.tasks.values().filter(|t| t.job_iteration == Some(0)).collect();
    assert!(old.iter().all(|t| t.desired_state == TaskState::Shutdown), "{old:?}");
}

#[test]
fn a_job_task_on_a_lost_node_is_replaced_at_once() {
    let mut h = job(2, 2);
    h.step(0);
    h.run_all_on(&["n1", "n2"]);
    h.health.down.insert("n2".into());
    h.step(10);
    let slot_of_n2 = h.store.tasks.values().find(|t| t.node_id == Some("n2".into())).unwrap().slot;
    let fresh: Vec<&Task> = h.store.tasks.values().filter(|t| t.is_active() && t.node_id.is_none()).collect();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].slot, slot_of_n2);
}

#[test]
fn a_global_job_runs_once_on_every_active_node_and_on_nodes_that_join() {
    let mut h = Harness::new(0);
    h.svc().spec.mode = ServiceMode::GlobalJob;
    h.store.apply(Command::SetNodeAvailability { id: "n3".into(), availability: Availability::Pause, at: 0 }).unwrap();
    h.step(0);
    let nodes = |h: &Harness| {
        let mut v: Vec<String> =
            h.store.tasks.values().filter(|t| t.is_active()).map(|t| t.node_id.clone().unwrap().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(nodes(&h), ["n1", "n2"], "a paused node gets no task");
    for id in h.store.tasks.keys().cloned().collect::<Vec<_>>() {
        h.store.tasks.get_mut(&id).unwrap().status = TaskStatus::new(TaskState::Complete, 5, "");
    }
    h.step(10);
    assert_eq!(nodes(&h), Vec::<String>::new(), "completed tasks are not rerun");
    h.store.apply(Command::AddNode(node("n4"))).unwrap();
    h.step(20);
    assert_eq!(nodes(&h), ["n4"]);
}

/// The orchestrator reconciles only the services a change concerns: after
/// any sequence of store changes, live-set changes and passing time, what
/// it decides is what reconciling every service decides.
#[test]
fn reconciling_what_changed_decides_what_reconciling_everything_does() {
    use crate::testing::changes;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    let (mut decided, mut rounds) = (0, 0);
    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut store = Store::default();
        let mut orch = Orchestrator::default();
        let mut live: BTreeSet<common::NodeId> = BTreeSet::new();
        for step in 0..120u64 {
            let now = 10_000 + step * 700;
            for _ in 0..rng.gen_range(0..3) {
                let cmd = changes::command(&mut rng, &store, now);
                let _ = store.apply(cmd);
            }
            if rng.gen_bool(0.02) {
                store = Store::from_snapshot(&store.to_snapshot()).unwrap();
            }
            if rng.gen_bool(0.2) {
                live = store.nodes.keys().filter(|_| rng.gen_bool(0.85)).cloned().collect();
            }
            let ctx = LoopCtx { live: &live, leader_since: 0 };
            let ids = |step: u64| {
                let mut n = 0;
                move || {
                    n += 1;
                    TaskId::from(format!("t{step}-{n}"))
                }
            };
            let (health, _) = health(&store, &ctx, now);
            let full = reconcile(&store, &health, now, &Params::default(), &mut ids(step));
            let (cmds, _) = orch.decide_with(&store, &ctx, now, &mut ids(step));
            assert_eq!(cmds, full.commands, "seed {seed}, step {step}");
            rounds += 1;
            if !cmds.is_empty() {
                decided += 1;
                if store.apply(Command::Batch(cmds)).is_err() {
                    orch.failed();
                }
            }
        }
    }
    assert!(decided > 3_000, "{decided} decisions in {rounds} rounds");
}
