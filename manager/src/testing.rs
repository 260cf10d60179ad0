//! Fixtures the unit tests of several modules share.

use common::spec::TaskTemplate;
use common::task::{Task, TaskState, TaskStatus};

/// Task `id` of service `s`, slot 1 on node `n`, image `i`, desired running,
/// in `state` since time 0.
pub(crate) fn task(id: &str, state: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "s".into(),
        service_name: "s".into(),
        slot: 1,
        node_id: Some("n".into()),
        spec: TaskTemplate::new("i"),
        desired_state: TaskState::Running,
        status: TaskStatus::new(state, 0, ""),
        created_at: 0,
        attempt: 0,
        addresses: vec![],
        job_iteration: None,
    }
}
