//! The cluster's events: what applied commands changed (from the store) and
//! which nodes gossip sees come and go (and raise or clear a disk alarm), as a numbered stream with a bounded
//! history, for `shoal events` and the web view.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use common::api::Event;
use common::time::Millis;
use common::NodeId;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::store::{Change, Store};

/// Events kept for `--since`.
pub const HISTORY: usize = 10_000;

/// Pure: the event for one change, read against the store after it.
pub fn event_of(change: &Change, store: &Store, now: Millis) -> Option<Event> {
    let hostname = |n: &NodeId| store.nodes.get(n).map(|n| n.hostname.clone()).unwrap_or_else(|| n.to_string());
    let e = |kind: &str, action: &str, id: String, name: String| Event {
        seq: 0,
        time: now,
        kind: kind.into(),
        action: action.into(),
        id,
        name,
        node: None,
        message: String::new(),
    };
    Some(match change {
        Change::Service { id, action } => {
            let svc = store.services.get(id)?;
            let mut ev = e("service", action, id.to_string(), svc.spec.name.clone());
            if let Some(u) = &svc.update_status {
                ev.message = format!("{}: {}", u.state.as_str(), u.message);
            }
            ev
        }
        Change::ServiceRemoved { id, name } => e("service", "remove", id.to_string(), name.clone()),
        Change::Task { id } => {
            let t = store.tasks.get(id)?;
            let mut ev = e("task", t.status.state.as_str(), id.to_string(), t.name());
            ev.node = t.node_id.as_ref().map(hostname);
            ev.message = t.status.err.clone().unwrap_or_default();
            ev
        }
        Change::TaskRemoved { id, name, node } => {
            let mut ev = e("task", "remove", id.to_string(), name.clone());
            ev.node = node.as_ref().map(hostname);
            ev
        }
        Change::Node { id, action } => {
            let n = store.nodes.get(id)?;
            let mut ev = e("node", action, id.to_string(), n.hostname.clone());
            ev.message = format!("availability={}", n.availability.to_string().to_lowercase());
            ev
        }
        Change::NodeRemoved { id, hostname } => e("node", "remove", id.to_string(), hostname.clone()),
        Change::File { kind, id, name, action } => e(&kind.to_string(), action, id.clone(), name.clone()),
        Change::Network { id, name, action } => e("network", action, id.to_string(), name.clone()),
    })
}

/// Pure: nodes that gossip started or stopped seeing (only nodes the store knows).
pub fn liveness_events(before: &BTreeSet<NodeId>, after: &BTreeSet<NodeId>, store: &Store, now: Millis) -> Vec<Event> {
    let mut out = Vec::new();
    for n in store.nodes.values() {
        let action = match (before.contains(&n.id), after.contains(&n.id)) {
            (false, true) => "up",
            (true, false) => "down",
            _ => continue,
        };
        out.push(Event {
            seq: 0,
            time: now,
            kind: "node".into(),
            action: action.into(),
            id: n.id.to_string(),
            name: n.hostname.clone(),
            node: None,
            message: String::new(),
        });
    }
    out
}

/// Pure: nodes whose disk alarm gossip shows raised or cleared since the last
/// look (only nodes the store knows): `disk_alarm` with the reason, then
/// `disk_alarm_cleared`.
pub fn disk_alarm_events(
    before: &BTreeMap<NodeId, String>,
    after: &BTreeMap<NodeId, String>,
    store: &Store,
    now: Millis,
) -> Vec<Event> {
    let mut out = Vec::new();
    for n in store.nodes.values() {
        let (action, message) = match (before.get(&n.id), after.get(&n.id)) {
            (None, Some(why)) => ("disk_alarm", why.clone()),
            (Some(_), None) => ("disk_alarm_cleared", String::new()),
            _ => continue,
        };
        out.push(Event {
            seq: 0,
            time: now,
            kind: "node".into(),
            action: action.into(),
            id: n.id.to_string(),
            name: n.hostname.clone(),
            node: None,
            message,
        });
    }
    out
}

pub struct EventHub {
    inner: Mutex<(u64, VecDeque<Event>)>,
    tx: broadcast::Sender<Event>,
}

