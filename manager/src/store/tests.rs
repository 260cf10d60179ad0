//! The store's rules: apply, batches, entry formats and the task indexes.

use super::*;
use common::spec::TaskTemplate;

pub(crate) fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec::new(name, replicas, TaskTemplate::new("img"))
}

fn service(name: &str) -> Service {
    Service::new(ServiceId::random(), spec(name, 1), 0)
}

#[test]
fn names_are_unique_and_errors_are_deterministic() {
    let mut s = Store::default();
    s.apply(Command::CreateService(service("web"))).unwrap();
    let err = s.apply(Command::CreateService(service("web"))).unwrap_err();
    assert!(matches!(err, StoreError::NameInUse(ref n, _) if n == "web"));
    assert_eq!(s.services.len(), 1);
}

#[test]
fn task_status_only_moves_forward() {
    let mut s = Store::default();
    let svc = service("web");
    let sid = svc.id.clone();
    s.apply(Command::CreateService(svc)).unwrap();
    let t = Task {
        id: TaskId::random(),
        service_id: sid,
        service_name: "web".into(),
        slot: 1,
        node_id: None,
        spec: spec("web", 1).task,
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::New, 0, "created"),
        created_at: 0,
        attempt: 0,
        addresses: vec![],
        job_iteration: None,
    };
    let id = t.id.clone();
    s.apply(Command::CreateTasks(vec![t])).unwrap();
    let up = |state| {
        Command::UpdateTaskStatus(vec![TaskStatusUpdate { task_id: id.clone(), status: TaskStatus::new(state, 1, "") }])
    };
    s.apply(up(TaskState::Running)).unwrap();
    s.apply(up(TaskState::Starting)).unwrap();
    assert_eq!(s.tasks[&id].status.state, TaskState::Running);
    s.apply(up(TaskState::Failed)).unwrap();
    s.apply(up(TaskState::Running)).unwrap();
    assert_eq!(s.tasks[&id].status.state, TaskState::Failed);
}

#[test]
fn snapshot_round_trip_and_unknown_commands() {
    let mut s = Store::default();
    s.apply(Command::CreateService(service("a"))).unwrap();
    let back = Store::from_snapshot(&s.to_snapshot()).unwrap();
    assert_eq!(back, s);
    assert!(decode_command(b"\x81\xa9NotAThing\xc0").is_err());
    let c = Command::RemoveNode("n".into());
    assert_eq!(decode_command(&encode_command(&c)).unwrap(), c);
}

#[test]
fn published_ports_are_allocated_and_checked() {
    let mut s = Store::default();
    let mut a = service("a");
    a.spec.task.ports = vec!["8080:80".parse().unwrap(), "80".parse().unwrap(), "80/udp".parse().unwrap()];
    s.allocate_ports(&a.id, &mut a.spec.task.ports).unwrap();
    let published: Vec<Option<u16>> = a.spec.task.ports.iter().map(|p| p.published).collect();
    assert_eq!(published, [Some(8080), Some(30000), Some(30000)]);
    s.apply(Command::CreateService(a)).unwrap();

    let mut b = service("b");
    b.spec.task.ports = vec!["8080:81".parse().unwrap()];
    let err = s.apply(Command::CreateService(b.clone())).unwrap_err();
    assert_eq!(err.to_string(), "port 8080/tcp is already published by service a");
    b.spec.task.ports = vec!["81".parse().unwrap()];
    s.allocate_ports(&b.id, &mut b.spec.task.ports).unwrap();
    assert_eq!(b.spec.task.ports[0].published, Some(30001));
    b.spec.task.ports.push("30001:90".parse().unwrap());
    assert!(matches!(s.apply(Command::CreateService(b.clone())), Err(StoreError::PortTwice { port: 30001, .. })));

    // Host-mode publishes may share a port.
    let mut h1 = service("h1");
    h1.spec.task.ports = vec!["published=9000,target=80,mode=host".parse().unwrap()];
    let mut h2 = service("h2");
    h2.spec.task.ports = h1.spec.task.ports.clone();
    s.apply(Command::CreateService(h1)).unwrap();
    s.apply(Command::CreateService(h2)).unwrap();
}

