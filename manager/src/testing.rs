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

/// Random store changes, for the property tests of the loops that follow
/// the store's change feed: each call gives a command that mostly applies
/// to `store` as it is (nodes joining, leaving, drained and described;
/// services made, updated and removed; tasks made, placed, reported on,
/// shut down, orphaned and deleted; batches, some of which fail whole).
pub(crate) mod changes {
    use common::mesh::{PortConfig, Protocol, PublishMode};
    use common::node::Availability;
    use common::sched::{NodeDescription, Resources};
    use common::spec::{ServiceSpec, TaskTemplate};
    use common::task::{Task, TaskState, TaskStatus, TaskStatusUpdate};
    use common::{NodeId, ServiceId, TaskId};
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::Rng;

    use crate::store::{Assignment, Command, Service, Store};

    fn template(rng: &mut StdRng) -> TaskTemplate {
        let mut t = TaskTemplate::new(["img:1", "img:2"].choose(rng).unwrap());
        if rng.gen_bool(0.3) {
            t.scheduling.reservations.nano_cpus = rng.gen_range(1..3) * 500_000_000;
        }
        if rng.gen_bool(0.1) {
            t.scheduling.reservations.generic.insert("gpu".into(), 1);
        }
        if rng.gen_bool(0.3) {
            let mode = if rng.gen_bool(0.5) { PublishMode::Host } else { PublishMode::Ingress };
            t.ports = vec![PortConfig {
                published: Some(if mode == PublishMode::Host {
                    rng.gen_range(9000..9003)
                } else {
                    rng.gen_range(8000..8004)
                }),
                target: 80,
                protocol: if rng.gen_bool(0.8) { Protocol::Tcp } else { Protocol::Udp },
                mode,
                preserve_source: false,
                proxy_protocol: None,
            }];
        }
        t
    }

    fn pick<T: Clone>(rng: &mut StdRng, xs: impl Iterator<Item = T>) -> Option<T> {
        let all: Vec<T> = xs.collect();
        all.choose(rng).cloned()
    }

    fn new_task(rng: &mut StdRng, svc: &Service, node: Option<NodeId>) -> Task {
        Task {
            id: TaskId::random(),
            service_id: svc.id.clone(),
            service_name: svc.spec.name.clone(),
            slot: rng.gen_range(1..6),
            node_id: node,
            spec: svc.spec.task.clone(),
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::New, 0, "created"),
            created_at: rng.gen_range(0..100),
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        }
    }

    /// One command for `store`; `at` is its time.
    pub(crate) fn command(rng: &mut StdRng, store: &Store, at: u64) -> Command {
        let node = |rng: &mut StdRng| pick(rng, store.nodes.keys().cloned());
        let service = |rng: &mut StdRng| pick(rng, store.services.values());
        let task = |rng: &mut StdRng| pick(rng, store.tasks.values());
        match rng.gen_range(0..100) {
            0..=5 => {
                let mut n = super::node(&format!("n{}", rng.gen_range(0..12)));
                n.id = NodeId::random();
                n.labels.insert("zone".into(), ["a", "b"].choose(rng).unwrap().to_string());
                Command::AddNode(n)
            }
            6 => match node(rng) {
                Some(id) => Command::RemoveNode(id),
                None => Command::SetNoSession(Default::default()),
            },
            7..=9 => match node(rng) {
                Some(id) => Command::SetNodeAvailability {
                    id,
                    availability: *[Availability::Active, Availability::Pause, Availability::Drain]
                        .choose(rng)
                        .unwrap(),
                    at,
                },
                None => Command::SetNoSession(Default::default()),
            },
            10..=12 => match node(rng) {
                Some(id) => Command::SetNodeDescription {
                    id,
                    description: NodeDescription {
                        resources: Resources {
                            nano_cpus: rng.gen_range(0..6) * 500_000_000,
                            memory_bytes: 1 << 30,
                            generic: if rng.gen_bool(0.3) { [("gpu".into(), 2)].into() } else { Default::default() },
                        },
                        ..Default::default()
                    },
                },
                None => Command::SetNoSession(Default::default()),
            },
            13..=17 => {
                let name = format!("svc{}", rng.gen_range(0..8));
                Command::CreateService(Service::new(ServiceId::random(), ServiceSpec::new(&name, 3, template(rng)), at))
            }
            18..=19 => match service(rng) {
                Some(s) => {
                    let mut spec = s.spec.clone();
                    spec.task = template(rng);
                    Command::UpdateService { id: s.id.clone(), spec, at, expect_version: None }
                }
                None => Command::SetNoSession(Default::default()),
            },
            20 => match service(rng) {
                Some(s) => Command::RemoveService(s.id.clone()),
                None => Command::SetNoSession(Default::default()),
            },
            21..=34 => match service(rng) {
                Some(s) => {
                    let n = rng.gen_range(1..6);
                    let global = rng.gen_bool(0.2);
                    let tasks = (0..n)
                        .map(|_| {
                            let on = if global { node(rng) } else { None };
                            new_task(rng, s, on)
                        })
                        .collect();
                    Command::CreateTasks(tasks)
                }
                None => Command::SetNoSession(Default::default()),
            },
            35..=49 => {
                let list = (0..rng.gen_range(1..8))
                    .filter_map(|_| {
                        let t = pick(rng, store.tasks.values().filter(|t| t.status.state <= TaskState::Pending))?;
                        let n = t.node_id.clone().or_else(|| node(rng))?;
                        Some(Assignment { task: t.id.clone(), node: n, at })
                    })
                    .collect();
                Command::AssignTasks(list)
            }
            50..=74 => {
                let updates = (0..rng.gen_range(1..10))
                    .filter_map(|_| {
                        let t = task(rng)?;
                        let state = *[
                            TaskState::Accepted,
                            TaskState::Preparing,
                            TaskState::Starting,
                            TaskState::Running,
                            TaskState::Running,
                            TaskState::Complete,
                            TaskState::Failed,
                            TaskState::Rejected,
                            TaskState::Orphaned,
                        ]
                        .choose(rng)
                        .unwrap();
                        let mut status = TaskStatus::new(state, at, "");
                        status.ports = vec![common::mesh::HostPort {
                            protocol: Protocol::Tcp,
                            target: 80,
                            host_port: rng.gen_range(30000..30010),
                        }];
                        Some(TaskStatusUpdate { task_id: t.id.clone(), status })
                    })
                    .collect();
                Command::UpdateTaskStatus(updates)
            }
            75..=82 => Command::SetDesiredState {
                tasks: (0..rng.gen_range(1..4)).filter_map(|_| task(rng).map(|t| t.id.clone())).collect(),
                state: *[TaskState::Shutdown, TaskState::Complete].choose(rng).unwrap(),
            },
            83..=87 => {
                Command::DeleteTasks((0..rng.gen_range(1..4)).filter_map(|_| task(rng).map(|t| t.id.clone())).collect())
            }
            88..=89 => Command::MarkUnplaceable(
                (0..rng.gen_range(1..4))
                    .filter_map(|_| task(rng))
                    .map(|t| crate::store::Unplaceable { task: t.id.clone(), reason: "no".into(), at })
                    .collect(),
            ),
            _ => {
                // A batch of a few; sometimes one that fails (an update
                // of a service that does not exist), undoing the others.
                let mut cmds: Vec<Command> = (0..rng.gen_range(1..4)).map(|_| command(rng, store, at)).collect();
                if rng.gen_bool(0.3) {
                    cmds.push(Command::RollbackService { id: ServiceId::random(), at, reason: String::new() });
                }
                Command::Batch(cmds)
            }
        }
    }
}
