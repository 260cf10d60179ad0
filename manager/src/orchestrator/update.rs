//! Rolling updates, pure: which units (slots, or nodes for a global service)
//! get the current task template next, when the update is done, and what
//! to do when new tasks fail.
//!
//! A batch of `parallelism` units is started; the next batch waits until
//! every task of the batch runs, then `delay`. A new task that fails during
//! the update counts against `max_failure_ratio`; past it, the failure
//! action applies (pause, continue, or roll back to the previous spec). The
//! update completes once every task runs the current template and has run
//! for `monitor`.

use common::spec::{FailureAction, UpdateState, UpdateStatus};
use common::task::{Task, TaskState};
use common::time::Millis;

use crate::store::Service;

/// One slot (or node) as the updater sees it.
pub struct Unit<'a> {
    /// Meant-to-run tasks, oldest first.
    pub active: Vec<&'a Task>,
    /// Every task of the unit.
    pub all: Vec<&'a Task>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    Set(UpdateStatus),
    Rollback { reason: String },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Units (indices) whose outdated task is replaced now.
    pub start: Vec<usize>,
    pub status: Option<StatusChange>,
    pub wake_at: Option<Millis>,
}

fn newest<'a>(u: &Unit<'a>) -> Option<&'a Task> {
    u.active.last().copied()
}

/// Runs the service's template and is not one a rebalance moves.
fn current(svc: &Service, t: &Task) -> bool {
    t.spec == svc.spec.task && !svc.rebalance.contains(&t.id)
}

/// When `t` entered RUNNING (its status timestamp while running).
fn running_since(t: &Task) -> Option<Millis> {
    (t.status.state == TaskState::Running).then_some(t.status.timestamp)
}

