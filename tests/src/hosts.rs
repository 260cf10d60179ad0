//! Real hosts on one machine: a cluster made by `deploy/hosts.sh`, every
//! node in its own network namespace with its own Docker engine.
//!
//! [`Hosts::up`] claims a free harness id (a lock file, like
//! [`crate::claim_subnet`]), so that tests run several harnesses at once:
//! id `K` is the subnet `10.231.K.0/24`, namespaces `shoalK-hostI`, bridge
//! `shoalbrK`, state in `/run/shoal-hosts-K`. The CLI and `docker` run
//! inside a host's namespace against its own node and engine. Dropping the
//! harness runs `deploy/hosts.sh down`, also while a test panics (after
//! printing the tail of every host's shoal log), so nothing is left behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::docker::{failed_status, parse_inspect, ContainerRow};
use crate::env::{is_ci, shoal_bin, workspace_root, CLI_TIMEOUT};
use crate::json::{node_statuses, running_tasks, task_state};
use crate::process::{describe, run_with_timeout, Output};
use crate::wait::wait_for;

/// Harness ids handed out to tests (0 is left to a person's `hosts.sh up`).
const IDS: std::ops::RangeInclusive<u8> = 1..=200;
/// What `hosts.sh up` may take (engines start in parallel; 60 s is its own
/// limit per step).
const UP_TIMEOUT: Duration = Duration::from_secs(180);

/// The mesh data path the hosts' nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mesh {
    Kernel,
    Userspace,
}

impl Mesh {
    fn flag(self) -> &'static str {
        match self {
            Mesh::Kernel => "kernel",
            Mesh::Userspace => "userspace",
        }
    }
}

/// Whether this machine can run the host harness: root, `ip`, `nsenter`,
/// `nft`, `dockerd`. CI fails the test when it cannot; elsewhere this prints
/// a loud skip notice and returns false.
pub fn require_hosts() -> bool {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        // The effective uid is the second field of /proc's `Uid:` line.
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
        if euid != Some("0") {
            return Err("not root (namespaces, a bridge and a dockerd per host need it)".into());
        }
        for tool in ["ip", "nsenter", "nft", "iptables", "dockerd", "docker"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("{tool} not found (deploy/install-deps.sh)"));
            }
        }
        Ok(())
    });
    if let Err(why) = state {
        if is_ci() {
            panic!("the host harness (deploy/hosts.sh) is required when CI=true: {why}");
        }
        eprintln!("!!! SKIPPED: the host harness cannot run here ({why}); set CI=true to make this a failure");
        return false;
    }
    crate::env::ensure_image();
    true
}

/// A cluster on real (namespaced) hosts. See the module docs.
pub struct Hosts {
    id: u8,
    n: usize,
    bin: PathBuf,
    script: PathBuf,
    _lock: File,
}

impl Hosts {
    /// `hosts.sh up N --managers M --mesh …`: every node Ready on return.
    pub fn up(n: usize, managers: usize, mesh: Mesh) -> Hosts {
        let (id, lock) = claim_id();
        let h = Hosts { id, n, bin: shoal_bin(), script: workspace_root().join("deploy/hosts.sh"), _lock: lock };
        // A run killed before its Drop leaves its hosts: ours now, by the lock.
        h.script(&["down"], Duration::from_secs(120));
        let (n_s, m_s) = (n.to_string(), managers.to_string());
        let out = h.script(&["up", &n_s, "--managers", &m_s, "--mesh", mesh.flag()], UP_TIMEOUT);
        if !out.success() {
            panic!("deploy/hosts.sh up failed:\n{out}");
        }
        eprintln!("{}", out.stdout.trim_end());
        h
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Host i's address on the bridge, `10.231.K.(10+i)`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.id, u8::try_from(10 + i).expect("at most 200 hosts"))
    }

