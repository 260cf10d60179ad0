//! A service's logs, merged from the nodes that hold its tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use actix_web::{web, HttpResponse};
use common::api::LogEntry;
use common::task::TaskState;
use common::wire::{Frame, Hello, LogRequest};
use common::{NodeId, TaskId};
use futures::StreamExt;
use tokio::sync::mpsc;
use worker::node::net;

use super::{find_service, manager, ApiState, Result};
use crate::store::Service;
use crate::Manager;

#[derive(serde::Deserialize)]
pub(super) struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<u64>,
}

struct LogTarget {
    addr: SocketAddr,
    node: String,
    node_id: NodeId,
    tasks: Vec<TaskId>,
}

/// Merges the logs of a service's tasks from every node holding them, as
/// NDJSON of `LogEntry`. Without `follow`, lines are sorted by time.
pub(super) async fn service_logs(
    state: web::Data<ApiState>,
    key: web::Path<String>,
    q: web::Query<LogsQuery>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let svc = find_service(m, &key)?;
    let mut rx = fetch(m, &svc, None, q.follow, q.tail);
    let line = |e: &LogEntry| {
        let mut s = serde_json::to_vec(e).unwrap_or_default();
        s.push(b'\n');
        web::Bytes::from(s)
    };
    if q.follow {
        let stream =
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |e| Ok::<_, actix_web::Error>(line(&e)));
        return Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(stream));
    }
    let all = collect_sorted(rx).await;
    let body: Vec<u8> = all.iter().flat_map(|e| line(e).to_vec()).collect();
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(body))
}

/// Every entry until the nodes are done, oldest first.
pub(super) async fn collect_sorted(mut rx: mpsc::Receiver<LogEntry>) -> Vec<LogEntry> {
    let mut all = Vec::new();
    while let Some(e) = rx.recv().await {
        all.push(e);
    }
    all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    all
}

/// Starts fetching the logs of `svc`'s tasks (only `task`, if given) from
/// the nodes that hold them: what both APIs' logs call. Entries arrive on
/// the receiver, which ends when every node is done (with `follow`, when
/// the nodes go away or the reader does).
pub(super) fn fetch(
    m: &Manager,
    svc: &Service,
    task: Option<&TaskId>,
    follow: bool,
    tail: Option<u64>,
) -> mpsc::Receiver<LogEntry> {
    let (targets, slots) = {
        let store = m.store.read();
        let mut by_node: BTreeMap<NodeId, Vec<TaskId>> = BTreeMap::new();
        let mut slots: BTreeMap<TaskId, (u64, String)> = BTreeMap::new();
        for t in store.tasks_of(&svc.id).filter(|t| task.is_none_or(|id| id == &t.id)) {
            slots.insert(t.id.clone(), (t.slot, t.name()));
            if let (Some(n), true) = (&t.node_id, t.status.state > TaskState::Assigned) {
                by_node.entry(n.clone()).or_default().push(t.id.clone());
            }
        }
        // The whole service: every node, for the containers of tasks
        // removed or replaced that nodes keep for their logs.
        if task.is_none() {
            for n in store.nodes.keys() {
                by_node.entry(n.clone()).or_default();
            }
        }
        let targets: Vec<LogTarget> = by_node
            .into_iter()
            .filter_map(|(n, tasks)| {
                store.nodes.get(&n).map(|node| LogTarget {
                    addr: node.addr,
                    node: node.hostname.clone(),
                    node_id: n.clone(),
                    tasks,
                })
            })
            .collect();
        (targets, slots)
    };
    let (tx, rx) = mpsc::channel::<LogEntry>(1024);
    let name = svc.spec.name.clone();
    for target in targets {
        let tx = tx.clone();
        let name = name.clone();
        let slots = slots.clone();
        let req =
            LogRequest { tasks: target.tasks.clone(), follow, tail, service: task.is_none().then(|| svc.id.clone()) };
        let tls = m.tls.clone();
        tokio::spawn(async move {
            let (mut conn, _) = match net::dial(&tls, target.addr, Hello::Logs(req)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(node = %target.node, error = %e, "cannot fetch logs from node");
                    return;
                }
            };
            while let Ok(frame) = net::recv(&mut conn).await {
                match frame {
                    Frame::LogLine(l) => {
                        // A task the store no longer has: named from its container.
                        let (slot, task_name) = slots.get(&l.task_id).cloned().unwrap_or_else(|| {
                            let slot = l.slot.unwrap_or(0);
                            (slot, format!("{name}.{slot}"))
                        });
                        let entry = LogEntry {
                            slot,
                            task_name,
                            task_id: l.task_id,
                            service_name: name.clone(),
                            node: target.node.clone(),
                            node_id: Some(target.node_id.clone()),
                            timestamp: l.timestamp,
                            line: l.line,
                            stream: l.stream,
                        };
                        if tx.send(entry).await.is_err() {
                            return;
                        }
                    }
                    Frame::LogEnd { error } => {
                        if let Some(e) = error {
                            tracing::warn!(node = %target.node, error = %e, "log stream ended with an error");
                        }
                        return;
                    }
                    _ => {}
                }
            }
        });
    }
    rx
}
