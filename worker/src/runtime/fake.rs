//! TEST DOUBLE. An in-memory [`Runtime`] for actor and multi-node tests:
//! containers are records that a test moves along by hand (`exit`, `kill`),
//! images are a set, and failures are injected per call. No process runs and
//! nothing here is used by a real node; besides tests, only `shoal sim` (the
//! scale simulation, which runs no containers by design) uses it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use common::container::{Health, RegistryAuth};
use common::ids::{NodeId, ServiceId, TaskId};
use common::mesh::{HostPort, Protocol, PublishMode};
use common::task::Task;
use common::time::now_ms;
use common::wire::LogLine;

use super::{
    container_name, task_labels, ContainerInfo, ContainerState, EventStream, LogStream, Runtime, RuntimeError,
    LABEL_LOG_RETENTION, LABEL_NODE, LABEL_SERVICE_ID, LABEL_SLOT, LABEL_STOP_GRACE, LABEL_TASK,
};

/// One call the supervisor made, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    EnsureImage(String),
    CreateAndStart(TaskId),
    List,
    Stop(String, u64),
    Remove(String),
}

#[derive(Clone, Debug)]
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub image: String,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub logs: Vec<LogLine>,
    /// Host ports, as the engine would report them once running.
    pub ports: Vec<HostPort>,
    /// Starts as `starting` when the task's spec has a (not disabled)
    /// health check; a test moves it on with [`FakeRuntime::set_health`].
    pub health: Option<Health>,
}

#[derive(Default)]
struct State {
    /// Present locally.
    images: BTreeSet<String>,
    /// Not present, but a pull would succeed.
    pullable: BTreeSet<String>,
    containers: BTreeMap<String, FakeContainer>,
    calls: Vec<Call>,
    next_id: u64,
    fail_create: Option<RuntimeError>,
    fail_start: Option<RuntimeError>,
    fail_list: Option<RuntimeError>,
    /// Host ports held outside the fake engine (`occupy_port`).
    occupied: BTreeSet<(Protocol, u16)>,
    /// The next ephemeral host port.
    next_port: u16,
}

pub struct FakeRuntime {
    state: Mutex<State>,
    events: broadcast::Sender<String>,
    /// While false, `ensure_image` waits: lets a test hold a task in PREPARING.
    pulls_open: watch::Sender<bool>,
    /// How long `create_and_start` takes (a container's start time).
    start_delay: std::time::Duration,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new()
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        FakeRuntime {
            state: Mutex::new(State::default()),
            events: broadcast::channel(1024).0,
            pulls_open: watch::channel(true).0,
            start_delay: std::time::Duration::ZERO,
        }
    }

    /// Every `create_and_start` takes this long before the container runs.
    pub fn with_start_delay(mut self, delay: std::time::Duration) -> Self {
        self.start_delay = delay;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, c: &FakeContainer) {
        if let Some(node) = c.labels.get(LABEL_NODE) {
            let _ = self.events.send(node.clone());
        }
    }

    pub fn with_image(self, image: &str) -> Self {
        self.lock().images.insert(image.to_string());
        self
    }

    pub fn add_pullable(&self, image: &str) {
        self.lock().pullable.insert(image.to_string());
    }

    pub fn fail_create(&self, err: Option<RuntimeError>) {
        self.lock().fail_create = err;
    }

    /// The container is created, then starting it fails (it stays created).
    pub fn fail_start(&self, err: Option<RuntimeError>) {
        self.lock().fail_start = err;
    }

    pub fn fail_list(&self, err: Option<RuntimeError>) {
        self.lock().fail_list = err;
    }

    /// A process outside the engine holds this host port: a host-mode task
    /// publishing it fails to start.
    pub fn occupy_port(&self, protocol: Protocol, port: u16) {
        self.lock().occupied.insert((protocol, port));
    }

    pub fn hold_pulls(&self, hold: bool) {
        self.pulls_open.send_replace(!hold);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.values().cloned().collect()
    }

    pub fn container_of(&self, task: &TaskId) -> Option<FakeContainer> {
        self.lock()
            .containers
            .values()
            .find(|c| c.labels.get(LABEL_TASK).map(String::as_str) == Some(task.as_str()))
            .cloned()
    }

    /// Puts a container in place as if an earlier worker had started it.
    pub fn insert_running(&self, node: &NodeId, task: &Task) -> String {
        let mut st = self.lock();
        st.next_id += 1;
        let id = format!("fake{:060}", st.next_id);
        let ports = match st.bind_ports(task) {
            Ok(p) => p,
            Err(e) => panic!("insert_running: {e}"),
        };
        let c = FakeContainer {
            id: id.clone(),
            name: container_name(task),
            labels: task_labels(node, task),
            image: task.spec.image.clone(),
            state: ContainerState::Running,
            exit_code: None,
            started_at: Some(now_ms()),
            finished_at: None,
            logs: Vec::new(),
            ports,
            health: fake_health(task),
        };
        st.containers.insert(id.clone(), c.clone());
        drop(st);
        self.notify(&c);
        id
    }

    /// Docker's health verdict on a running container changes.
    pub fn set_health(&self, container_id: &str, health: Health) {
        let mut st = self.lock();
        let Some(c) = st.containers.get_mut(container_id) else {
            return;
        };
        c.health = Some(health);
        let c = c.clone();
        drop(st);
        self.notify(&c);
    }

    /// The container's process ends with `code`.
    pub fn exit(&self, container_id: &str, code: i64) {
        let mut st = self.lock();
        let Some(c) = st.containers.get_mut(container_id) else {
            return;
        };
        c.state = ContainerState::Exited;
        c.exit_code = Some(code);
        c.finished_at = Some(now_ms());
        let c = c.clone();
        drop(st);
        self.notify(&c);
    }

    /// Removed behind the supervisor's back (`docker rm -f`).
    pub fn vanish(&self, container_id: &str) {
        let c = self.lock().containers.remove(container_id);
        if let Some(c) = c {
            self.notify(&c);
        }
    }

    pub fn push_log(&self, container_id: &str, timestamp: &str, line: &str) {
        let mut st = self.lock();
        if let Some(c) = st.containers.get_mut(container_id) {
            let task_id = TaskId::from(c.labels.get(LABEL_TASK).cloned().unwrap_or_default());
            c.logs.push(LogLine {
                task_id,
                slot: None,
                timestamp: timestamp.into(),
                line: line.into(),
                stream: Default::default(),
            });
        }
    }
}