#[test]
fn a_gossip_key_rotation_takes_the_next_id_and_times_the_switch_from_its_command() {
    use common::gossip_key::{GossipKeyRing, SWITCH_DELAY};
    let mut s = Store::default();
    let info = ClusterInfo { id: "c".into(), gossip_keys: GossipKeyRing::first(), ..Default::default() };
    s.apply(Command::InitCluster(Box::new(info))).unwrap();
    let first = s.cluster.gossip_keys.current.clone().unwrap();
    let c = Command::RotateGossipKey { key: [7; 32], at: 1_000 };
    assert_eq!(decode_command(&encode_command(&c)).unwrap(), c);
    s.apply(c).unwrap();
    let ring = &s.cluster.gossip_keys;
    assert_eq!(ring.previous.as_ref(), Some(&first));
    assert_eq!(ring.current.as_ref().map(|k| (k.id, k.key)), Some((2, [7; 32])));
    assert_eq!(ring.switch_at, 1_000 + SWITCH_DELAY);
    assert_eq!(Store::from_snapshot(&s.to_snapshot()).unwrap(), s);
    // In a batch that fails, the rotation is undone with the rest.
    let before = s.clone();
    let failing = Command::Batch(vec![
        Command::RotateGossipKey { key: [8; 32], at: 2_000 },
        Command::SetNodeAvailability { id: "nobody".into(), availability: Availability::Drain, at: 2_000 },
    ]);
    assert!(s.apply(failing).is_err());
    assert_eq!(s, before);
}

#[test]
fn rotating_a_join_token_replaces_that_role_only() {
    let mut s = Store::default();
    let info =
        ClusterInfo { id: "c".into(), worker_token: "w1".into(), manager_token: "m1".into(), ..Default::default() };
    s.apply(Command::InitCluster(Box::new(info))).unwrap();
    s.apply(Command::RotateJoinToken { role: Role::Worker, token: "w2".into() }).unwrap();
    assert_eq!((s.cluster.worker_token.as_str(), s.cluster.manager_token.as_str()), ("w2", "m1"));
    s.apply(Command::RotateJoinToken { role: Role::Manager, token: "m2".into() }).unwrap();
    assert_eq!((s.cluster.worker_token.as_str(), s.cluster.manager_token.as_str()), ("w2", "m2"));
    let c = Command::RotateJoinToken { role: Role::Worker, token: "w3".into() };
    assert_eq!(decode_command(&encode_command(&c)).unwrap(), c);
    assert_eq!(Store::from_snapshot(&s.to_snapshot()).unwrap(), s);
}

#[test]
fn cluster_info_from_before_the_ca_still_decodes() {
    #[derive(Serialize)]
    struct Before {
        id: String,
        worker_token: String,
        manager_token: String,
        created_at: Millis,
    }
    let old = Before { id: "c".into(), worker_token: "w".into(), manager_token: "m".into(), created_at: 1 };
    let info: ClusterInfo = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
    assert_eq!(info.id, "c");
    assert!(info.ca.is_empty());
    // …and from before `--cert-expiry`: Swarm's default, 90 days.
    assert_eq!(info.cert_expiry_ms, None);
    assert_eq!(info.cert_expiry(), std::time::Duration::from_secs(90 * 24 * 3600));
    let set = ClusterInfo { cert_expiry_ms: Some(40_000), ..info };
    let round: ClusterInfo = rmp_serde::from_slice(&rmp_serde::to_vec_named(&set).unwrap()).unwrap();
    assert_eq!(round.cert_expiry(), std::time::Duration::from_secs(40));
}

#[test]
fn removing_a_service_removes_its_tasks() {
    let mut s = Store::default();
    let svc = service("a");
    let sid = svc.id.clone();
    s.apply(Command::CreateService(svc)).unwrap();
    s.apply(Command::RemoveService(sid.clone())).unwrap();
    assert!(s.tasks_of(&sid).next().is_none());
    assert!(matches!(s.apply(Command::RemoveService(sid)), Err(StoreError::NoSuchService(_))));
}

