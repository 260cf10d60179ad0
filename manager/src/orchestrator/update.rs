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

fn current(svc: &Service, t: &Task) -> bool {
    t.spec == svc.spec.task
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
                (FailureAction::Rollback, false) => Some(StatusChange::Rollback { reason: format!("update rolled back due to {why}") }),
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
    let outdated: Vec<usize> = units
        .iter()
        .enumerate()
        .filter(|(_, u)| newest(u).is_some_and(|t| !current(svc, t)))
        .map(|(i, _)| i)
        .collect();
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