impl State {
    /// Host ports for a new container, as Docker would give them: ephemeral
    /// from 32768 for ingress ports, the published number for host mode
    /// (taken by a live container or `occupy_port`: `PortInUse`).
    fn bind_ports(&mut self, task: &Task) -> Result<Vec<HostPort>, RuntimeError> {
        let mut out = Vec::new();
        for pc in &task.spec.ports {
            let host_port = match (pc.mode, pc.published) {
                (PublishMode::Host, Some(p)) => {
                    let in_use = self.occupied.contains(&(pc.protocol, p))
                        || self.containers.values().any(|c| {
                            c.state.is_live() && c.ports.iter().any(|h| h.protocol == pc.protocol && h.host_port == p)
                        });
                    if in_use {
                        return Err(RuntimeError::PortInUse(format!(
                            "host port {p}/{} is already in use on this node",
                            pc.protocol
                        )));
                    }
                    p
                }
                _ => {
                    self.next_port = self.next_port.max(32767) + 1;
                    self.next_port
                }
            };
            out.push(HostPort { protocol: pc.protocol, target: pc.target, host_port });
        }
        out.sort();
        Ok(out)
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn ensure_image(&self, image: &str, _auth: Option<&RegistryAuth>) -> Result<(), RuntimeError> {
        self.lock().calls.push(Call::EnsureImage(image.to_string()));
        let mut open = self.pulls_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        let mut st = self.lock();
        if st.images.contains(image) {
            return Ok(());
        }
        if st.pullable.contains(image) {
            st.images.insert(image.to_string());
            return Ok(());
        }
        Err(RuntimeError::Image {
            image: image.to_string(),
            message: format!("pull access denied for {image}, repository does not exist"),
        })
    }

    async fn create_and_start(&self, node: &NodeId, task: &Task) -> Result<String, RuntimeError> {
        if !self.start_delay.is_zero() {
            tokio::time::sleep(self.start_delay).await;
        }
        let mut st = self.lock();
        st.calls.push(Call::CreateAndStart(task.id.clone()));
        if let Some(e) = st.fail_create.clone() {
            return Err(e);
        }
        let name = container_name(task);
        if st.containers.values().any(|c| c.name == name) {
            return Err(RuntimeError::Conflict(format!("the container name \"/{name}\" is already in use")));
        }
        if !st.images.contains(&task.spec.image) {
            return Err(RuntimeError::NotFound(format!("No such image: {}", task.spec.image)));
        }
        let ports = st.bind_ports(task)?;
        st.next_id += 1;
        let id = format!("fake{:060}", st.next_id);
        let failed_start = st.fail_start.clone();
        let c = FakeContainer {
            id: id.clone(),
            name,
            labels: task_labels(node, task),
            image: task.spec.image.clone(),
            state: if failed_start.is_some() { ContainerState::Created } else { ContainerState::Running },
            exit_code: None,
            started_at: failed_start.is_none().then(now_ms),
            finished_at: None,
            logs: Vec::new(),
            ports: if failed_start.is_some() { Vec::new() } else { ports },
            health: fake_health(task),
        };
        st.containers.insert(id.clone(), c.clone());
        drop(st);
        self.notify(&c);
        match failed_start {
            Some(e) => Err(e),
            None => Ok(id),
        }
    }

    async fn list(&self, node: &NodeId) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::List);
        if let Some(e) = st.fail_list.clone() {
            return Err(e);
        }
        Ok(st
            .containers
            .values()
            .filter(|c| c.labels.get(LABEL_NODE).map(String::as_str) == Some(node.as_str()))
            .filter_map(|c| {
                Some(ContainerInfo {
                    container_id: c.id.clone(),
                    task_id: TaskId::from(c.labels.get(LABEL_TASK)?.as_str()),
                    state: c.state,
                    exit_code: c.exit_code,
                    started_at: c.started_at,
                    finished_at: c.finished_at,
                    stop_grace_ms: c.labels.get(LABEL_STOP_GRACE).and_then(|g| g.parse().ok()),
                    service_id: c.labels.get(LABEL_SERVICE_ID).map(|s| ServiceId::from(s.as_str())),
                    slot: c.labels.get(LABEL_SLOT).and_then(|g| g.parse().ok()),
                    log_retention_ms: c.labels.get(LABEL_LOG_RETENTION).and_then(|g| g.parse().ok()),
                    ports: if c.state.is_live() { c.ports.clone() } else { Vec::new() },
                    address: None,
                    health: c.health.filter(|_| c.state.is_live()),
                    health_output: None,
                })
            })
            .collect())
    }

    async fn stop(&self, container_id: &str, grace_ms: u64) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Stop(container_id.to_string(), grace_ms));
        let Some(c) = st.containers.get_mut(container_id) else {
            return Err(RuntimeError::NotFound(format!("No such container: {container_id}")));
        };
        if c.state.is_live() {
            // Like `sleep` as PID 1: ignores SIGTERM, so the grace runs out.
            c.state = ContainerState::Exited;
            c.exit_code = Some(137);
            c.finished_at = Some(now_ms());
        }
        let c = c.clone();
        drop(st);
        self.notify(&c);
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Remove(container_id.to_string()));
        match st.containers.remove(container_id) {
            Some(c) => {
                drop(st);
                self.notify(&c);
                Ok(())
            }
            None => Err(RuntimeError::NotFound(format!("No such container: {container_id}"))),
        }
    }

    fn logs(&self, _task_id: &TaskId, container_id: &str, _follow: bool, tail: Option<u64>) -> LogStream {
        let lines = match self.lock().containers.get(container_id) {
            Some(c) => c.logs.clone(),
            None => {
                let e = RuntimeError::NotFound(format!("No such container: {container_id}"));
                return futures::stream::once(async move { Err(e) }).boxed();
            }
        };
        let skip = match tail {
            Some(n) => lines.len().saturating_sub(n as usize),
            None => 0,
        };
        futures::stream::iter(lines.into_iter().skip(skip).map(Ok)).boxed()
    }

    fn events(&self, node: &NodeId) -> EventStream {
        let node = node.to_string();
        let rx = self.events.subscribe();
        futures::stream::unfold(rx, move |mut rx| {
            let node = node.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(n) if n == node => return Some((Ok(()), rx)),
                        Ok(_) => continue,
                        // Missed some: one hint covers them all.
                        Err(broadcast::error::RecvError::Lagged(_)) => return Some((Ok(()), rx)),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed()
    }
}

/// A container of this task has a health check in the fake engine when its
/// spec asks for one (the fake's images have no HEALTHCHECK of their own).
fn fake_health(task: &Task) -> Option<Health> {
    task.spec
        .container
        .healthcheck
        .as_ref()
        .filter(|h| !h.is_disabled() && !h.test.is_empty())
        .map(|_| Health::Starting)
}
