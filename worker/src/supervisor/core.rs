//! The task supervisor's reconcile core: no I/O, no clock (`now` comes in).
//!
//! The actor feeds it [`Event`]s — the assignment set from the dispatcher,
//! container lists from the runtime, outcomes of the operations it asked
//! for — and carries out the [`Action`]s it returns.
//!
//! Rules, per task, against the last trusted container list:
//! - desired RUNNING, no container: ACCEPTED, PREPARING → ensure the image →
//!   STARTING → create and start → RUNNING once listed running, with the host
//!   ports the container was given. An image that cannot be had is REJECTED
//!   with Docker's message; a create/start error (a host port in use, say)
//!   is FAILED.
//! - a task whose container has a health check (its own or its image's)
//!   stays STARTING until Docker calls it healthy, then RUNNING; once
//!   unhealthy (starting or running) it is FAILED `dockerexec: unhealthy
//!   container` and its container stopped, as Swarm does.
//! - a container that exited: COMPLETE (0) or FAILED `task: non-zero exit (N)`.
//!   Never restarted: the orchestrator makes a new task.
//! - desired SHUTDOWN (any terminal state): stop a live container (grace, then
//!   kill), then SHUTDOWN.
//! - a container of this node whose task is not assigned: stopped and removed,
//!   but only once a full assignment set has arrived — a restarting worker
//!   must not kill what it does not know about yet.
//! - a running container of an assigned task is adopted, not recreated.
//! - reports only move forward from the later of the manager's copy of the
//!   state and what this node last reported.
//!
//! An event is reconciled for the tasks it can have changed: an outcome or
//! an assignment diff for the tasks it names, a full set, a container list
//! or a tick for all (`Dirty`); so a node with thousands of tasks spends
//! microseconds per outcome (`worker/examples/bench_supervisor.rs`).
//!
//! A container list can be older than an operation that finished while it
//! was in flight. Each list carries a ticket (the operation count when it was
//! asked for), and a task's containers are judged only by lists asked for
//! after its last container operation finished.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::backoff::Backoff;
use common::container::{unhealthy_error, Health};
use common::ids::{ServiceId, TaskId};
use common::task::{Task, TaskState, TaskStatus, TaskStatusUpdate};
use common::time::Millis;

use crate::runtime::{ContainerInfo, ContainerState, DEFAULT_STOP_GRACE_MS};

/// Retryable failures of ensure-image or create/start before the task is
/// given up on (REJECTED / FAILED).
pub const MAX_ATTEMPTS: u32 = 5;
const BACKOFF_BASE_MS: Millis = 500;
const BACKOFF_MAX_MS: Millis = 30_000;
/// Before retry `n` (from 1) of a failed prepare or start: 1 s, 2 s, 4 s, … 30 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(BACKOFF_BASE_MS), Duration::from_millis(BACKOFF_MAX_MS));

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// From the dispatcher: `full` replaces the assignment set; otherwise
    /// `tasks` are upserted and `removed` dropped.
    Assigned { full: bool, tasks: Vec<Task>, removed: Vec<TaskId> },
    /// A container list, asked for when [`SupervisorCore::ticket`] was `ticket`.
    Observed { ticket: u64, containers: Vec<ContainerInfo> },
    /// An operation started by an [`Action`] finished.
    Done { task_id: TaskId, outcome: Outcome },
    /// Time passed (retries come due).
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Prepared,
    PrepareFailed {
        err: String,
        retryable: bool,
    },
    Started {
        container_id: String,
    },
    StartFailed {
        err: String,
        retryable: bool,
    },
    /// The container stopped, or was already gone.
    Stopped,
    StopFailed {
        err: String,
    },
    /// The container is gone.
    Removed,
    RemoveFailed {
        err: String,
    },
}

/// What the shell must do. Every action but `Report` is one operation, and
/// the core never asks for a second one on a task before the first is `Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ensure the task's image is present (pull if missing).
    Prepare(Task),
    /// Create and start the task's container.
    Start(Task),
    /// Stop: SIGTERM, then SIGKILL after `grace_ms`.
    Stop { task_id: TaskId, container_id: String, grace_ms: u64 },
    /// Stop first (with this grace) if `Some`, then remove by force; with
    /// `keep_logs`, its logs go to the node's archive first.
    Remove { task_id: TaskId, container_id: String, stop_grace_ms: Option<u64>, keep_logs: Option<KeepLogs> },
    /// Send this status to the dispatcher.
    Report(TaskStatusUpdate),
}

/// A removed container's logs to keep ([`super::archive`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepLogs {
    pub service_id: ServiceId,
    pub slot: Option<u64>,
    pub retention_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Prepare,
    Start,
    Stop,
    Remove,
}

/// What this node knows about one task beyond the manager's copy.
#[derive(Clone, Debug, Default)]
struct Local {
    /// The last status reported.
    reported: Option<TaskStatus>,
    busy: Option<Op>,
    /// Ticket value when its last container operation finished.
    fence: u64,
    /// The image is present: the next step is create and start.
    prepared: bool,
    /// This node started a container for it (so a vanished container is a
    /// failure, not a reason to create one).
    container_id: Option<String>,
    attempts: u32,
    retry_at: Millis,
}

