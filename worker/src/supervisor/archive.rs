//! The logs of task containers this node removed, kept for a while
//! (`--log-retention`, default 15 minutes) so that `service logs` can still
//! read a task that was removed or replaced (Swarm loses them with the
//! container). Kept in the node's memory, bounded: at most
//! [`PER_TASK_BYTES`] of each task (its last lines) and [`TOTAL_BYTES`] in
//! all (the oldest removals go first); a node that restarts forgets them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::time::Millis;
use common::wire::LogLine;
use common::{ServiceId, TaskId};

pub const PER_TASK_BYTES: usize = 1 << 20;
pub const TOTAL_BYTES: usize = 64 << 20;

#[derive(Debug)]
struct Archived {
    service_id: ServiceId,
    lines: Vec<LogLine>,
    bytes: usize,
    /// When it was archived, and until when it is kept.
    at: Millis,
    until: Millis,
}

#[derive(Debug, Default)]
pub struct LogArchive {
    tasks: Mutex<BTreeMap<TaskId, Archived>>,
}

fn size(l: &LogLine) -> usize {
    l.line.len() + l.timestamp.len()
}

impl LogArchive {
    /// Keeps `lines` (oldest first) of a removed task until `now + retention_ms`.
    pub fn put(&self, task: TaskId, service_id: ServiceId, mut lines: Vec<LogLine>, now: Millis, retention_ms: u64) {
        let mut bytes: usize = lines.iter().map(size).sum();
        let mut drop = 0;
        while bytes > PER_TASK_BYTES && drop < lines.len() {
            bytes -= size(&lines[drop]);
            drop += 1;
        }
        lines.drain(..drop);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|_, a| a.until > now);
        tasks.insert(task, Archived { service_id, lines, bytes, at: now, until: now.saturating_add(retention_ms) });
        let mut total: usize = tasks.values().map(|a| a.bytes).sum();
        while total > TOTAL_BYTES {
            let Some(oldest) = tasks.iter().min_by_key(|(_, a)| a.at).map(|(id, _)| id.clone()) else { break };
            total -= tasks.remove(&oldest).map_or(0, |a| a.bytes);
        }
    }

    /// The kept lines of `service`'s removed tasks (the last `tail` of each).
    pub fn lines_of(&self, service: &ServiceId, tail: Option<u64>, now: Millis) -> Vec<LogLine> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|_, a| a.until > now);
        let mut out = Vec::new();
        for a in tasks.values().filter(|a| &a.service_id == service) {
            let skip = tail.map_or(0, |n| a.lines.len().saturating_sub(n as usize));
            out.extend(a.lines[skip..].iter().cloned());
        }
        out
    }

    /// Tasks whose logs are kept.
    pub fn len(&self) -> usize {
        self.tasks.lock().map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(task: &str, text: &str) -> LogLine {
        LogLine {
            task_id: task.into(),
            slot: Some(1),
            timestamp: "2026-01-01T00:00:00.000000000Z".into(),
            line: text.into(),
            stream: Default::default(),
        }
    }

    #[test]
    fn kept_for_the_retention_per_service_with_tail() {
        let a = LogArchive::default();
        a.put("t1".into(), "s".into(), vec![line("t1", "one"), line("t1", "two")], 1_000, 500);
        a.put("t2".into(), "other".into(), vec![line("t2", "x")], 1_000, 5_000);
        let text = |v: Vec<LogLine>| v.into_iter().map(|l| l.line).collect::<Vec<_>>();
        assert_eq!(text(a.lines_of(&"s".into(), None, 1_200)), ["one", "two"]);
        assert_eq!(text(a.lines_of(&"s".into(), Some(1), 1_200)), ["two"]);
        assert_eq!(text(a.lines_of(&"s".into(), None, 1_500)), Vec::<String>::new(), "expired");
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn bounded_per_task_and_in_all() {
        let a = LogArchive::default();
        let big = "x".repeat(PER_TASK_BYTES / 2);
        a.put("t1".into(), "s".into(), vec![line("t1", &big), line("t1", &big), line("t1", "last")], 0, 10_000);
        let kept = a.lines_of(&"s".into(), None, 1);
        assert_eq!(kept.last().map(|l| l.line.as_str()), Some("last"), "the newest lines stay");
        assert!(kept.iter().map(size).sum::<usize>() <= PER_TASK_BYTES);
        for i in 0..(TOTAL_BYTES / PER_TASK_BYTES + 4) {
            let id = format!("b{i}");
            a.put(
                id.as_str().into(),
                "s".into(),
                vec![line(&id, &"y".repeat(PER_TASK_BYTES - 64))],
                i as u64 + 1,
                10_000,
            );
        }
        let total: usize = a.lines_of(&"s".into(), None, 100).iter().map(size).sum();
        assert!(total <= TOTAL_BYTES, "{total}");
        assert!(a.lines_of(&"s".into(), None, 100).iter().all(|l| l.task_id.as_str() != "t1"), "the oldest went first");
    }
}