impl EventHub {
    pub fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(4096);
        Arc::new(EventHub { inner: Mutex::new((0, VecDeque::new())), tx })
    }

    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let mut g = self.inner.lock();
        for mut e in events {
            g.0 += 1;
            e.seq = g.0;
            if g.1.len() == HISTORY {
                g.1.pop_front();
            }
            g.1.push_back(e.clone());
            let _ = self.tx.send(e);
        }
    }

    /// The kept events from `since` on, and a subscription to what follows
    /// (taken together, so nothing falls between them).
    pub fn since(&self, since: Option<Millis>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let g = self.inner.lock();
        let past = match since {
            Some(t) => g.1.iter().filter(|e| e.time >= t).cloned().collect(),
            None => Vec::new(),
        };
        (past, self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Service};
    use common::node::{Node, Role};
    use common::spec::{ServiceSpec, TaskTemplate};
    use common::task::{Task, TaskState, TaskStatus, TaskStatusUpdate};

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: format!("host-{id}"),
            role: Role::Worker,
            availability: Default::default(),
            labels: Default::default(),
            addr: "127.0.0.1:4242".parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn events(store: &mut Store, cmd: Command) -> Vec<(String, String, String, Option<String>)> {
        let mut changes = Vec::new();
        store.apply_recording(cmd, &mut changes).unwrap();
        changes.iter().filter_map(|c| event_of(c, store, 7)).map(|e| (e.kind, e.action, e.name, e.node)).collect()
    }

    #[test]
    fn commands_become_events_in_order() {
        let mut s = Store::default();
        assert_eq!(
            events(&mut s, Command::AddNode(node("n1"))),
            [("node".into(), "create".into(), "host-n1".into(), None)]
        );
        let svc = Service::new("s1".into(), ServiceSpec::new("web", 1, TaskTemplate::new("img")), 0);
        assert_eq!(
            events(&mut s, Command::CreateService(svc)),
            [("service".into(), "create".into(), "web".into(), None)]
        );
        let mut t = Task {
            id: "t1".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: Some("n1".into()),
            spec: TaskTemplate::new("img"),
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Assigned, 0, ""),
            created_at: 0,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        };
        assert_eq!(events(&mut s, Command::CreateTasks(vec![t.clone()])).len(), 1);
        t.status = TaskStatus::new(TaskState::Running, 5, "");
        let up = Command::UpdateTaskStatus(vec![TaskStatusUpdate { task_id: "t1".into(), status: t.status.clone() }]);
        assert_eq!(
            events(&mut s, up.clone()),
            [("task".into(), "running".into(), "web.1".into(), Some("host-n1".into()))]
        );
        assert!(events(&mut s, up).is_empty(), "a report that changes nothing is no event");
        let gone = events(&mut s, Command::RemoveService("s1".into()));
        assert_eq!(
            gone,
            [
                ("task".into(), "remove".into(), "web.1".into(), Some("host-n1".into())),
                ("service".into(), "remove".into(), "web".into(), None)
            ]
        );
    }

    #[test]
    fn networks_created_and_removed_are_events() {
        let mut s = Store::default();
        let spec = common::network::NetworkSpec { name: "app".into(), ..Default::default() };
        let create = Command::CreateNetwork { id: "net1".into(), spec, at: 0 };
        assert_eq!(events(&mut s, create), [("network".into(), "create".into(), "app".into(), None)]);
        assert_eq!(
            events(&mut s, Command::RemoveNetwork("net1".into())),
            [("network".into(), "remove".into(), "app".into(), None)]
        );
    }

    #[test]
    fn liveness_and_history() {
        let mut s = Store::default();
        s.apply(Command::AddNode(node("n1"))).unwrap();
        s.apply(Command::AddNode(node("n2"))).unwrap();
        let before: BTreeSet<NodeId> = ["n1".into(), "n2".into()].into();
        let after: BTreeSet<NodeId> = ["n1".into()].into();
        let evs = liveness_events(&before, &after, &s, 9);
        assert_eq!(evs.len(), 1);
        assert_eq!((evs[0].action.as_str(), evs[0].name.as_str()), ("down", "host-n2"));
        let hub = EventHub::new();
        hub.publish(evs.clone());
        hub.publish(liveness_events(&after, &before, &s, 20));
        let (past, _rx) = hub.since(Some(10));
        assert_eq!(past.len(), 1);
        assert_eq!((past[0].seq, past[0].action.as_str()), (2, "up"));
        assert!(hub.since(None).0.is_empty());
    }

    #[test]
    fn disk_alarms_raised_and_cleared() {
        let mut s = Store::default();
        s.apply(Command::AddNode(node("n1"))).unwrap();
        s.apply(Command::AddNode(node("n2"))).unwrap();
        let none = BTreeMap::new();
        let full: BTreeMap<NodeId, String> = [("n2".into(), "no space left on device".to_string())].into();
        let raised = disk_alarm_events(&none, &full, &s, 9);
        let seen: Vec<_> =
            raised.iter().map(|e| (e.kind.as_str(), e.action.as_str(), e.name.as_str(), e.message.as_str())).collect();
        assert_eq!(seen, [("node", "disk_alarm", "host-n2", "no space left on device")]);
        let cleared = disk_alarm_events(&full, &none, &s, 10);
        let seen: Vec<_> = cleared.iter().map(|e| (e.action.as_str(), e.name.as_str(), e.message.as_str())).collect();
        assert_eq!(seen, [("disk_alarm_cleared", "host-n2", "")]);
        assert!(disk_alarm_events(&full, &full, &s, 11).is_empty());
    }
}
