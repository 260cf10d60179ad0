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

/// Task `id` of service `svc`, running in `slot` on node `node`, made at
/// `created_at`.
pub(crate) fn task_on(id: &str, svc: &str, slot: u64, node: &str, created_at: u64) -> Task {
    let mut t = task(id, TaskState::Running);
    t.service_id = svc.into();
    t.service_name = svc.into();
    t.slot = slot;
    t.node_id = Some(node.into());
    t.created_at = created_at;
    t
}

/// An active worker `id`, hostname `id`.
pub(crate) fn node(id: &str) -> common::node::Node {
    common::node::Node {
        id: id.into(),
        raft_id: 1,
        hostname: id.into(),
        role: common::node::Role::Worker,
        availability: common::node::Availability::Active,
        labels: Default::default(),
        addr: "127.0.0.1:4242".parse().unwrap(),
        created_at: 0,
        updated_at: 0,
    }
}
