//! The web view: one page, built into the binary (`index.html`, `app.js`,
//! `style.css`: plain JS, no build step, nothing fetched from elsewhere),
//! that shows a column per node and a card per live task and follows the
//! cluster over server-sent events.
//!
//! Here are the assets and the pure parts: what the page sees of the store
//! ([`snapshot`]), what changed between two looks ([`diff`]) and the event
//! framing ([`sse`]). The routes (`/ui`, `/v1/ui/state`, `/v1/ui/stream`) are
//! thin handlers in [`crate::api`]: a stream sends a snapshot, then on every
//! store event (at most one push per [`MIN_GAP`], and a look every
//! [`REFRESH`] for what no event announces, such as a new leader) the patch
//! from the last state it sent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::api::{NodeInfo, UiPatch, UiState, UiTask};
use common::node::Role;
use common::task::{Task, TaskState};
use common::time::Millis;
use common::{NodeId, ServiceId};
use serde::Serialize;

use crate::store::Store;

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const STYLE_CSS: &str = include_str!("style.css");

/// Pushes to one page are at least this far apart: a burst of changes (a
/// service of 500 tasks starting) becomes a few patches, not hundreds.
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// A stream compares the store with what it sent at least this often.
pub const REFRESH: Duration = Duration::from_secs(1);
/// An idle stream sends a comment this often (proxies and dead peers).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a browser waits before it reconnects a dropped stream.
pub const RETRY_MS: u64 = 1000;

/// Whether the page shows this task: it is not finished, or it is the newest
/// task of a slot that is still meant to run (a failed replica waiting for
/// its restart shows as failed).
fn is_live(t: &Task, newest: &HashMap<(&ServiceId, u64, Option<&NodeId>), (Millis, &common::TaskId)>) -> bool {
    if !t.status.state.is_terminal() {
        return true;
    }
    t.desired_state == TaskState::Running && newest.get(&slot_key(t)) == Some(&(t.created_at, &t.id))
}

/// A replicated task's slot, or a global task's node.
fn slot_key(t: &Task) -> (&ServiceId, u64, Option<&NodeId>) {
    (&t.service_id, t.slot, if t.slot == 0 { t.node_id.as_ref() } else { None })
}

/// The page's picture of the store; `nodes` as `/v1/nodes` reports them.
pub fn snapshot(store: &Store, mut nodes: Vec<NodeInfo>, now: Millis) -> UiState {
    nodes.sort_by(|a, b| {
        (a.node.role != Role::Manager, &a.node.hostname, &a.node.id).cmp(&(
            b.node.role != Role::Manager,
            &b.node.hostname,
            &b.node.id,
        ))
    });
    let mut newest = HashMap::new();
    for t in store.tasks.values() {
        let e = newest.entry(slot_key(t)).or_insert((t.created_at, &t.id));
        if (t.created_at, &t.id) > *e {
            *e = (t.created_at, &t.id);
        }
    }
    let tasks = store
        .tasks
        .values()
        .filter(|t| is_live(t, &newest))
        .map(|t| UiTask {
            id: t.id.clone(),
            service: t.service_name.clone(),
            service_id: t.service_id.clone(),
            slot: t.slot,
            name: t.name(),
            node_id: t.node_id.clone(),
            image: t.spec.image.clone(),
            state: t.status.state,
            desired: t.desired_state,
            since: t.status.timestamp,
            error: t.status.err.clone().unwrap_or_default(),
            addresses: t.addresses.iter().map(|a| format!("{} {}", a.name, a.addr)).collect(),
        })
        .collect();
    UiState { now, nodes, tasks }
}

/// What turns `prev` into `next`; `None` when nothing but the time changed.
pub fn diff(prev: &UiState, next: &UiState) -> Option<UiPatch> {
    let before: BTreeMap<&common::TaskId, &UiTask> = prev.tasks.iter().map(|t| (&t.id, t)).collect();
    let upsert: Vec<UiTask> = next.tasks.iter().filter(|t| before.get(&t.id) != Some(t)).cloned().collect();
    let after: BTreeMap<&common::TaskId, ()> = next.tasks.iter().map(|t| (&t.id, ())).collect();
    let remove: Vec<common::TaskId> =
        prev.tasks.iter().filter(|t| !after.contains_key(&t.id)).map(|t| t.id.clone()).collect();
    let nodes = (prev.nodes != next.nodes).then(|| next.nodes.clone());
    if upsert.is_empty() && remove.is_empty() && nodes.is_none() {
        return None;
    }
    Some(UiPatch { now: next.now, nodes, upsert, remove })
}