/// Every kind of command, as a cluster's log might hold them.
fn history() -> Vec<Command> {
    let node = |id: &str, raft_id: u64, role: Role| Node {
        id: id.into(),
        raft_id,
        hostname: format!("host-{id}"),
        role,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        addr: "10.0.0.1:4242".parse().unwrap(),
        created_at: 5,
        updated_at: 5,
    };
    let task = |id: &str, service: &str, slot: u64| Task {
        id: id.into(),
        service_id: service.into(),
        service_name: service.into(),
        slot,
        node_id: None,
        spec: spec(service, 2).task,
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::New, 7, "created"),
        created_at: 7,
        attempt: 0,
        addresses: vec![],
        job_iteration: None,
    };
    let mut web = spec("web", 2);
    web.task.ports = vec!["8080:80".parse().unwrap()];
    let mut web2 = web.clone();
    web2.task.image = "img:2".into();
    let info = ClusterInfo {
        id: "cluster".into(),
        worker_token: "SWMTKN-w".into(),
        manager_token: "SWMTKN-m".into(),
        created_at: 1,
        ca: crate::ca::ClusterCa { cert_pem: "CERT".into(), key_pem: "KEY".into() },
        // Entries from before sealed gossip decode to an empty ring.
        gossip_keys: Default::default(),
        revoked: Default::default(),
        // Entries from before configurable pools decode to the documented default.
        addr_pool: Default::default(),
        // …and from before `--cert-expiry`, to 90 days.
        cert_expiry_ms: None,
    };
    vec![
        Command::Batch(vec![Command::InitCluster(Box::new(info)), Command::AddNode(node("m1", 1, Role::Manager))]),
        Command::AddNode(node("w1", 2, Role::Worker)),
        Command::AddNode(node("w2", 3, Role::Worker)),
        Command::SetNodeAvailability { id: "w2".into(), availability: Availability::Drain, at: 8 },
        Command::UpdateNodeLabels {
            id: "w1".into(),
            add: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            rm: vec!["none".into()],
            at: 9,
        },
        Command::SetNodeRole { id: "w2".into(), role: Role::Manager, at: 10 },
        Command::CreateService(Service::new("web".into(), web, 11)),
        Command::CreateService(Service::new("db".into(), spec("db", 1), 12)),
        Command::CreateTasks(vec![task("t1", "web", 1), task("t2", "web", 2), task("t3", "db", 1)]),
        Command::AssignTasks(vec![
            Assignment { task: "t1".into(), node: "w1".into(), at: 13 },
            Assignment { task: "t3".into(), node: "w1".into(), at: 13 },
        ]),
        Command::MarkUnplaceable(vec![Unplaceable { task: "t2".into(), reason: "no suitable node".into(), at: 14 }]),
        Command::UpdateTaskStatus(vec![TaskStatusUpdate {
            task_id: "t1".into(),
            status: TaskStatus::new(TaskState::Running, 15, "started"),
        }]),
        Command::UpdateService { id: "web".into(), spec: web2, at: 16, expect_version: None },
        Command::SetUpdateStatus {
            id: "web".into(),
            status: UpdateStatus {
                state: UpdateState::Paused,
                started_at: 16,
                completed_at: None,
                message: "update paused".into(),
            },
        },
        Command::RollbackService { id: "web".into(), at: 17, reason: "manually requested rollback".into() },
        Command::SetDesiredState { tasks: vec!["t1".into()], state: TaskState::Shutdown },
        Command::DeleteTasks(vec!["t2".into()]),
        Command::RotateJoinToken { role: Role::Worker, token: "SWMTKN-w2".into() },
        Command::RemoveService("db".into()),
        Command::RemoveNode("w2".into()),
    ]
}

/// The entries and the snapshot of [`history`] exactly as the code before
/// the entry envelope and the task indexes wrote them (each entry is
/// `[u32 le length][bytes]`).
const ENTRIES_V0: &[u8] = include_bytes!("testdata/entries-v0.bin");
pub(crate) const SNAPSHOT_V0: &[u8] = include_bytes!("testdata/snapshot-v0.bin");

