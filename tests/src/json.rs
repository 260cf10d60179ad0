//! Reading the CLI's JSON output.

use std::collections::BTreeMap;

use serde_json::Value;

/// `hostname → status` ("ready", "down", …) from `node ls --format json`.
pub fn node_statuses(nodes: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for n in nodes.as_array().into_iter().flatten() {
        if let (Some(h), Some(s)) = (n["hostname"].as_str(), n["status"].as_str()) {
            m.insert(h.to_string(), s.to_string());
        }
    }
    m
}

/// The task's observed state (`status.state`), e.g. "running".
pub fn task_state(task: &Value) -> &str {
    task.pointer("/status/state").and_then(Value::as_str).unwrap_or("")
}

/// Tasks from `service ps --format json` that are running and meant to be.
pub fn running_tasks(tasks: &Value) -> Vec<Value> {
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| task_state(t) == "running" && t["desired_state"].as_str() == Some("running"))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ls_json_gives_statuses_by_hostname() {
        let v: Value = serde_json::from_str(
            r#"[{"id":"a","hostname":"node1","role":"manager","availability":"active","status":"ready",
                 "manager_status":"Leader","is_self":true,"labels":{"status":"x"}},
                {"id":"b","hostname":"node2","role":"worker","availability":"active","status":"down",
                 "manager_status":"","is_self":false}]"#,
        )
        .unwrap();
        let st = node_statuses(&v);
        assert_eq!(st.get("node1").map(String::as_str), Some("ready"));
        assert_eq!(st.get("node2").map(String::as_str), Some("down"));
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn only_tasks_running_and_meant_to_be_count() {
        let v: Value = serde_json::from_str(
            r#"[{"slot":1,"desired_state":"running","status":{"state":"running"}},
                {"slot":2,"desired_state":"running","status":{"state":"starting"}},
                {"slot":1,"desired_state":"shutdown","status":{"state":"running"}}]"#,
        )
        .unwrap();
        let r = running_tasks(&v);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["slot"], 1);
    }
}