/// One server-sent event: `event: NAME` and its JSON on one `data:` line.
pub fn sse(event: &str, data: &impl Serialize) -> Vec<u8> {
    let mut out = format!("event: {event}\ndata: ").into_bytes();
    // serde_json writes no raw newline in compact form, so one line holds it.
    serde_json::to_writer(&mut out, data).unwrap_or_default();
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Service};
    use common::node::{Node, NodeStatus};
    use common::spec::{ServiceSpec, TaskTemplate};
    use common::task::{TaskStatus, TaskStatusUpdate};

    fn node(id: &str, host: &str, role: Role) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: host.into(),
            role,
            availability: Default::default(),
            labels: Default::default(),
            addr: "127.0.0.1:4242".parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn info(n: Node) -> NodeInfo {
        NodeInfo {
            node: n,
            status: NodeStatus::Ready,
            manager_status: String::new(),
            is_self: false,
            disk_alarm: None,
            resources: None,
        }
    }

    fn task(id: &str, slot: u64, node: &str, state: TaskState, desired: TaskState, created_at: Millis) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot,
            node_id: Some(node.into()),
            spec: TaskTemplate::new("shoal/busybox:latest"),
            desired_state: desired,
            status: TaskStatus::new(state, created_at + 5, ""),
            created_at,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        }
    }

    fn store_with(tasks: Vec<Task>) -> Store {
        let mut s = Store::default();
        s.apply(Command::AddNode(node("n1", "node1", Role::Manager))).unwrap();
        s.apply(Command::AddNode(node("n2", "node2", Role::Worker))).unwrap();
        let svc = Service::new("s1".into(), ServiceSpec::new("web", 2, TaskTemplate::new("shoal/busybox:latest")), 0);
        s.apply(Command::CreateService(svc)).unwrap();
        s.apply(Command::CreateTasks(tasks)).unwrap();
        s
    }

    fn ids(st: &UiState) -> Vec<&str> {
        st.tasks.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn snapshot_keeps_live_tasks_and_orders_nodes() {
        use TaskState::*;
        let s = store_with(vec![
            Task {
                addresses: vec![common::network::TaskAddress {
                    network: "netapp".into(),
                    name: "app".into(),
                    addr: "10.0.0.2".parse().unwrap(),
                    range: "10.0.0.0/17".parse().unwrap(),
                    block: "10.0.0.0/24".parse().unwrap(),
                    vni: 4096,
                    encrypted: false,
                    routing: Default::default(),
                }],
                ..task("a-run", 1, "n1", Running, Running, 10)
            },
            // Slot 2: an old failure replaced by a starting task.
            task("b-old", 2, "n2", Failed, Running, 10),
            task("b-new", 2, "n2", Starting, Running, 20),
            // Being shut down (drain): still there until it stops.
            task("c-stopping", 3, "n2", Running, Shutdown, 10),
            task("d-stopped", 4, "n2", Shutdown, Shutdown, 10),
            // Slot 5 failed and waits for its restart: the page shows it.
            task("e-failed", 5, "n1", Failed, Running, 30),
        ]);
        let nodes = vec![
            info(node("n3", "node0", Role::Worker)),
            info(node("n2", "node2", Role::Worker)),
            info(node("n1", "node1", Role::Manager)),
        ];
        let st = snapshot(&s, nodes, 99);
        assert_eq!(ids(&st), ["a-run", "b-new", "c-stopping", "e-failed"]);
        assert_eq!(st.tasks[0].addresses, ["app 10.0.0.2"], "a task shows its network addresses");
        assert!(st.tasks[1].addresses.is_empty());
        let hosts: Vec<&str> = st.nodes.iter().map(|n| n.node.hostname.as_str()).collect();
        assert_eq!(hosts, ["node1", "node0", "node2"], "managers first, then by hostname");
        let a = &st.tasks[0];
        assert_eq!(
            (a.name.as_str(), a.service.as_str(), a.slot, a.image.as_str(), a.state, a.desired, a.since),
            ("web.1", "web", 1, "shoal/busybox:latest", Running, Running, 15)
        );
        assert_eq!(st.now, 99);
        let json = serde_json::to_string(&st.tasks[0]).unwrap();
        assert!(!json.contains("error"), "an empty error is left out: {json}");
    }

    #[test]
    fn diff_carries_only_what_changed() {
        use TaskState::*;
        let mut s =
            store_with(vec![task("t1", 1, "n1", Assigned, Running, 10), task("t2", 2, "n2", Running, Running, 10)]);
        let nodes = vec![info(node("n1", "node1", Role::Manager)), info(node("n2", "node2", Role::Worker))];
        let first = snapshot(&s, nodes.clone(), 100);
        assert_eq!(diff(&first, &snapshot(&s, nodes.clone(), 200)), None, "only the time moved");

        let up = |id: &str, state| {
            Command::UpdateTaskStatus(vec![TaskStatusUpdate {
                task_id: id.into(),
                status: TaskStatus::new(state, 150, ""),
            }])
        };
        s.apply(up("t1", Running)).unwrap();
        s.apply(Command::SetDesiredState { tasks: vec!["t2".into()], state: Shutdown }).unwrap();
        s.apply(up("t2", Shutdown)).unwrap();
        s.apply(Command::CreateTasks(vec![task("t3", 3, "n2", New, Running, 140)])).unwrap();
        let second = snapshot(&s, nodes.clone(), 200);
        let p = diff(&first, &second).unwrap();
        let upserted: Vec<(&str, TaskState)> = p.upsert.iter().map(|t| (t.id.as_str(), t.state)).collect();
        assert_eq!(upserted, [("t1", Running), ("t3", New)]);
        assert_eq!(p.remove, ["t2".into()], "a finished task that is not meant to run leaves the page");
        assert_eq!((p.nodes, p.now), (None, 200));

        let mut drained = nodes.clone();
        drained[1].node.availability = common::node::Availability::Drain;
        let third = snapshot(&s, drained, 300);
        let p = diff(&second, &third).unwrap();
        assert!(p.upsert.is_empty() && p.remove.is_empty());
        assert_eq!(
            p.nodes.unwrap()[1].node.availability,
            common::node::Availability::Drain,
            "the whole node list, changed"
        );
    }

    #[test]
    fn events_are_framed_on_one_data_line() {
        let p = UiPatch { now: 5, remove: vec!["t\n1".into()], ..Default::default() };
        let text = String::from_utf8(sse("patch", &p)).unwrap();
        assert_eq!(text, "event: patch\ndata: {\"now\":5,\"upsert\":[],\"remove\":[\"t\\n1\"]}\n\n");
    }
}