    fn state_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/shoal-hosts-{}", self.id))
    }

    fn netns(&self, i: usize) -> String {
        format!("/var/run/netns/shoal{}-host{i}", self.id)
    }

    fn sock(&self, i: usize) -> String {
        format!("unix://{}/host{i}/docker.sock", self.state_dir().display())
    }

    /// Runs `deploy/hosts.sh ARGS…` for this harness.
    pub fn script(&self, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = Command::new(&self.script);
        cmd.args(args).env("SHOAL_HOSTS_ID", self.id.to_string()).env("SHOAL_BIN", &self.bin);
        run_with_timeout(&mut cmd, timeout).unwrap_or_else(|e| Output {
            cmd: describe(&cmd),
            status: failed_status(),
            stdout: String::new(),
            stderr: e,
        })
    }

    /// `hosts.sh ARGS…` that must succeed.
    #[track_caller]
    pub fn script_ok(&self, args: &[&str]) -> Output {
        self.script(args, Duration::from_secs(120)).ok()
    }

    /// Runs a command inside host i's namespace (with its `DOCKER_HOST`).
    pub fn exec(&self, i: usize, program: &Path, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns(i)))
            .arg("env")
            .arg(format!("DOCKER_HOST={}", self.sock(i)))
            .arg(program)
            .args(args)
            .env_remove("SHOAL_HOST");
        run_with_timeout(&mut cmd, timeout).unwrap_or_else(|e| Output {
            cmd: describe(&cmd),
            status: failed_status(),
            stdout: String::new(),
            stderr: e,
        })
    }

    /// Starts a command inside host i's namespace and returns at once
    /// (a capture, say); the caller ends it, by its pid.
    pub fn spawn(&self, i: usize, program: &str, args: &[&str]) -> std::io::Result<std::process::Child> {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns(i)))
            .arg(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
    }

    /// `shoal -H 127.0.0.1:4243 ARGS…` inside host i: its own node.
    pub fn shoal(&self, i: usize, args: &[&str]) -> Output {
        self.shoal_timeout(i, CLI_TIMEOUT, args)
    }

    pub fn shoal_timeout(&self, i: usize, timeout: Duration, args: &[&str]) -> Output {
        let mut all = vec!["-H", "127.0.0.1:4243"];
        all.extend_from_slice(args);
        self.exec(i, &self.bin, &all, timeout)
    }

    #[track_caller]
    pub fn shoal_ok(&self, i: usize, args: &[&str]) -> String {
        self.shoal(i, args).ok().stdout
    }

    /// `docker ARGS…` against host i's own engine.
    pub fn docker(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(self.sock(i)).args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| Output {
            cmd: describe(&cmd),
            status: failed_status(),
            stdout: String::new(),
            stderr: e,
        })
    }

    /// Containers of service `svc` in host i's engine (running or not).
    pub fn containers(&self, i: usize, svc: &str) -> Vec<ContainerRow> {
        let filter = format!("label=shoal.service.name={svc}");
        let out = self.docker(i, &["ps", "-aq", "--no-trunc", "--filter", &filter]);
        let ids: Vec<&str> = out.stdout.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["inspect"];
        args.extend(&ids);
        parse_inspect(&self.docker(i, &args).stdout).unwrap_or_default()
    }

    /// Running containers of `svc` on every host: `host → rows`.
    pub fn running(&self, svc: &str) -> BTreeMap<usize, Vec<ContainerRow>> {
        (1..=self.n)
            .map(|i| (i, self.containers(i, svc).into_iter().filter(|c| c.state == "running").collect()))
            .collect()
    }

    /// Running containers of `svc` per slot, over every host's engine.
    pub fn running_per_slot(&self, svc: &str) -> BTreeMap<String, usize> {
        let mut per = BTreeMap::new();
        for c in self.running(svc).into_values().flatten() {
            *per.entry(c.label("shoal.task.slot").unwrap_or("?").to_string()).or_insert(0) += 1;
        }
        per
    }

    /// `node ls --format json` from host `via`: `hostname → status`.
    pub fn node_statuses(&self, via: usize) -> Result<BTreeMap<String, String>, String> {
        let out = self.shoal_timeout(via, Duration::from_secs(10), &["node", "ls", "--format", "json"]);
        let v: Value = serde_json::from_str(&out.stdout).map_err(|_| out.to_string())?;
        Ok(node_statuses(&v))
    }

    /// The leader's host number as host `via` sees it.
    pub fn leader_seen_from(&self, via: usize) -> Result<usize, String> {
        let out = self.shoal_timeout(via, Duration::from_secs(10), &["node", "ls", "--format", "json"]);
        let v: Value = serde_json::from_str(&out.stdout).map_err(|_| format!("host{via}: {}", out.stderr.trim()))?;
        v.as_array()
            .into_iter()
            .flatten()
            .find(|n| n["manager_status"] == "Leader")
            .and_then(|n| n["hostname"].as_str()?.strip_prefix("host")?.parse().ok())
            .ok_or_else(|| "no leader yet".to_string())
    }

    /// Waits until host `via` lists each of `hosts` with `status`.
    #[track_caller]
    pub fn wait_status(&self, via: usize, hosts: &[usize], status: &str, deadline: Duration) {
        wait_for(deadline, &format!("hosts {hosts:?} {status} as host{via} sees them"), || {
            let st = self.node_statuses(via)?;
            if hosts.iter().all(|i| st.get(&format!("host{i}")).map(String::as_str) == Some(status)) {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        })
    }

    /// Waits until `service ps` (through host `via`) shows exactly `n`
    /// running tasks of `svc`, every one on a host `placed` accepts; returns
    /// them.
    #[track_caller]
    pub fn wait_running_where(
        &self,
        via: usize,
        svc: &str,
        n: usize,
        deadline: Duration,
        placed: impl Fn(usize) -> bool,
    ) -> Vec<Value> {
        wait_for(deadline, &format!("{n} running tasks of {svc}"), || {
            let out = self.shoal_timeout(via, Duration::from_secs(10), &["service", "ps", svc, "--format", "json"]);
            let tasks: Value = serde_json::from_str(&out.stdout).map_err(|_| out.to_string())?;
            let running = running_tasks(&tasks);
            let ok = running.len() == n && running.iter().all(|t| task_host(t).is_some_and(&placed));
            if ok {
                Ok(running)
            } else {
                let states: Vec<String> = tasks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| format!("{}:{}@{}", t["slot"], task_state(t), t["node_hostname"].as_str().unwrap_or("-")))
                    .collect();
                Err(format!("{} running; tasks {}", running.len(), states.join(" ")))
            }
        })
    }

    #[track_caller]
    pub fn wait_running(&self, via: usize, svc: &str, n: usize, deadline: Duration) -> Vec<Value> {
        self.wait_running_where(via, svc, n, deadline, |_| true)
    }

    /// Prints the tail of every host's shoal log.
    pub fn print_logs(&self) {
        let lines: usize = std::env::var("SHOAL_TEST_LOG_LINES").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
        for i in 1..=self.n {
            let p = self.state_dir().join(format!("host{i}/shoal.log"));
            let text = fs::read_to_string(&p).unwrap_or_else(|e| format!("(no log: {e})\n"));
            let all: Vec<&str> = text.lines().collect();
            let from = if lines == 0 { 0 } else { all.len().saturating_sub(lines) };
            eprintln!("======== host{i} shoal log ({}, last {} lines) ========", p.display(), all.len() - from);
            for l in &all[from..] {
                eprintln!("{l}");
            }
        }
        eprintln!("======== end of host logs ========");
    }
}

/// The host number in a task's `node_hostname` (`host3` → 3).
pub fn task_host(task: &Value) -> Option<usize> {
    task["node_hostname"].as_str()?.strip_prefix("host")?.parse().ok()
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Nothing here may panic: this often runs while a test unwinds.
        if thread::panicking() {
            self.print_logs();
        }
        let out = self.script(&["down"], Duration::from_secs(180));
        if !out.success() {
            eprintln!("harness: deploy/hosts.sh down failed:\n{out}");
        }
    }
}

/// A harness id no other test process holds, with no bridge of another
/// user on it.
fn claim_id() -> (u8, File) {
    let dir = std::env::temp_dir().join("shoal-test-hosts");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for id in IDS {
        let p = dir.join(format!("{id}.lock"));
        let f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        if f.try_lock().is_ok() {
            return (id, f);
        }
    }
    panic!("no free host harness id in {IDS:?}");
}