pub(crate) fn entries_v0() -> Vec<Vec<u8>> {
    let mut rest = ENTRIES_V0;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

#[test]
fn entries_and_snapshots_from_before_the_envelope_still_load() {
    let entries = entries_v0();
    assert_eq!(entries.len(), history().len());
    let mut s = Store::default();
    for (bytes, cmd) in entries.iter().zip(history()) {
        assert_eq!(decode_command(bytes).unwrap(), cmd);
        s.apply(cmd).unwrap();
    }
    // The same store, and the snapshot format has not changed, but for the
    // removed nodes' list the history's `node rm` now writes (a store from
    // before it has none: nodes removed then are not refused by id).
    assert_eq!(s.cluster.revoked.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["w2"]);
    s.cluster.revoked.clear();
    assert_eq!(s.to_snapshot(), SNAPSHOT_V0);
    let old = Store::from_snapshot(SNAPSHOT_V0).unwrap();
    assert_eq!(old, s);
    assert!(old.tasks.indexes_match_a_scan());
    let on_w1: Vec<&str> = old.tasks_on(&"w1".into()).map(|t| t.id.as_str()).collect();
    assert_eq!(on_w1, ["t1"], "t3 went with its service");
    let of_web: Vec<&str> = old.tasks_of(&"web".into()).map(|t| t.id.as_str()).collect();
    assert_eq!(of_web, ["t1"]);
}

#[test]
fn only_ignorable_commands_get_an_envelope() {
    let unplaceable = Command::MarkUnplaceable(vec![Unplaceable { task: "t".into(), reason: "r".into(), at: 1 }]);
    let bytes = encode_command(&unplaceable);
    assert_eq!(bytes[..2], [0xc1, IGNORABLE]);
    assert_eq!(decode_command(&bytes).unwrap(), unplaceable);
    let batch = Command::Batch(vec![unplaceable.clone(), unplaceable.clone()]);
    assert_eq!(encode_command(&batch)[..2], [0xc1, IGNORABLE]);
    // Everything else is written as before, so managers from before the
    // envelope read it.
    let mixed = Command::Batch(vec![unplaceable, Command::RemoveNode("n".into())]);
    for cmd in history().into_iter().chain([mixed]) {
        if !matches!(cmd, Command::MarkUnplaceable(_)) {
            assert!(!cmd.ignorable(), "{cmd:?}");
            assert_eq!(encode_command(&cmd), rmp_serde::to_vec_named(&cmd).unwrap());
        }
    }
}

#[test]
fn the_sessionless_set_is_ignorable_undone_by_a_failed_batch_and_not_written_when_empty() {
    let set = Command::SetNoSession(["a".into(), "b".into()].into());
    let bytes = encode_command(&set);
    assert_eq!(bytes[..2], [0xc1, IGNORABLE], "only followers read it");
    assert_eq!(decode_command(&bytes).unwrap(), set);
    let mut s = Store::default();
    let empty = s.to_snapshot();
    s.apply(set).unwrap();
    assert_eq!(s.no_session.len(), 2);
    assert_eq!(Store::from_snapshot(&s.to_snapshot()).unwrap().no_session, s.no_session);
    let failing = Command::Batch(vec![Command::SetNoSession(Default::default()), Command::RemoveService("x".into())]);
    assert!(s.apply(failing).is_err());
    assert_eq!(s.no_session.len(), 2, "a failed batch leaves the set as it was");
    s.apply(Command::SetNoSession(Default::default())).unwrap();
    assert_eq!(s.to_snapshot(), empty, "an empty set is not written");
}

#[test]
fn an_unknown_command_is_skippable_only_when_marked() {
    // A command from a newer version, as it would encode it.
    let future = b"\x81\xa9NotAThing\xc0";
    let bare = decode_command(future).unwrap_err();
    assert!(!bare.ignorable);
    assert!(bare.reason.contains("NotAThing"), "{}", bare.reason);
    let marked = decode_command(&[&[0xc1, IGNORABLE][..], future].concat()).unwrap_err();
    assert!(marked.ignorable);
    let unmarked = decode_command(&[&[0xc1, 0][..], future].concat()).unwrap_err();
    assert!(!unmarked.ignorable);
    // A flag this version does not know makes even a known command unreadable.
    let known = rmp_serde::to_vec_named(&Command::RemoveNode("n".into())).unwrap();
    let e = decode_command(&[&[0xc1, 0x02][..], &known].concat()).unwrap_err();
    assert_eq!((e.ignorable, e.reason.as_str()), (false, "unknown entry flags 0x02"));
    let e = decode_command(&[&[0xc1, 0x03][..], &known].concat()).unwrap_err();
    assert!(e.ignorable);
    assert!(!decode_command(&[0xc1]).unwrap_err().ignorable);
    assert!(!decode_command(&[]).unwrap_err().ignorable);
}

fn task(id: &str, service: &str, node: Option<&str>) -> Task {
    Task {
        id: id.into(),
        service_id: service.into(),
        service_name: service.into(),
        slot: 1,
        node_id: node.map(NodeId::from),
        spec: spec(service, 1).task,
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::New, 0, "created"),
        created_at: 0,
        attempt: 0,
        addresses: vec![],
        job_iteration: None,
    }
}