struct Observation {
    ticket: u64,
    by_task: BTreeMap<TaskId, ContainerInfo>,
}

pub struct SupervisorCore {
    /// Has a full assignment set arrived since start?
    full_seen: bool,
    assigned: BTreeMap<TaskId, Task>,
    observed: Option<Observation>,
    local: BTreeMap<TaskId, Local>,
    /// Container operations finished so far.
    ops_done: u64,
    /// The tasks the next reconcile looks at.
    dirty: Dirty,
    /// Tests: look at every task on every event (the reference the
    /// incremental rounds are checked against).
    #[cfg(test)]
    full_pass: bool,
}

/// Which tasks an event can have changed the outcome for. A task's next
/// step depends only on its assignment, its container in the last list and
/// what this node did for it, so an outcome or a diff touches the tasks it
/// names (O(log n) each, however many tasks the node holds); a full set, a
/// container list or a tick touches them all.
#[derive(Debug)]
enum Dirty {
    All,
    Some(BTreeSet<TaskId>),
}

impl Dirty {
    fn add(&mut self, id: &TaskId) {
        if let Dirty::Some(set) = self {
            set.insert(id.clone());
        }
    }
}

impl Default for SupervisorCore {
    fn default() -> Self {
        SupervisorCore::new()
    }
}

impl SupervisorCore {
    pub fn new() -> Self {
        SupervisorCore {
            full_seen: false,
            assigned: BTreeMap::new(),
            observed: None,
            local: BTreeMap::new(),
            ops_done: 0,
            dirty: Dirty::All,
            #[cfg(test)]
            full_pass: false,
        }
    }

    /// Take one before asking the runtime for a list; hand it back in
    /// [`Event::Observed`].
    pub fn ticket(&self) -> u64 {
        self.ops_done
    }

    pub fn assigned(&self) -> &BTreeMap<TaskId, Task> {
        &self.assigned
    }

    /// The task's container in the latest list.
    pub fn container_of(&self, task_id: &TaskId) -> Option<&ContainerInfo> {
        self.observed.as_ref()?.by_task.get(task_id)
    }

    /// Is an operation under way for this task?
    pub fn is_busy(&self, task_id: &TaskId) -> bool {
        self.local.get(task_id).is_some_and(|l| l.busy.is_some())
    }

