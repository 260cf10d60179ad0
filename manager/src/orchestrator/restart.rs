//! The restart policy, pure: when (if ever) a finished task gets a
//! successor in its slot (or on its node, for a global service).

use common::spec::{RestartCondition, RestartPolicy};
use common::task::{Task, TaskState};
use common::time::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Now,
    /// Not before this time (the restart delay).
    At(Millis),
    /// The policy says no: the slot stays down.
    Never,
}

/// `latest` is the slot's newest task, finished while meant to run;
/// `history` is every task of the slot (or node), `latest` included.
pub fn decide(policy: &RestartPolicy, latest: &Task, history: &[&Task], now: Millis) -> Restart {
    let wanted = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => latest.status.state != TaskState::Complete,
        RestartCondition::Any => true,
    };
    if !wanted {
        return Restart::Never;
    }
    if let Some(max) = policy.max_attempts {
        let allowed = match policy.window_ms {
            // Restarts so far, over the slot's life.
            None => latest.attempt < max,
            // Failures within the window, this one included, as far back as
            // the kept history reaches.
            Some(window) => {
                let since = now.saturating_sub(window);
                let recent =
                    history.iter().filter(|t| t.status.state.is_terminal() && t.status.timestamp >= since).count()
                        as u64;
                recent <= max
            }
        };
        if !allowed {
            return Restart::Never;
        }
    }
    let due = latest.status.timestamp.saturating_add(policy.delay_ms);
    if now >= due {
        Restart::Now
    } else {
        Restart::At(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::spec::TaskTemplate;
    use common::task::TaskStatus;

    fn ended(state: TaskState, at: Millis, attempt: u64) -> Task {
        Task {
            id: format!("t{at}").as_str().into(),
            service_id: "s".into(),
            service_name: "s".into(),
            slot: 1,
            node_id: None,
            spec: TaskTemplate::new("img"),
            desired_state: TaskState::Running,
            status: TaskStatus::new(state, at, ""),
            created_at: at,
            attempt,
            addresses: vec![],
            job_iteration: None,
        }
    }

    fn policy(condition: RestartCondition, delay_ms: u64, max: Option<u64>, window: Option<u64>) -> RestartPolicy {
        RestartPolicy { condition, delay_ms, max_attempts: max, window_ms: window }
    }

    /// Name, policy, the task that ended, its slot's history, now, the decision.
    type Case = (&'static str, RestartPolicy, Task, Vec<Task>, Millis, Restart);

    #[test]
    fn conditions_delays_attempts_and_windows() {
        use RestartCondition::*;
        let failed = ended(TaskState::Failed, 1_000, 0);
        let done = ended(TaskState::Complete, 1_000, 0);
        let cases: Vec<Case> = vec![
            ("none never", policy(None, 0, Option::None, Option::None), failed.clone(), vec![], 5_000, Restart::Never),
            (
                "on-failure skips a clean exit",
                policy(OnFailure, 0, Option::None, Option::None),
                done.clone(),
                vec![],
                5_000,
                Restart::Never,
            ),
            (
                "on-failure restarts a failure",
                policy(OnFailure, 0, Option::None, Option::None),
                failed.clone(),
                vec![],
                5_000,
                Restart::Now,
            ),
            (
                "any restarts a clean exit",
                policy(Any, 0, Option::None, Option::None),
                done.clone(),
                vec![],
                5_000,
                Restart::Now,
            ),
            (
                "delay not yet due",
                policy(Any, 5_000, Option::None, Option::None),
                failed.clone(),
                vec![],
                3_000,
                Restart::At(6_000),
            ),
            ("delay due", policy(Any, 5_000, Option::None, Option::None), failed.clone(), vec![], 6_000, Restart::Now),
            (
                "attempts left",
                policy(Any, 0, Some(2), Option::None),
                ended(TaskState::Failed, 1_000, 1),
                vec![],
                2_000,
                Restart::Now,
            ),
            (
                "attempts used up",
                policy(Any, 0, Some(2), Option::None),
                ended(TaskState::Failed, 1_000, 2),
                vec![],
                2_000,
                Restart::Never,
            ),
            (
                "old failures fall out of the window",
                policy(Any, 0, Some(1), Some(10_000)),
                failed.clone(),
                vec![ended(TaskState::Failed, 100, 0)],
                11_000,
                Restart::Now,
            ),
            (
                "too many failures within the window",
                policy(Any, 0, Some(1), Some(10_000)),
                failed.clone(),
                vec![ended(TaskState::Failed, 900, 0)],
                2_000,
                Restart::Never,
            ),
        ];
        for (what, p, latest, older, now, want) in cases {
            let mut history: Vec<&Task> = older.iter().collect();
            history.push(&latest);
            assert_eq!(decide(&p, &latest, &history, now), want, "{what}");
        }
    }
}