#[test]
fn a_batch_whose_third_command_fails_changes_nothing() {
    let mut s = Store::default();
    for c in history() {
        s.apply(c).unwrap();
    }
    let before = s.to_snapshot();
    let mut taken = Service::new("other".into(), spec("web", 1), 20);
    taken.spec.name = "web".into();
    let mut changes = Vec::new();
    let err = s
        .apply_recording(
            Command::Batch(vec![
                Command::CreateTasks(vec![task("t9", "web", Some("w1"))]),
                Command::Batch(vec![
                    Command::CreateService(Service::new("cache".into(), spec("cache", 1), 20)),
                    Command::CreateTasks(vec![task("t10", "cache", Some("w1"))]),
                    Command::SetNodeAvailability { id: "w1".into(), availability: Availability::Pause, at: 21 },
                    Command::DeleteTasks(vec!["t1".into()]),
                    Command::RemoveService("cache".into()),
                ]),
                // The third command: the name is taken.
                Command::CreateService(taken),
                Command::RotateJoinToken { role: Role::Manager, token: "never".into() },
            ]),
            &mut changes,
        )
        .unwrap_err();
    assert_eq!(err, StoreError::NameInUse("web".into(), "web".into()));
    assert_eq!(s.to_snapshot(), before, "the store is byte for byte what it was");
    assert!(changes.is_empty(), "no events for a batch that did not apply: {changes:?}");
    assert!(s.tasks.indexes_match_a_scan());
    assert_eq!(s.tasks_on(&"w1".into()).count(), 1);
}

#[test]
fn a_batch_sees_its_earlier_commands() {
    let mut s = Store::default();
    let svc = Service::new("a".into(), spec("a", 1), 0);
    s.apply(Command::Batch(vec![
        Command::CreateService(svc),
        Command::UpdateService { id: "a".into(), spec: spec("a", 3), at: 1, expect_version: None },
        Command::CreateTasks(vec![task("t1", "a", None)]),
    ]))
    .unwrap();
    assert_eq!((s.services[&ServiceId::from("a")].version, s.tasks.len()), (2, 1));
}

/// A small random world: few ids, so that commands collide (names taken,
/// tasks of removed services, nodes gone) and batches fail midway.
struct Gen(rand::rngs::StdRng);