    pub fn step(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Assigned { full, tasks, removed } => self.on_assigned(full, tasks, removed, &mut out),
            Event::Observed { ticket, containers } => self.on_observed(ticket, containers),
            Event::Done { task_id, outcome } => self.on_done(task_id, outcome, now, &mut out),
            // Retries come due; a tick is seconds apart.
            Event::Tick => self.dirty = Dirty::All,
        }
        #[cfg(test)]
        if self.full_pass {
            self.dirty = Dirty::All;
        }
        self.reconcile(now, &mut out);
        out
    }

    fn on_assigned(&mut self, full: bool, tasks: Vec<Task>, removed: Vec<TaskId>, out: &mut Vec<Action>) {
        if full {
            self.full_seen = true;
            self.assigned.clear();
            self.dirty = Dirty::All;
        }
        for id in removed {
            self.dirty.add(&id);
            self.assigned.remove(&id);
        }
        for t in tasks {
            self.dirty.add(&t.id);
            self.assigned.insert(t.id.clone(), t);
        }
        if full {
            // A new session: whatever the manager's copy lacks of what this
            // node reported was lost on the way. Say it again.
            for (id, task) in &self.assigned {
                if let Some(st) = self.local.get(id).and_then(|l| l.reported.as_ref()) {
                    if task.status.state.can_advance_to(st.state) {
                        out.push(Action::Report(TaskStatusUpdate { task_id: id.clone(), status: st.clone() }));
                    }
                }
            }
        }
    }

    fn on_observed(&mut self, ticket: u64, containers: Vec<ContainerInfo>) {
        if self.observed.as_ref().is_some_and(|o| o.ticket > ticket) {
            return;
        }
        let mut by_task = BTreeMap::new();
        for c in containers {
            // Names are unique per task, so two containers for one task mean
            // someone else made one; prefer the live one.
            let keep_old =
                by_task.get(&c.task_id).is_some_and(|old: &ContainerInfo| old.state.is_live() || !c.state.is_live());
            if !keep_old {
                by_task.insert(c.task_id.clone(), c);
            }
        }
        self.observed = Some(Observation { ticket, by_task });
        self.dirty = Dirty::All;
    }

    fn on_done(&mut self, task_id: TaskId, outcome: Outcome, now: Millis, out: &mut Vec<Action>) {
        let touches_containers = !matches!(outcome, Outcome::Prepared | Outcome::PrepareFailed { .. });
        if touches_containers {
            self.ops_done += 1;
        }
        let fence = self.ops_done;
        self.dirty.add(&task_id);
        // Out of the map while this runs (put back below), so that it can be
        // read beside this node's record of it without a copy.
        let task = self.assigned.remove(&task_id);
        self.on_outcome(&task_id, task.as_ref(), outcome, fence, touches_containers, now, out);
        if let Some(t) = task {
            self.assigned.insert(task_id, t);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_outcome(
        &mut self,
        task_id: &TaskId,
        task: Option<&Task>,
        outcome: Outcome,
        fence: u64,
        touches_containers: bool,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let l = self.local.entry(task_id.clone()).or_default();
        l.busy = None;
        if touches_containers {
            l.fence = fence;
        }
        match outcome {
            Outcome::Prepared => {
                l.prepared = true;
                l.attempts = 0;
            }
            Outcome::Started { container_id } => {
                l.container_id = Some(container_id);
                l.attempts = 0;
            }
            Outcome::PrepareFailed { err, retryable } => {
                if retryable && l.attempts + 1 < MAX_ATTEMPTS {
                    backoff(l, now);
                } else {
                    let mut st = TaskStatus::new(TaskState::Rejected, now, "preparing failed");
                    st.err = Some(err);
                    self.report(task, st, out);
                }
            }
            Outcome::StartFailed { err, retryable } => {
                if retryable && l.attempts + 1 < MAX_ATTEMPTS {
                    backoff(l, now);
                } else {
                    let mut st = TaskStatus::new(TaskState::Failed, now, "starting container failed");
                    st.err = Some(err);
                    self.report(task, st, out);
                }
            }
            Outcome::Stopped => {
                let st = TaskStatus::new(TaskState::Shutdown, now, "shutdown");
                let st = with_container(st, l.container_id.clone());
                self.report(task, st, out);
            }
            Outcome::StopFailed { err } | Outcome::RemoveFailed { err } => {
                tracing::warn!(task = %task_id, error = %err, "container operation failed, will retry");
                backoff(l, now);
            }
            Outcome::Removed => {}
        }
    }

    /// Reports `status` if it moves the task forward from both the manager's
    /// copy and this node's last report. Unassigned tasks get no reports.
    fn report(&mut self, task: Option<&Task>, status: TaskStatus, out: &mut Vec<Action>) {
        let Some(task) = task else {
            return;
        };
        let l = self.local.entry(task.id.clone()).or_default();
        let floor = floor(task, l);
        if !floor.can_advance_to(status.state) {
            return;
        }
        l.reported = Some(status.clone());
        out.push(Action::Report(TaskStatusUpdate { task_id: task.id.clone(), status }));
    }

    fn reconcile(&mut self, now: Millis, out: &mut Vec<Action>) {
        // Until the first list arrives nothing is known about containers:
        // creating one now could duplicate one that already runs.
        let Some(obs) = &self.observed else { return };
        let ticket = obs.ticket;

        let dirty = std::mem::replace(&mut self.dirty, Dirty::Some(BTreeSet::new()));
        let ids: Vec<TaskId> = match &dirty {
            Dirty::All => self.assigned.keys().cloned().collect(),
            Dirty::Some(set) => set.iter().filter(|id| self.assigned.contains_key(*id)).cloned().collect(),
        };
        for id in &ids {
            let Some(l) = self.local.get(id) else {
                // Nothing done for it yet.
                self.reconcile_one(id, Local::default(), now, out);
                continue;
            };
            if l.busy.is_some() || ticket < l.fence {
                continue;
            }
            let local = l.clone();
            self.reconcile_one(id, local, now, out);
        }

        if self.full_seen {
            let stray = |c: &&ContainerInfo| !self.assigned.contains_key(&c.task_id);
            let strays: Vec<ContainerInfo> = match (&self.observed, &dirty) {
                (None, _) => vec![],
                (Some(o), Dirty::All) => o.by_task.values().filter(stray).cloned().collect(),
                (Some(o), Dirty::Some(set)) => {
                    set.iter().filter_map(|id| o.by_task.get(id)).filter(stray).cloned().collect()
                }
            };
            for c in strays {
                let l = self.local.entry(c.task_id.clone()).or_default();
                if l.busy.is_some() || ticket < l.fence || now < l.retry_at || c.state == ContainerState::Removing {
                    continue;
                }
                l.busy = Some(Op::Remove);
                let grace = c.state.is_live().then(|| c.stop_grace_ms.unwrap_or(DEFAULT_STOP_GRACE_MS));
                // Its logs outlive it for the task's log retention.
                let keep_logs = match (&c.service_id, c.log_retention_ms) {
                    (Some(service_id), Some(retention_ms)) if retention_ms > 0 => {
                        Some(KeepLogs { service_id: service_id.clone(), slot: c.slot, retention_ms })
                    }
                    _ => None,
                };
                out.push(Action::Remove {
                    task_id: c.task_id,
                    container_id: c.container_id,
                    stop_grace_ms: grace,
                    keep_logs,
                });
            }
        }

        // Forget tasks that are neither assigned nor seen nor in hand.
        let observed = self.observed.as_ref();
        let assigned = &self.assigned;
        let keep = |id: &TaskId, l: &Local| {
            assigned.contains_key(id)
                || l.busy.is_some()
                || ticket < l.fence
                || observed.is_some_and(|o| o.by_task.contains_key(id))
        };
        match dirty {
            Dirty::All => self.local.retain(|id, l| keep(id, l)),
            Dirty::Some(set) => {
                for id in set {
                    if self.local.get(&id).is_some_and(|l| !keep(&id, l)) {
                        self.local.remove(&id);
                    }
                }
            }
        }
    }

    /// One assigned task's next step (taken out of the map meanwhile, so
    /// that it is not copied).
    fn reconcile_one(&mut self, id: &TaskId, local: Local, now: Millis, out: &mut Vec<Action>) {
        let Some(task) = self.assigned.remove(id) else { return };
        let container = self.observed.as_ref().and_then(|o| o.by_task.get(id)).cloned();
        if task.desired_state.is_terminal() {
            self.shut_down(&task, container, now, out);
        } else if task.desired_state == TaskState::Running {
            self.run(&task, &local, container, now, out);
        }
        // Desired states before RUNNING (READY, …): hold.
        self.assigned.insert(id.clone(), task);
    }

    fn shut_down(&mut self, task: &Task, container: Option<ContainerInfo>, now: Millis, out: &mut Vec<Action>) {
        let l = self.local.entry(task.id.clone()).or_default();
        match container {
            Some(c) if c.state.is_live() => {
                if now < l.retry_at {
                    return;
                }
                l.busy = Some(Op::Stop);
                l.container_id.get_or_insert(c.container_id.clone());
                out.push(Action::Stop {
                    task_id: task.id.clone(),
                    container_id: c.container_id,
                    grace_ms: task.spec.stop_grace_ms,
                });
            }
            c => {
                let cid = c.map(|c| c.container_id).or_else(|| l.container_id.clone());
                let st = with_container(TaskStatus::new(TaskState::Shutdown, now, "shutdown"), cid);
                self.report(Some(task), st, out);
            }
        }
    }

    fn run(
        &mut self,
        task: &Task,
        local: &Local,
        container: Option<ContainerInfo>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let id = &task.id;
        if floor(task, local).is_terminal() {
            // Finished as far as anyone is concerned: no process may linger.
            if let Some(c) = container.filter(|c| c.state.is_live()) {
                if now >= local.retry_at {
                    self.local.entry(id.clone()).or_default().busy = Some(Op::Stop);
                    out.push(Action::Stop {
                        task_id: id.clone(),
                        container_id: c.container_id,
                        grace_ms: task.spec.stop_grace_ms,
                    });
                }
            }
            return;
        }
        match container {
            Some(c) if c.state.is_live() => match c.health {
                // Not RUNNING before its health check passes: nothing (the
                // mesh, an update, `--detach=false`) counts on it until then.
                Some(Health::Starting) => {}
                Some(Health::Unhealthy) => {
                    // Swarm's executor: an unhealthy container fails its task
                    // and is shut down (next round: a finished task's live
                    // container is stopped); the orchestrator replaces it.
                    let mut st = TaskStatus::new(TaskState::Failed, now, "unhealthy");
                    st.err = Some(unhealthy_error(c.health_output.as_deref()));
                    self.report(Some(task), with_container(st, Some(c.container_id)), out);
                }
                health => {
                    // Healthy counts from now, so an update's monitor period
                    // starts when the task could first take traffic.
                    let ts = if health.is_some() { now } else { c.started_at.unwrap_or(now) };
                    let mut st = TaskStatus::new(TaskState::Running, ts, "started");
                    // Where the mesh (or a host-mode client) reaches the task.
                    st.ports = c.ports;
                    st.container_addr = c.address;
                    st.health = health;
                    self.report(Some(task), with_container(st, Some(c.container_id)), out);
                }
            },
            Some(c) if c.state.has_exited() => {
                let ts = c.finished_at.unwrap_or(now);
                let st = match c.exit_code {
                    Some(0) => TaskStatus::new(TaskState::Complete, ts, "finished"),
                    code => {
                        let mut st = TaskStatus::new(TaskState::Failed, ts, "started");
                        st.exit_code = code;
                        st.err = Some(match code {
                            Some(n) => format!("task: non-zero exit ({n})"),
                            None => "task: container died".to_string(),
                        });
                        st
                    }
                };
                self.report(Some(task), with_container(st, Some(c.container_id)), out);
            }
            Some(c) if c.state == ContainerState::Created => {
                // Created but never started (a worker died in between):
                // clear it away; the next round creates it afresh.
                if now >= local.retry_at {
                    self.local.entry(id.clone()).or_default().busy = Some(Op::Remove);
                    out.push(Action::Remove {
                        task_id: id.clone(),
                        container_id: c.container_id,
                        stop_grace_ms: None,
                        keep_logs: None,
                    });
                }
            }
            Some(_) => {} // removing, unknown: wait for a clearer picture
            None => {
                if local.container_id.is_some() || floor(task, local) >= TaskState::Running {
                    let mut st = TaskStatus::new(TaskState::Failed, now, "container gone");
                    st.err = Some("task: container not found".to_string());
                    self.report(Some(task), with_container(st, local.container_id.clone()), out);
                    return;
                }
                if now < local.retry_at {
                    return;
                }
                if local.prepared {
                    self.report(Some(task), TaskStatus::new(TaskState::Starting, now, "starting"), out);
                    self.local.entry(id.clone()).or_default().busy = Some(Op::Start);
                    out.push(Action::Start(task.clone()));
                } else {
                    self.report(Some(task), TaskStatus::new(TaskState::Accepted, now, "accepted"), out);
                    self.report(Some(task), TaskStatus::new(TaskState::Preparing, now, "preparing"), out);
                    self.local.entry(id.clone()).or_default().busy = Some(Op::Prepare);
                    out.push(Action::Prepare(task.clone()));
                }
            }
        }
    }
}

/// The state reports must move forward from.
fn floor(task: &Task, l: &Local) -> TaskState {
    let mine = l.reported.as_ref().map(|s| s.state).unwrap_or(TaskState::New);
    task.status.state.max(mine)
}

fn backoff(l: &mut Local, now: Millis) {
    l.attempts += 1;
    // At most BACKOFF_MAX_MS, so the cast is exact.
    l.retry_at = now + BACKOFF.delay(l.attempts).as_millis() as Millis;
}

fn with_container(mut st: TaskStatus, cid: Option<String>) -> TaskStatus {
    st.container_id = cid;
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::ServiceId;
    use common::mesh::{HostPort, Protocol};
    use common::spec::TaskTemplate;
    use ContainerState::{Created, Exited, Running as Live};
    use TaskState::*;

    fn task(id: &str, desired: TaskState, state: TaskState) -> Task {
        Task {
            id: TaskId::from(id),
            service_id: ServiceId::from("svc"),
            service_name: "web".into(),
            slot: 1,
            node_id: None,
            spec: TaskTemplate { stop_grace_ms: 2_000, ..TaskTemplate::new("shoal/busybox:latest") },
            desired_state: desired,
            status: TaskStatus::new(state, 0, ""),
            created_at: 0,
            ..blank_task()
        }
    }

    /// Fields the core does not read, so that additions to `Task` do not
    /// break these tests.
    fn blank_task() -> Task {
        serde_json::from_value(serde_json::json!({
            "id": "x", "service_id": "svc", "service_name": "web", "slot": 1, "node_id": null,
            "spec": {"image": "i", "restart": {"condition": "any", "delay_ms": 0, "max_attempts": null}},
            "desired_state": "running",
            "status": {"state": "new", "timestamp": 0},
            "created_at": 0
        }))
        .expect("a minimal task")
    }

    fn ctr(task: &str, cid: &str, state: ContainerState, exit: Option<i64>) -> ContainerInfo {
        ContainerInfo {
            container_id: cid.into(),
            task_id: TaskId::from(task),
            state,
            exit_code: exit,
            started_at: Some(50),
            finished_at: exit.map(|_| 60),
            stop_grace_ms: Some(3_000),
            service_id: None,
            slot: None,
            log_retention_ms: None,
            ports: vec![],
            address: None,
            health: None,
            health_output: None,
        }
    }

    fn healthy(task: &str, cid: &str, health: Health, output: Option<&str>) -> ContainerInfo {
        ContainerInfo { health: Some(health), health_output: output.map(String::from), ..ctr(task, cid, Live, None) }
    }

    /// One input to the core. `Observe` takes the ticket the core would
    /// hand out at that moment; `ObserveStale` uses an older one.
    enum S {
        Full(Vec<Task>),
        Delta(Vec<Task>, Vec<&'static str>),
        Observe(Vec<ContainerInfo>),
        ObserveStale(u64, Vec<ContainerInfo>),
        Done(&'static str, Outcome),
        Tick(Millis),
    }
    use S::*;

    fn render(a: &Action) -> String {
        match a {
            Action::Prepare(t) => format!("prepare {}", t.id),
            Action::Start(t) => format!("start {}", t.id),
            Action::Stop { container_id, grace_ms, .. } => format!("stop {container_id} grace={grace_ms}"),
            Action::Remove { container_id, stop_grace_ms, keep_logs, .. } => {
                let mut s = format!("remove {container_id}");
                if let Some(g) = stop_grace_ms {
                    s += &format!(" stop={g}");
                }
                if let Some(k) = keep_logs {
                    s += &format!(" keep-logs={}:{}", k.service_id, k.retention_ms);
                }
                s
            }
            Action::Report(u) => {
                let mut s = format!("report {} {}", u.task_id.as_str(), u.status.state);
                if let Some(c) = &u.status.container_id {
                    s += &format!(" cid={c}");
                }
                if let Some(c) = u.status.exit_code {
                    s += &format!(" exit={c}");
                }
                if let Some(e) = &u.status.err {
                    s += &format!(" err={e}");
                }
                if let Some(h) = u.status.health {
                    s += &format!(" health={}", h.as_str());
                }
                for p in &u.status.ports {
                    s += &format!(" {}/{}->{}", p.target, p.protocol, p.host_port);
                }
                s
            }
        }
    }

    /// Runs the steps at now = 1000 (or the tick's time) and returns every
    /// action, rendered, in order.
    fn run(steps: Vec<S>) -> Vec<String> {
        let mut core = SupervisorCore::new();
        let mut now = 1_000;
        let mut out = Vec::new();
        for s in steps {
            let ev = match s {
                Full(tasks) => Event::Assigned { full: true, tasks, removed: vec![] },
                Delta(tasks, removed) => {
                    Event::Assigned { full: false, tasks, removed: removed.into_iter().map(TaskId::from).collect() }
                }
                Observe(containers) => Event::Observed { ticket: core.ticket(), containers },
                ObserveStale(ticket, containers) => Event::Observed { ticket, containers },
                Done(id, outcome) => Event::Done { task_id: TaskId::from(id), outcome },
                Tick(t) => {
                    now = t;
                    Event::Tick
                }
            };
            out.extend(core.step(ev, now).iter().map(render));
        }
        out
    }

    fn started(cid: &str) -> Outcome {
        Outcome::Started { container_id: cid.into() }
    }

    #[test]
    fn reconcile_table() {
        let t1 = || task("t1", Running, Assigned);
        let cases: Vec<(&str, Vec<S>, Vec<&str>)> = vec![
            ("nothing happens before the first container list", vec![Full(vec![t1()])], vec![]),
            (
                "a new task goes accepted, preparing, starting, running",
                vec![
                    Full(vec![t1()]),
                    Observe(vec![]),
                    Done("t1", Outcome::Prepared),
                    Done("t1", started("c1")),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                ],
                vec![
                    "report t1 accepted",
                    "report t1 preparing",
                    "prepare t1",
                    "report t1 starting",
                    "start t1",
                    "report t1 running cid=c1",
                ],
            ),
            (
                "the running report carries the container's host ports",
                vec![
                    Full(vec![task("t1", Running, Starting)]),
                    Observe(vec![ContainerInfo {
                        ports: vec![
                            HostPort { protocol: Protocol::Tcp, target: 80, host_port: 32768 },
                            HostPort { protocol: Protocol::Udp, target: 53, host_port: 32769 },
                        ],
                        ..ctr("t1", "c1", Live, None)
                    }]),
                ],
                vec!["report t1 running cid=c1 80/tcp->32768 53/udp->32769"],
            ),
            (
                "a host port in use fails the task with the runtime's words",
                vec![
                    Full(vec![task("t1", Running, Preparing)]),
                    Observe(vec![]),
                    Done("t1", Outcome::Prepared),
                    Done(
                        "t1",
                        Outcome::StartFailed {
                            err: "host port 127.0.0.11:8080/tcp is already in use on this node".into(),
                            retryable: false,
                        },
                    ),
                ],
                vec![
                    "prepare t1",
                    "report t1 starting",
                    "start t1",
                    "report t1 failed err=host port 127.0.0.11:8080/tcp is already in use on this node",
                ],
            ),
            (
                "one operation per task at a time",
                vec![Full(vec![t1()]), Observe(vec![]), Observe(vec![]), Tick(5_000)],
                vec!["report t1 accepted", "report t1 preparing", "prepare t1"],
            ),
            (
                "an image that cannot be had rejects the task with docker's message",
                vec![
                    Full(vec![t1()]),
                    Observe(vec![]),
                    Done(
                        "t1",
                        Outcome::PrepareFailed { err: "pull access denied for shoal/nope".into(), retryable: false },
                    ),
                    Observe(vec![]),
                ],
                vec![
                    "report t1 accepted",
                    "report t1 preparing",
                    "prepare t1",
                    "report t1 rejected err=pull access denied for shoal/nope",
                ],
            ),
            (
                "a retryable prepare failure is retried after a backoff",
                vec![
                    Full(vec![t1()]),
                    Observe(vec![]),
                    Done("t1", Outcome::PrepareFailed { err: "eof".into(), retryable: true }),
                    Tick(1_500),
                    Tick(2_000),
                ],
                vec!["report t1 accepted", "report t1 preparing", "prepare t1", "prepare t1"],
            ),
            (
                "a create/start error fails the task",
                vec![
                    Full(vec![task("t1", Running, Preparing)]),
                    Observe(vec![]),
                    Done("t1", Outcome::Prepared),
                    Done("t1", Outcome::StartFailed { err: "invalid mount".into(), retryable: false }),
                    Observe(vec![]),
                ],
                vec!["prepare t1", "report t1 starting", "start t1", "report t1 failed err=invalid mount"],
            ),
            (
                "exit 0 completes",
                vec![Full(vec![task("t1", Running, Running)]), Observe(vec![ctr("t1", "c1", Exited, Some(0))])],
                vec!["report t1 complete cid=c1"],
            ),
            (
                "a non-zero exit fails, and the task is never restarted",
                vec![
                    Full(vec![task("t1", Running, Running)]),
                    Observe(vec![ctr("t1", "c1", Exited, Some(137))]),
                    Observe(vec![ctr("t1", "c1", Exited, Some(137))]),
                    Observe(vec![]),
                    Tick(100_000),
                ],
                vec!["report t1 failed cid=c1 exit=137 err=task: non-zero exit (137)"],
            ),
            (
                "a running task whose container vanished fails",
                vec![Full(vec![task("t1", Running, Running)]), Observe(vec![])],
                vec!["report t1 failed err=task: container not found"],
            ),
            (
                "desired shutdown stops a live container, then reports shutdown",
                vec![
                    Full(vec![task("t1", Shutdown, Running)]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Done("t1", Outcome::Stopped),
                    Observe(vec![ctr("t1", "c1", Exited, Some(137))]),
                ],
                vec!["stop c1 grace=2000", "report t1 shutdown cid=c1"],
            ),
            (
                "desired shutdown with no container reports shutdown at once",
                vec![Full(vec![task("t1", Shutdown, Assigned)]), Observe(vec![])],
                vec!["report t1 shutdown"],
            ),
            (
                "a failed stop is retried",
                vec![
                    Full(vec![task("t1", Shutdown, Running)]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Done("t1", Outcome::StopFailed { err: "eof".into() }),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Tick(10_000),
                ],
                vec!["stop c1 grace=2000", "stop c1 grace=2000"],
            ),
            (
                "a running container is adopted, not recreated",
                vec![Full(vec![task("t1", Running, Running)]), Observe(vec![ctr("t1", "c1", Live, None)])],
                vec![],
            ),
            (
                "adopting a task the manager saw starting reports it running",
                vec![Full(vec![task("t1", Running, Starting)]), Observe(vec![ctr("t1", "c1", Live, None)])],
                vec!["report t1 running cid=c1"],
            ),
            (
                "reports never go back past the manager's copy",
                vec![Full(vec![task("t1", Running, Preparing)]), Observe(vec![])],
                vec!["prepare t1"],
            ),
            (
                "containers of unassigned tasks are left alone until a full set arrives",
                vec![
                    Observe(vec![ctr("gone", "c9", Live, None), ctr("t1", "c1", Live, None)]),
                    Delta(vec![task("t1", Running, Running)], vec![]),
                    Observe(vec![ctr("gone", "c9", Live, None), ctr("t1", "c1", Live, None)]),
                    Full(vec![task("t1", Running, Running)]),
                ],
                vec!["remove c9 stop=3000"],
            ),
            (
                "an exited unassigned container is removed without a stop",
                vec![Full(vec![]), Observe(vec![ctr("gone", "c9", Exited, Some(0))])],
                vec!["remove c9"],
            ),
            (
                "a stray's logs are kept for its service's retention as it is removed",
                vec![
                    Full(vec![]),
                    Observe(vec![ContainerInfo {
                        service_id: Some("web".into()),
                        log_retention_ms: Some(5_000),
                        ..ctr("gone", "c9", Live, None)
                    }]),
                ],
                vec!["remove c9 stop=3000 keep-logs=web:5000"],
            ),
            (
                "a task dropped from the set has its container removed once",
                vec![
                    Full(vec![task("t1", Running, Running)]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Delta(vec![], vec!["t1"]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Done("t1", Outcome::Removed),
                    ObserveStale(0, vec![ctr("t1", "c1", Live, None)]),
                    Observe(vec![]),
                ],
                vec!["remove c1 stop=3000"],
            ),
            (
                "a list older than a finished start is not trusted",
                vec![
                    Full(vec![task("t1", Running, Preparing)]),
                    Observe(vec![]),
                    Done("t1", Outcome::Prepared),
                    Done("t1", started("c1")),
                    ObserveStale(0, vec![]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                ],
                vec!["prepare t1", "report t1 starting", "start t1", "report t1 running cid=c1"],
            ),
            (
                "a container created but never started is cleared and made again",
                vec![
                    Full(vec![task("t1", Running, Starting)]),
                    Observe(vec![ctr("t1", "c1", Created, None)]),
                    Done("t1", Outcome::Removed),
                    Observe(vec![]),
                ],
                vec!["remove c1", "prepare t1"],
            ),
            (
                "a finished task's live container is stopped without a report",
                vec![
                    Full(vec![task("t1", Running, Orphaned)]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Done("t1", Outcome::Stopped),
                ],
                vec!["stop c1 grace=2000"],
            ),
            (
                "a new session re-sends what the manager's copy lacks",
                vec![
                    Full(vec![task("t1", Running, Starting)]),
                    Observe(vec![ctr("t1", "c1", Live, None)]),
                    Full(vec![task("t1", Running, Starting)]),
                    Full(vec![task("t1", Running, Running)]),
                ],
                vec!["report t1 running cid=c1", "report t1 running cid=c1"],
            ),
            (
                "a container with a health check is running only once healthy",
                vec![
                    Full(vec![task("t1", Running, Starting)]),
                    Observe(vec![healthy("t1", "c1", Health::Starting, None)]),
                    Tick(5_000),
                    Observe(vec![healthy("t1", "c1", Health::Healthy, None)]),
                ],
                vec!["report t1 running cid=c1 health=healthy"],
            ),
            (
                "an unhealthy container fails its task with the probe's output, then is stopped",
                vec![
                    Full(vec![task("t1", Running, Running)]),
                    Observe(vec![healthy("t1", "c1", Health::Unhealthy, Some("no /ok\n"))]),
                    Observe(vec![healthy("t1", "c1", Health::Unhealthy, Some("no /ok\n"))]),
                    Done("t1", Outcome::Stopped),
                ],
                vec!["report t1 failed cid=c1 err=dockerexec: unhealthy container: no /ok", "stop c1 grace=2000"],
            ),
            (
                "a container that never gets healthy fails while starting",
                vec![
                    Full(vec![task("t1", Running, Starting)]),
                    Observe(vec![healthy("t1", "c1", Health::Starting, None)]),
                    Observe(vec![healthy("t1", "c1", Health::Unhealthy, None)]),
                ],
                vec!["report t1 failed cid=c1 err=dockerexec: unhealthy container"],
            ),
            (
                "desired states before running hold the task",
                vec![Full(vec![task("t1", Ready, Assigned)]), Observe(vec![])],
                vec![],
            ),
            (
                "shutdown while preparing waits for the operation, then reports",
                vec![
                    Full(vec![t1()]),
                    Observe(vec![]),
                    Delta(vec![task("t1", Shutdown, Preparing)], vec![]),
                    Done("t1", Outcome::Prepared),
                ],
                vec!["report t1 accepted", "report t1 preparing", "prepare t1", "report t1 shutdown"],
            ),
        ];
        for (name, steps, want) in cases {
            assert_eq!(run(steps), want, "case: {name}");
        }
    }

    #[test]
    fn retryable_failures_give_up_after_max_attempts() {
        let mut steps = vec![Full(vec![task("t1", Running, Assigned)]), Observe(vec![])];
        for i in 0..MAX_ATTEMPTS as u64 {
            steps.push(Done("t1", Outcome::PrepareFailed { err: "eof".into(), retryable: true }));
            steps.push(Tick(1_000 + (i + 1) * BACKOFF_MAX_MS));
        }
        let out = run(steps);
        assert_eq!(out.iter().filter(|a| *a == "prepare t1").count(), MAX_ATTEMPTS as usize);
        assert_eq!(out.last().map(String::as_str), Some("report t1 rejected err=eof"));
    }

    /// Reconciling only the tasks an event names gives the same actions,
    /// event after event, as looking at every task every time: random
    /// sequences of full sets, diffs, container lists (fresh and stale),
    /// outcomes and ticks over a few tasks.
    #[test]
    fn incremental_rounds_equal_full_passes() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        const IDS: [&str; 6] = ["t0", "t1", "t2", "t3", "t4", "t5"];
        let desired = [Running, Running, Shutdown, Ready, Complete];
        let states = [Assigned, Accepted, Preparing, Starting, Running, Failed, Shutdown, Complete];
        let ctr_states = [Live, Live, Exited, Created, ContainerState::Removing];
        for seed in 0..400u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut inc = SupervisorCore::new();
            let mut full = SupervisorCore::new();
            full.full_pass = true;
            let mut now: Millis = 1_000;
            for step in 0..60 {
                let pick = |rng: &mut StdRng| IDS[rng.gen_range(0..IDS.len())];
                let a_task = |rng: &mut StdRng| {
                    task(pick(rng), desired[rng.gen_range(0..desired.len())], states[rng.gen_range(0..states.len())])
                };
                let ev = match rng.gen_range(0..10) {
                    0 => Event::Assigned {
                        full: true,
                        tasks: (0..rng.gen_range(0..5)).map(|_| a_task(&mut rng)).collect(),
                        removed: vec![],
                    },
                    1 | 2 => Event::Assigned {
                        full: false,
                        tasks: (0..rng.gen_range(0..3)).map(|_| a_task(&mut rng)).collect(),
                        removed: (0..rng.gen_range(0..2)).map(|_| TaskId::from(pick(&mut rng))).collect(),
                    },
                    3 | 4 => {
                        let containers = (0..rng.gen_range(0..5))
                            .map(|_| {
                                let id = pick(&mut rng);
                                let st = ctr_states[rng.gen_range(0..ctr_states.len())];
                                let exit = (st == Exited).then(|| rng.gen_range(0..2));
                                ctr(id, &format!("c-{id}-{}", rng.gen_range(0..2)), st, exit)
                            })
                            .collect();
                        let ticket = if rng.gen_bool(0.8) { inc.ticket() } else { inc.ticket().saturating_sub(1) };
                        Event::Observed { ticket, containers }
                    }
                    5..=8 => {
                        let id = TaskId::from(pick(&mut rng));
                        let outcome = match rng.gen_range(0..8) {
                            0 => Outcome::Prepared,
                            1 => Outcome::PrepareFailed { err: "no image".into(), retryable: rng.gen_bool(0.5) },
                            2 => Outcome::Started { container_id: format!("c-{id}-0") },
                            3 => Outcome::StartFailed { err: "port taken".into(), retryable: rng.gen_bool(0.5) },
                            4 => Outcome::Stopped,
                            5 => Outcome::StopFailed { err: "stuck".into() },
                            6 => Outcome::Removed,
                            _ => Outcome::RemoveFailed { err: "busy".into() },
                        };
                        Event::Done { task_id: id, outcome }
                    }
                    _ => {
                        now += rng.gen_range(0..40_000);
                        Event::Tick
                    }
                };
                now += 1;
                let a: Vec<String> = inc.step(ev.clone(), now).iter().map(render).collect();
                let b: Vec<String> = full.step(ev.clone(), now).iter().map(render).collect();
                assert_eq!(a, b, "seed {seed}, step {step}: {ev:?}");
            }
        }
    }
}
