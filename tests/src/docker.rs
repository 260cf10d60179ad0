//! Docker through its CLI: containers by label, kill, remove.

use std::collections::BTreeMap;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::process::{describe, run_with_timeout, Output};

/// Runs the `docker` CLI; a Docker that does not answer in 60 s counts as a
/// failed command.
pub fn docker(args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    // The machine's engine, in the clear: a test that points the shoal
    // CLI at a TLS API through these variables must not send this there.
    cmd.args(args).env_remove("DOCKER_TLS_VERIFY").env_remove("DOCKER_CERT_PATH").env_remove("DOCKER_TLS");
    match run_with_timeout(&mut cmd, Duration::from_secs(60)) {
        Ok(out) => out,
        Err(e) => Output { cmd: describe(&cmd), status: failed_status(), stdout: String::new(), stderr: e },
    }
}

pub(crate) fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(1 << 8)
}

/// One container as `docker inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRow {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// `created`, `running`, `exited`, …
    pub state: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

impl ContainerRow {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// All containers (running or not) with label `key=value`.
pub fn containers_with_label(key: &str, value: &str) -> Vec<ContainerRow> {
    let filter = format!("label={key}={value}");
    let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]).ok();
    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["inspect"];
    args.extend(&ids);
    // A container removed meanwhile makes inspect fail but still print the
    // others: take what it printed.
    let out = docker(&args);
    parse_inspect(&out.stdout).unwrap_or_else(|e| panic!("cannot read {out}: {e}"))
}

/// Reads `docker inspect` output (a JSON array of containers).
pub fn parse_inspect(json: &str) -> Result<Vec<ContainerRow>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let arr = v.as_array().ok_or("not a JSON array")?;
    let s = |c: &Value, ptr: &str| c.pointer(ptr).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(arr
        .iter()
        .map(|c| ContainerRow {
            id: s(c, "/Id"),
            name: s(c, "/Name").trim_start_matches('/').to_string(),
            state: s(c, "/State/Status"),
            image: s(c, "/Config/Image"),
            labels: c
                .pointer("/Config/Labels")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                .unwrap_or_default(),
        })
        .collect())
}

/// `docker kill ID`; panics if Docker refuses.
#[track_caller]
pub fn docker_kill(id: &str) {
    docker(&["kill", id]).ok();
}

/// `docker rm -f -v` of these containers; missing ones are not an error.
pub fn docker_rm_force(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut args = vec!["rm", "-f", "-v"];
    args.extend(ids.iter().map(String::as_str));
    let _ = docker(&args);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_output_becomes_rows_with_labels() {
        let json = r#"[{"Id":"abc123","Name":"/web.1.xyz","State":{"Status":"running","Running":true},
            "Config":{"Image":"shoal/busybox:latest","Labels":{"shoal.node.id":"n1","shoal.task.slot":"1",
            "org.shoal-test.busybox-sha256":"ff"}}},
            {"Id":"def","Name":"/x","State":{"Status":"exited"},"Config":{"Image":"i","Labels":null}}]"#;
        let rows = parse_inspect(json).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "abc123");
        assert_eq!(rows[0].name, "web.1.xyz");
        assert_eq!(rows[0].state, "running");
        assert_eq!(rows[0].image, "shoal/busybox:latest");
        assert_eq!(rows[0].label("shoal.node.id"), Some("n1"));
        assert_eq!(rows[0].label("shoal.task.slot"), Some("1"));
        assert_eq!(rows[1].state, "exited");
        assert!(rows[1].labels.is_empty());
        assert_eq!(parse_inspect("").unwrap(), vec![]);
        assert!(parse_inspect("{").is_err());
    }
}