impl Gen {
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        use rand::Rng;
        from[self.0.gen_range(0..from.len())].clone()
    }
    fn chance(&mut self, percent: u32) -> bool {
        use rand::Rng;
        self.0.gen_range(0..100) < percent
    }
    fn service_id(&mut self) -> ServiceId {
        self.pick(&["s0", "s1", "s2", "s3"]).into()
    }
    fn node_id(&mut self) -> NodeId {
        self.pick(&["n0", "n1", "n2"]).into()
    }
    fn task_id(&mut self) -> TaskId {
        use rand::Rng;
        format!("t{}", self.0.gen_range(0..24)).into()
    }
    fn task_ids(&mut self) -> Vec<TaskId> {
        (0..self.pick(&[1, 2, 3])).map(|_| self.task_id()).collect()
    }
    fn state(&mut self) -> TaskState {
        self.pick(&TaskState::ALL)
    }
    fn node(&mut self) -> Node {
        let id = self.node_id();
        Node {
            hostname: id.to_string(),
            id,
            raft_id: 1,
            role: Role::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            addr: "10.0.0.1:4242".parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn command(&mut self, depth: u32) -> Command {
        match self.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]) {
            0 => {
                let id = self.service_id();
                let name = self.pick(&["a", "b", "c"]);
                Command::CreateService(Service::new(id, spec(name, 1), 0))
            }
            1 => Command::RemoveService(self.service_id()),
            2 => Command::UpdateService {
                id: self.service_id(),
                spec: spec(self.pick(&["a", "b", "c"]), 2),
                at: 1,
                expect_version: None,
            },
            3 => Command::AddNode(self.node()),
            4 => Command::RemoveNode(self.node_id()),
            5 => Command::SetNodeAvailability { id: self.node_id(), availability: Availability::Drain, at: 1 },
            6 | 7 => {
                let tasks = (0..self.pick(&[1, 2, 4]))
                    .map(|_| {
                        // Global tasks are created already assigned.
                        let node = self.chance(30).then(|| self.node_id());
                        let mut t = task("", self.service_id().as_str(), None);
                        t.id = self.task_id();
                        t.node_id = node;
                        t
                    })
                    .collect();
                Command::CreateTasks(tasks)
            }
            8 => Command::AssignTasks(
                self.task_ids().into_iter().map(|task| Assignment { task, node: self.node_id(), at: 2 }).collect(),
            ),
            9 => Command::UpdateTaskStatus(
                self.task_ids()
                    .into_iter()
                    .map(|task_id| TaskStatusUpdate { task_id, status: TaskStatus::new(self.state(), 3, "") })
                    .collect(),
            ),
            10 => Command::SetDesiredState { tasks: self.task_ids(), state: self.state() },
            11 => Command::DeleteTasks(self.task_ids()),
            12 => Command::MarkUnplaceable(
                self.task_ids().into_iter().map(|task| Unplaceable { task, reason: "none".into(), at: 4 }).collect(),
            ),
            _ if depth < 2 => Command::Batch((0..self.pick(&[1, 2, 3, 5])).map(|_| self.command(depth + 1)).collect()),
            _ => Command::RemoveService(self.service_id()),
        }
    }
}

/// What the indexes must say, by a scan of every task.
fn scanned(s: &Store) -> (BTreeMap<ServiceId, Vec<TaskId>>, BTreeMap<NodeId, Vec<TaskId>>) {
    let (mut by_service, mut by_node) = (BTreeMap::new(), BTreeMap::<NodeId, Vec<TaskId>>::new());
    for t in s.tasks.values() {
        by_service.entry(t.service_id.clone()).or_insert_with(Vec::new).push(t.id.clone());
        if let Some(n) = &t.node_id {
            by_node.entry(n.clone()).or_default().push(t.id.clone());
        }
    }
    (by_service, by_node)
}

fn assert_indexes_match(s: &Store, what: &str) {
    assert!(s.tasks.indexes_match_a_scan(), "{what}");
    let (by_service, by_node) = scanned(s);
    for (id, want) in &by_service {
        let got: Vec<TaskId> = s.tasks_of(id).map(|t| t.id.clone()).collect();
        assert_eq!(&got, want, "{what}: tasks of {id}");
    }
    for (id, want) in &by_node {
        let got: Vec<TaskId> = s.tasks_on(id).map(|t| t.id.clone()).collect();
        assert_eq!(&got, want, "{what}: tasks on {id}");
    }
    for id in ["s0", "s1", "s2", "s3"].map(ServiceId::from).iter().filter(|id| !by_service.contains_key(*id)) {
        assert_eq!(s.tasks_of(id).count(), 0, "{what}: tasks of {id}");
    }
    for id in ["n0", "n1", "n2"].map(NodeId::from).iter().filter(|id| !by_node.contains_key(*id)) {
        assert_eq!(s.tasks_on(id).count(), 0, "{what}: tasks on {id}");
    }
}

