//! Pure reconciliation of replicated services: desired replicas → tasks per
//! slot. A finished task is never restarted: the slot gets a new task after
//! the restart delay, as the restart policy allows. History per slot is
//! bounded.

use std::collections::BTreeMap;

use common::spec::RestartCondition;
use common::task::{Task, TaskState, TaskStatus};
use common::time::Millis;
use common::{NodeId, ServiceId, TaskId};

use crate::store::{Command, Service, Store};

#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub commands: Vec<Command>,
    /// When to look again for a delayed restart that is not due yet.
    pub wake_at: Option<Millis>,
}

pub struct Params {
    /// Tasks kept per slot, the running one included (Swarm's default 5).
    pub history_limit: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params { history_limit: 5 }
    }
}

pub fn new_task(svc: &Service, slot: u64, attempt: u64, now: Millis, id: TaskId) -> Task {
    Task {
        id,
        service_id: svc.id.clone(),
        service_name: svc.spec.name.clone(),
        slot,
        node_id: None,
        spec: svc.spec.task.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::New, now, "created"),
        created_at: now,
        attempt,
    }
}

/// The commands that move every replicated service toward its spec.
pub fn reconcile(store: &Store, now: Millis, params: &Params, new_id: &mut dyn FnMut() -> TaskId) -> Decision {
    let mut d = Decision::default();
    // One pass over the tasks, not one per service.
    let mut by_service: BTreeMap<&ServiceId, Vec<&Task>> = BTreeMap::new();
    for t in store.tasks.values() {
        by_service.entry(&t.service_id).or_default().push(t);
    }
    for svc in store.services.values() {
        let tasks = by_service.remove(&svc.id).unwrap_or_default();
        reconcile_service(svc, &tasks, now, params, new_id, &mut d);
    }
    d
}

fn wake(d: &mut Decision, at: Millis) {
    d.wake_at = Some(d.wake_at.map_or(at, |w| w.min(at)));
}

