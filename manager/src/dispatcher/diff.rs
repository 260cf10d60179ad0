//! What changed in a node's assignment set since it was last sent.

use std::collections::BTreeMap;

use common::task::Task;
use common::TaskId;

#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    pub upserts: Vec<Task>,
    pub removed: Vec<TaskId>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }
}

pub fn diff(sent: &BTreeMap<TaskId, Task>, now: &BTreeMap<TaskId, Task>) -> Diff {
    Diff {
        upserts: now.iter().filter(|(id, t)| sent.get(*id) != Some(*t)).map(|(_, t)| t.clone()).collect(),
        removed: sent.keys().filter(|id| !now.contains_key(*id)).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::task;
    use common::task::TaskState;

    fn map(ts: Vec<Task>) -> BTreeMap<TaskId, Task> {
        ts.into_iter().map(|t| (t.id.clone(), t)).collect()
    }

    #[test]
    fn only_changes_are_sent() {
        let sent = map(vec![task("a", TaskState::Assigned), task("b", TaskState::Running)]);
        let now = map(vec![task("a", TaskState::Running), task("c", TaskState::Assigned)]);
        let d = diff(&sent, &now);
        let ids: Vec<&str> = d.upserts.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(d.removed, vec![TaskId::from("b")]);
        assert!(diff(&now, &now).is_empty());
    }
}