pub fn plan(svc: &Service, units: &[Unit], now: Millis) -> Rollout {
    let mut out = Rollout::default();
    let Some(status) = &svc.update_status else {
        return out;
    };
    if !status.state.is_active() {
        return out;
    }
    let cfg = svc.rollout_config();
    let since = status.started_at;
    let rollback = status.state.is_rollback();

    // Failures of tasks started by this update.
    let failed: Vec<&Task> = units
        .iter()
        .flat_map(|u| u.all.iter())
        .filter(|t| {
            current(svc, t)
                && t.created_at >= since
                && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
        })
        .copied()
        .collect();
    if let Some(first) = failed.first() {
        let tolerated = (cfg.max_failure_ratio.0 * units.len() as f64).floor() as usize;
        if failed.len() > tolerated {
            let why = format!("failure or early termination of task {}", first.id);
            let paused = |state, message| {
                StatusChange::Set(UpdateStatus { state, started_at: since, completed_at: None, message })
            };
            out.status = match (cfg.failure_action, rollback) {
                (FailureAction::Continue, _) => None,
                (FailureAction::Rollback, false) => {
                    Some(StatusChange::Rollback { reason: format!("update rolled back due to {why}") })
                }
                (_, false) => Some(paused(UpdateState::Paused, format!("update paused due to {why}"))),
                (_, true) => Some(paused(UpdateState::RollbackPaused, format!("rollback paused due to {why}"))),
            };
            if out.status.is_some() {
                return out;
            }
        }
    }

    let in_progress = units.iter().any(|u| match newest(u) {
        // A new task not running yet, or (start-first) old and new both up.
        Some(t) if current(svc, t) => t.status.state < TaskState::Running || u.active.len() > 1,
        _ => false,
    });
    let outdated: Vec<usize> =
        units.iter().enumerate().filter(|(_, u)| newest(u).is_some_and(|t| !current(svc, t))).map(|(i, _)| i).collect();
    // The last task this update brought up, and when it came up.
    let last_up = units
        .iter()
        .filter_map(newest)
        .filter(|t| current(svc, t) && t.created_at >= since)
        .filter_map(running_since)
        .max();

    if in_progress {
        return out;
    }
    if !outdated.is_empty() {
        if let Some(up) = last_up {
            let next = up.saturating_add(cfg.delay_ms);
            if now < next {
                out.wake_at = Some(next);
                return out;
            }
        }
        let n = if cfg.parallelism == 0 { outdated.len() } else { cfg.parallelism as usize };
        out.start = outdated.into_iter().take(n).collect();
        return out;
    }
    // Everything runs the new template: done once it has run for `monitor`.
    let settled = last_up.map_or(now, |up| up.saturating_add(cfg.monitor_ms));
    if now < settled {
        out.wake_at = Some(settled);
        return out;
    }
    // A finished rollback keeps its reason.
    let (state, message) = if rollback {
        (UpdateState::RollbackCompleted, format!("rollback completed: {}", status.message))
    } else {
        (UpdateState::Completed, "update completed".to_string())
    };
    out.status = Some(StatusChange::Set(UpdateStatus { state, started_at: since, completed_at: Some(now), message }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::spec::{Ratio, ServiceSpec, TaskTemplate};
    use common::task::TaskStatus;

    fn task(id: &str, image: &str, state: TaskState, created_at: Millis, at: Millis) -> Task {
        Task {
            spec: TaskTemplate::new(image),
            desired_state: if state.is_terminal() { TaskState::Shutdown } else { TaskState::Running },
            status: TaskStatus::new(state, at, ""),
            created_at,
            ..crate::testing::task(id, state)
        }
    }

    fn service(parallelism: u64, ratio: f64, action: FailureAction) -> Service {
        let mut spec = ServiceSpec::new("s", 4, TaskTemplate::new("new"));
        spec.update.parallelism = parallelism;
        spec.update.max_failure_ratio = Ratio(ratio);
        spec.update.failure_action = action;
        spec.update.delay_ms = 1_000;
        spec.update.monitor_ms = 500;
        let mut svc = Service::new("s".into(), spec, 0);
        svc.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: 100,
            completed_at: None,
            message: String::new(),
        });
        svc
    }

    /// Four slots: `new_running` of them already updated (running since 200),
    /// `failed` of them whose new task failed, the rest on the old image.
    fn plan_for(svc: &Service, new_running: usize, failed: usize, now: Millis) -> Rollout {
        let mut owned: Vec<Vec<Task>> = Vec::new();
        for i in 0..4 {
            let t = if i < new_running {
                vec![task(&format!("n{i}"), "new", TaskState::Running, 150, 200)]
            } else if i < new_running + failed {
                vec![task(&format!("f{i}"), "new", TaskState::Failed, 150, 180)]
            } else {
                vec![task(&format!("o{i}"), "old", TaskState::Running, 0, 10)]
            };
            owned.push(t);
        }
        let units: Vec<Unit> = owned
            .iter()
            .map(|ts| Unit { active: ts.iter().filter(|t| t.is_active()).collect(), all: ts.iter().collect() })
            .collect();
        plan(svc, &units, now)
    }

    #[test]
    fn which_units_go_next() {
        let svc = service(2, 0.0, FailureAction::Pause);
        // Nothing updated yet: the first two old slots start now.
        assert_eq!(plan_for(&svc, 0, 0, 150).start, vec![0, 1]);
        // One batch up since 200: the next waits for the delay.
        let r = plan_for(&svc, 2, 0, 500);
        assert_eq!((r.start.clone(), r.wake_at), (vec![], Some(1_200)));
        assert_eq!(plan_for(&svc, 2, 0, 1_200).start, vec![2, 3]);
        // All updated: done once the monitor has passed.
        assert_eq!(plan_for(&svc, 4, 0, 600).wake_at, Some(700));
        let done = plan_for(&svc, 4, 0, 700).status;
        assert!(matches!(done, Some(StatusChange::Set(UpdateStatus { state: UpdateState::Completed, .. }))));
        // Parallelism 0: everything at once.
        assert_eq!(plan_for(&service(0, 0.0, FailureAction::Pause), 0, 0, 150).start, vec![0, 1, 2, 3]);
    }

    #[test]
    fn failures_against_the_ratio_and_the_action() {
        for (ratio, action, failed, want) in [
            (0.0, FailureAction::Pause, 1, Some("paused")),
            (0.0, FailureAction::Rollback, 1, Some("rollback")),
            (0.0, FailureAction::Continue, 1, None),
            // 25 % of 4 slots tolerates one failure, not two.
            (0.25, FailureAction::Pause, 1, None),
            (0.25, FailureAction::Pause, 2, Some("paused")),
        ] {
            let r = plan_for(&service(1, ratio, action), 0, failed, 1_500);
            let got = match &r.status {
                Some(StatusChange::Set(s)) if s.state == UpdateState::Paused => {
                    assert!(
                        s.message.starts_with("update paused due to failure or early termination of task f"),
                        "{}",
                        s.message
                    );
                    Some("paused")
                }
                Some(StatusChange::Rollback { reason }) => {
                    assert!(reason.starts_with("update rolled back due to failure"), "{reason}");
                    Some("rollback")
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => None,
            };
            assert_eq!(got, want, "ratio {ratio}, {action:?}, {failed} failed");
            if want.is_none() {
                assert!(!r.start.is_empty(), "the update goes on");
            }
        }
    }
}