#[test]
fn indexes_equal_a_full_scan_after_any_commands_and_failed_batches_change_nothing() {
    use rand::SeedableRng;
    let mut failed_batches = 0;
    for seed in 0..300 {
        let mut g = Gen(rand::rngs::StdRng::seed_from_u64(seed));
        let mut s = Store::default();
        for step in 0..80 {
            let cmd = g.command(0);
            let what = format!("seed {seed} step {step}: {cmd:?}");
            let before = s.to_snapshot();
            let is_batch = matches!(cmd, Command::Batch(_));
            if s.apply(cmd).is_err() {
                // Single commands check before they change; batches undo.
                assert_eq!(s.to_snapshot(), before, "{what}");
                failed_batches += is_batch as u32;
            }
            assert_indexes_match(&s, &what);
            if step % 20 == 19 {
                let back = Store::from_snapshot(&s.to_snapshot()).unwrap();
                assert_eq!(back, s, "{what}");
                assert_indexes_match(&back, &format!("{what}, decoded"));
            }
        }
    }
    assert!(failed_batches > 100, "the generator makes batches fail midway ({failed_batches})");
}

#[test]
fn changing_a_task_in_place_moves_it_in_the_indexes() {
    let mut tasks: Tasks = [task("t1", "a", None), task("t2", "a", Some("n1"))].into_iter().collect();
    tasks.get_mut(&"t1".into()).unwrap().node_id = Some("n2".into());
    {
        let mut t = tasks.get_mut(&"t2".into()).unwrap();
        t.service_id = "b".into();
        t.node_id = None;
    }
    tasks.update_all(|t| t.slot = 9);
    assert!(tasks.indexes_match_a_scan());
    let ids = |it: &mut dyn Iterator<Item = &Task>| it.map(|t| t.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&mut tasks.on_node(&"n2".into())), ["t1"]);
    assert_eq!(ids(&mut tasks.on_node(&"n1".into())), Vec::<String>::new());
    assert_eq!(ids(&mut tasks.of_service(&"a".into())), ["t1"]);
    assert_eq!(ids(&mut tasks.of_service(&"b".into())), ["t2"]);
    assert!(tasks.remove(&"t1".into()).is_some());
    assert!(tasks.indexes_match_a_scan());
}

#[test]
fn an_update_for_a_stale_version_is_refused_and_changes_nothing() {
    let mut s = Store::default();
    s.apply(Command::CreateService(Service::new("web".into(), spec("web", 1), 0))).unwrap();
    let up = |v| Command::UpdateService { id: "web".into(), spec: spec("web", 2), at: 1, expect_version: Some(v) };
    s.apply(up(1)).unwrap();
    assert_eq!(s.services[&ServiceId::from("web")].version, 2);
    let before = s.clone();
    let err = s.apply(up(1)).unwrap_err();
    assert_eq!(err.to_string(), "service web is at version 2, not 1: update out of sequence");
    assert_eq!(s, before);
}

#[test]
fn a_removed_node_is_revoked_and_a_failed_batch_takes_that_back() {
    let mut s = Store::default();
    s.apply(Command::AddNode(crate::testing::node("w1"))).unwrap();
    s.apply(Command::AddNode(crate::testing::node("w2"))).unwrap();
    // Removing a node that is not there revokes nothing.
    s.apply(Command::RemoveNode("nobody".into())).unwrap();
    assert!(s.cluster.revoked.is_empty());
    s.apply(Command::RemoveNode("w1".into())).unwrap();
    assert_eq!(s.cluster.revoked.iter().map(|n| n.to_string()).collect::<Vec<_>>(), ["w1"]);
    // A batch that fails after removing w2 leaves it a member, unrevoked.
    let failing = Command::Batch(vec![Command::RemoveNode("w2".into()), Command::RemoveService("none".into())]);
    assert!(s.apply(failing).is_err());
    assert!(s.nodes.contains_key(&NodeId::from("w2")));
    assert!(!s.cluster.revoked.contains(&NodeId::from("w2")));
    // The list survives a snapshot.
    assert_eq!(Store::from_snapshot(&s.to_snapshot()).unwrap(), s);
}