fn reconcile_service(
    svc: &Service,
    tasks: &[&Task],
    now: Millis,
    params: &Params,
    new_id: &mut dyn FnMut() -> TaskId,
    d: &mut Decision,
) {
    let replicas = svc.spec.mode.replicas() as usize;
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        slots.entry(t.slot).or_default().push(t);
    }
    for list in slots.values_mut() {
        list.sort_by_key(|t| (t.created_at, t.id.clone()));
    }

    let mut create = Vec::new();
    let mut delete = Vec::new();
    let mut shutdown = Vec::new();

    // Scale down: remove whole slots, first those with nothing running, then
    // from the nodes running most tasks of this service.
    if slots.len() > replicas {
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.is_active()) {
            if let Some(n) = &t.node_id {
                *load.entry(n.clone()).or_default() += 1;
            }
        }
        let running_on = |list: &[&Task]| -> Option<NodeId> {
            list.iter().rev().find(|t| t.is_active()).and_then(|t| t.node_id.clone())
        };
        for _ in 0..slots.len() - replicas {
            let victim = slots
                .iter()
                .max_by_key(|(slot, list)| match running_on(list) {
                    None => (1usize, usize::MAX, **slot),
                    Some(n) => (0, load.get(&n).copied().unwrap_or(0), **slot),
                })
                .map(|(s, _)| *s)
                .expect("more slots than replicas means at least one slot");
            let list = slots.remove(&victim).unwrap_or_default();
            if let Some(n) = running_on(&list) {
                if let Some(c) = load.get_mut(&n) {
                    *c = c.saturating_sub(1);
                }
            }
            delete.extend(list.iter().map(|t| t.id.clone()));
        }
    }

    // Scale up: fill the lowest free slot numbers.
    let mut slot = 1u64;
    while slots.len() + create.len() < replicas {
        if !slots.contains_key(&slot) {
            create.push(new_task(svc, slot, 0, now, new_id()));
        }
        slot += 1;
    }

    // A slot with an outdated task is rolled one slot at a time; a slot
    // whose new task is not running yet counts as in progress.
    let mut updating = slots.values().any(|list| {
        list.iter()
            .rev()
            .find(|t| t.is_active())
            .is_some_and(|t| t.spec == svc.spec.task && t.status.state < TaskState::Running && list.len() > 1)
    });

    for (slot, list) in &slots {
        let active: Vec<&&Task> = list.iter().filter(|t| t.is_active()).collect();
        if active.len() > 1 {
            // Never two meant-to-run tasks in a slot: keep the newest.
            shutdown.extend(active[..active.len() - 1].iter().map(|t| t.id.clone()));
        }
        let latest = list.last().expect("a slot has at least one task");
        if let Some(current) = active.last() {
            if current.spec != svc.spec.task && !updating {
                updating = true;
                shutdown.push(current.id.clone());
                create.push(new_task(svc, *slot, 0, now, new_id()));
            }
        } else if latest.desired_state == TaskState::Running && latest.status.state.is_terminal() {
            let policy = svc.spec.task.restart;
            let wanted = match policy.condition {
                RestartCondition::None => false,
                RestartCondition::OnFailure => latest.status.state != TaskState::Complete,
                RestartCondition::Any => true,
            };
            let allowed = policy.max_attempts.is_none_or(|max| latest.attempt < max);
            if wanted && allowed {
                let due = latest.status.timestamp.saturating_add(policy.delay_ms);
                if now >= due {
                    shutdown.push(latest.id.clone());
                    create.push(new_task(svc, *slot, latest.attempt + 1, now, new_id()));
                } else {
                    wake(d, due);
                }
            } else {
                shutdown.push(latest.id.clone());
            }
        }
        // Bounded history: drop the oldest finished tasks of the slot.
        let finished: Vec<&&Task> = list
            .iter()
            .filter(|t| t.desired_state > TaskState::Running && t.status.state.is_terminal())
            .collect();
        let excess = list.len().saturating_sub(params.history_limit);
        delete.extend(finished.iter().take(excess).map(|t| t.id.clone()));
    }

    if !delete.is_empty() {
        d.commands.push(Command::DeleteTasks(delete));
    }
    if !shutdown.is_empty() {
        d.commands.push(Command::SetDesiredState { tasks: shutdown, state: TaskState::Shutdown });
    }
    if !create.is_empty() {
        d.commands.push(Command::CreateTasks(create));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::spec::{RestartPolicy, ServiceMode, ServiceSpec, TaskTemplate};
    use common::ServiceId;

    fn spec(replicas: u64) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas },
            task: TaskTemplate::new("img"),
        }
    }

    struct Harness {
        store: Store,
        next: u64,
    }

    impl Harness {
        fn new(replicas: u64) -> Self {
            let mut store = Store::default();
            let svc = Service { id: ServiceId::from("svc"), spec: spec(replicas), version: 1, created_at: 0, updated_at: 0 };
            store.apply(Command::CreateService(svc)).unwrap();
            Harness { store, next: 0 }
        }
        fn svc(&mut self) -> &mut Service {
            self.store.services.get_mut(&ServiceId::from("svc")).unwrap()
        }
        /// Reconciles and applies, as the orchestrator actor does.
        fn step(&mut self, now: Millis) -> Decision {
            let mut next = self.next;
            let d = reconcile(&self.store, now, &Params::default(), &mut || {
                next += 1;
                TaskId::from(format!("t{next:03}"))
            });
            self.next = next;
            for c in &d.commands {
                self.store.apply(c.clone()).unwrap();
            }
            d
        }
        fn run_all_on(&mut self, nodes: &[&str]) {
            let ids: Vec<TaskId> = self.store.tasks.keys().cloned().collect();
            for (i, id) in ids.iter().enumerate() {
                let t = self.store.tasks.get_mut(id).unwrap();
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
            let t = self.store.tasks.values_mut().find(|t| t.slot == slot && t.is_active()).unwrap();
            t.status = TaskStatus::new(state, at, "");
            t.id.clone()
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
        for t in h.store.tasks.values_mut() {
            t.node_id = Some(if t.slot < 4 { "n1" } else { "n2" }.into());
            t.status = TaskStatus::new(TaskState::Running, 0, "");
        }
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
            h.svc().spec.task.restart = RestartPolicy { condition: cond, delay_ms: 0, max_attempts: None };
            h.step(0);
            h.run_all_on(&["n1"]);
            h.fail(1, state, 10);
            h.step(10);
            assert_eq!(h.active_slots().len(), replaced as usize, "{cond} {state}");
            assert_eq!(h.step(11), Decision::default(), "{cond} {state}: settles");
        }
        let mut h = Harness::new(1);
        h.svc().spec.task.restart = RestartPolicy { condition: RestartCondition::Any, delay_ms: 0, max_attempts: Some(2) };
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

    #[test]
    fn an_image_change_rolls_one_slot_at_a_time() {
        let mut h = Harness::new(3);
        h.step(0);
        h.run_all_on(&["n1"]);
        h.svc().spec.task.image = "img:2".into();
        h.step(1);
        let new: Vec<&Task> = h.store.tasks.values().filter(|t| t.is_active() && t.spec.image == "img:2").collect();
        assert_eq!(new.len(), 1);
        // Not running yet: nothing more moves.
        assert_eq!(h.step(2), Decision::default());
        for _ in 0..2 {
            h.run_all_on(&["n1"]);
            h.step(3);
        }
        h.run_all_on(&["n1"]);
        assert_eq!(h.step(4), Decision::default());
        assert!(h.store.tasks.values().filter(|t| t.is_active()).all(|t| t.spec.image == "img:2"));
        assert_eq!(h.active_slots(), [1, 2, 3]);
    }
}
