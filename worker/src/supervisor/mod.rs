//! TaskSupervisor: runs this node's assigned tasks as containers and reports
//! their states. A thin actix shell around [`core::SupervisorCore`]:
//! messages and runtime results go in as core events, the core's actions
//! come out as runtime calls (spawned futures, never blocking the actor) and
//! status updates on the channel given at start.
//!
//! It reconciles on every assignment, on every Docker event for this node's
//! containers, after every operation, and on a slow poll as a safety net.

pub mod archive;
pub mod core;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use common::ids::{NodeId, TaskId};
use common::task::{Task, TaskStatusUpdate};
use common::time::now_ms;

use self::core::{Action, Event, Outcome, SupervisorCore};
use crate::runtime::{LogStream, Runtime, RuntimeError};

/// The assignment set from the dispatcher session: `full` replaces it,
/// otherwise `tasks` are upserted and `removed` dropped.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Assign {
    pub full: bool,
    pub tasks: Vec<Task>,
    pub removed: Vec<TaskId>,
}

/// The logs of one task's container on this node, for the node's log server.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<LogStream, RuntimeError>")]
pub struct Logs {
    pub task_id: TaskId,
    pub follow: bool,
    /// Last N lines; `None` for all.
    pub tail: Option<u64>,
}

/// Stops the supervisor. Its containers keep running: a worker that starts
/// again adopts them.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Stop;

#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// Safety-net list interval; Docker events drive the usual case.
    pub poll_every: Duration,
    /// Wait before re-subscribing to Docker events after the stream ends.
    pub events_retry: Duration,
    /// After Docker events, list once more when none came for this long.
    pub events_settle: Duration,
    /// Where removed containers' logs are kept (the node's log server
    /// reads them too).
    pub archive: Arc<archive::LogArchive>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            poll_every: Duration::from_secs(2),
            events_retry: Duration::from_secs(1),
            events_settle: Duration::from_millis(300),
            archive: Default::default(),
        }
    }
}

pub struct TaskSupervisor {
    node_id: NodeId,
    runtime: Arc<dyn Runtime>,
    status_tx: UnboundedSender<TaskStatusUpdate>,
    config: SupervisorConfig,
    core: SupervisorCore,
    /// A list is in flight.
    listing: bool,
    /// Something changed while it was: list again when it lands.
    relist: bool,
    /// The list due once a burst of Docker events has gone quiet.
    settle: Option<SpawnHandle>,
    metrics: crate::node::metrics::ActorMetrics,
}

impl TaskSupervisor {
    pub fn new(node_id: NodeId, runtime: Arc<dyn Runtime>, status_tx: UnboundedSender<TaskStatusUpdate>) -> Self {
        Self::with_config(node_id, runtime, status_tx, SupervisorConfig::default())
    }

    pub fn with_config(
        node_id: NodeId,
        runtime: Arc<dyn Runtime>,
        status_tx: UnboundedSender<TaskStatusUpdate>,
        config: SupervisorConfig,
    ) -> Self {
        TaskSupervisor {
            node_id,
            runtime,
            status_tx,
            config,
            core: SupervisorCore::new(),
            listing: false,
            relist: false,
            settle: None,
            metrics: crate::node::metrics::metrics().actor("supervisor"),
        }
    }

    /// One event into the core, and its actions out: one handled message
    /// in the actor metrics (an error when it reports a failed operation).
    fn step(&mut self, event: Event, ctx: &mut Context<Self>) {
        let started = std::time::Instant::now();
        let failed = matches!(
            &event,
            Event::Done {
                outcome: Outcome::PrepareFailed { .. }
                    | Outcome::StartFailed { .. }
                    | Outcome::StopFailed { .. }
                    | Outcome::RemoveFailed { .. },
                ..
            }
        );
        let actions = self.core.step(event, now_ms());
        for action in actions {
            self.execute(action, ctx);
        }
        self.metrics.handled(started, !failed);
    }

    fn execute(&mut self, action: Action, ctx: &mut Context<Self>) {
        let rt = self.runtime.clone();
        match action {
            Action::Report(update) => {
                tracing::debug!(task = %update.task_id, state = %update.status.state, "task status");
                if self.status_tx.send(update).is_err() {
                    tracing::debug!("status receiver gone; update dropped");
                }
            }
            Action::Prepare(task) => {
                let (image, auth) = (task.spec.image.clone(), task.spec.registry_auth.clone());
                self.spawn_op(ctx, task.id, async move {
                    match rt.ensure_image(&image, auth.as_ref()).await {
                        Ok(()) => Outcome::Prepared,
                        Err(e) => Outcome::PrepareFailed { err: e.message(), retryable: e.is_retryable() },
                    }
                });
            }
            Action::Start(task) => {
                let node = self.node_id.clone();
                let id = task.id.clone();
                self.spawn_op(ctx, id, async move {
                    match rt.create_and_start(&node, &task).await {
                        Ok(container_id) => Outcome::Started { container_id },
                        Err(e) => Outcome::StartFailed { err: e.message(), retryable: e.is_retryable() },
                    }
                });
            }
            Action::Stop { task_id, container_id, grace_ms } => {
                self.spawn_op(ctx, task_id, async move {
                    match rt.stop(&container_id, grace_ms).await {
                        Ok(()) | Err(RuntimeError::NotFound(_)) => Outcome::Stopped,
                        Err(e) => Outcome::StopFailed { err: e.to_string() },
                    }
                });
            }
            Action::Remove { task_id, container_id, stop_grace_ms, keep_logs } => {
                let archive = self.config.archive.clone();
                let task = task_id.clone();
                self.spawn_op(ctx, task_id, async move {
                    if let Some(grace) = stop_grace_ms {
                        match rt.stop(&container_id, grace).await {
                            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                            Err(e) => return Outcome::RemoveFailed { err: e.to_string() },
                        }
                    }
                    if let Some(k) = keep_logs {
                        use futures::StreamExt;
                        // What it wrote, read once it has stopped writing.
                        let slot = k.slot;
                        let lines: Vec<_> = rt
                            .logs(&task, &container_id, false, None)
                            .filter_map(|l| async move {
                                l.ok().map(|mut l| {
                                    l.slot = slot;
                                    l
                                })
                            })
                            .collect()
                            .await;
                        archive.put(task, k.service_id, lines, now_ms(), k.retention_ms);
                    }
                    match rt.remove(&container_id).await {
                        Ok(()) | Err(RuntimeError::NotFound(_)) => Outcome::Removed,
                        Err(e) => Outcome::RemoveFailed { err: e.to_string() },
                    }
                });
            }
        }
    }

    /// Runs one runtime operation beside the actor; its outcome goes back
    /// into the core, and the containers are listed again.
    fn spawn_op(&mut self, ctx: &mut Context<Self>, task_id: TaskId, op: impl Future<Output = Outcome> + 'static) {
        ctx.spawn(op.into_actor(self).map(move |outcome, act, ctx| {
            tracing::debug!(task = %task_id, ?outcome, "operation done");
            act.step(Event::Done { task_id, outcome }, ctx);
            act.refresh(ctx);
        }));
    }

    /// Lists this node's containers, unless a list is already on its way (then
    /// one more follows it).
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        if self.listing {
            self.relist = true;
            return;
        }
        self.listing = true;
        let ticket = self.core.ticket();
        let rt = self.runtime.clone();
        let node = self.node_id.clone();
        let list = async move { rt.list(&node).await };
        ctx.spawn(list.into_actor(self).map(move |res, act, ctx| {
            act.listing = false;
            match res {
                Ok(containers) => act.step(Event::Observed { ticket, containers }, ctx),
                Err(e) => tracing::warn!(error = %e, "listing containers failed"),
            }
            if std::mem::take(&mut act.relist) {
                act.refresh(ctx);
            }
        }));
    }

    fn watch_events(&mut self, ctx: &mut Context<Self>) {
        ctx.add_stream(self.runtime.events(&self.node_id));
        // Whatever happened while not watching.
        self.refresh(ctx);
    }
}

impl Actor for TaskSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(node = %self.node_id, "task supervisor started");
        self.watch_events(ctx);
        ctx.run_interval(self.config.poll_every, |act, ctx| {
            act.step(Event::Tick, ctx);
            act.refresh(ctx);
        });
    }
}

impl StreamHandler<Result<(), RuntimeError>> for TaskSupervisor {
    fn handle(&mut self, item: Result<(), RuntimeError>, ctx: &mut Self::Context) {
        if let Err(e) = item {
            tracing::debug!(error = %e, "docker events");
        }
        self.refresh(ctx);
        // Docker sends `die` before its container list shows the exit: look
        // again once the burst of events has been quiet for a moment.
        if let Some(h) = self.settle.take() {
            ctx.cancel_future(h);
        }
        self.settle = Some(ctx.run_later(self.config.events_settle, |act, ctx| {
            act.settle = None;
            act.refresh(ctx);
        }));
    }

    /// The events stream ends when Docker restarts or drops us: subscribe
    /// again (the default would stop the actor).
    fn finished(&mut self, ctx: &mut Self::Context) {
        tracing::debug!("docker events stream ended; resubscribing");
        ctx.run_later(self.config.events_retry, |act, ctx| act.watch_events(ctx));
    }
}

impl Handler<Assign> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Assign, ctx: &mut Self::Context) {
        let Assign { full, tasks, removed } = msg;
        self.step(Event::Assigned { full, tasks, removed }, ctx);
    }
}

impl Handler<Stop> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        tracing::info!(node = %self.node_id, "task supervisor stopping");
        ctx.stop();
    }
}

impl Handler<Logs> for TaskSupervisor {
    type Result = ResponseFuture<Result<LogStream, RuntimeError>>;

    fn handle(&mut self, msg: Logs, _ctx: &mut Self::Context) -> Self::Result {
        let rt = self.runtime.clone();
        let node = self.node_id.clone();
        let known = self.core.container_of(&msg.task_id).map(|c| c.container_id.clone());
        Box::pin(async move {
            let container_id = match known {
                Some(id) => id,
                // Not in the last list (just created, or not listed yet).
                None => rt
                    .list(&node)
                    .await?
                    .into_iter()
                    .find(|c| c.task_id == msg.task_id)
                    .map(|c| c.container_id)
                    .ok_or_else(|| {
                        RuntimeError::NotFound(format!("task {} has no container on this node", msg.task_id))
                    })?,
            };
            Ok(rt.logs(&msg.task_id, &container_id, msg.follow, msg.tail))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::{Call, FakeRuntime};
    use common::ids::ServiceId;
    use common::spec::{RestartPolicy, TaskTemplate};
    use common::task::{TaskState, TaskStatus};
    use futures::StreamExt;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
    use tokio::time::{timeout_at, Instant};

    const IMAGE: &str = "shoal/busybox:latest";

    fn task(desired: TaskState) -> Task {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": TaskId::random(), "service_id": ServiceId::random(), "service_name": "web", "slot": 1,
            "node_id": null,
            "spec": {"image": IMAGE, "restart": {"condition": "any", "delay_ms": 0, "max_attempts": null}},
            "desired_state": "running",
            "status": {"state": "assigned", "timestamp": 0},
            "created_at": 0
        }))
        .expect("a minimal task");
        t.spec = TaskTemplate { stop_grace_ms: 1_000, restart: RestartPolicy::default(), ..t.spec };
        t.desired_state = desired;
        t
    }

    fn start(node: &NodeId, rt: &Arc<FakeRuntime>) -> (Addr<TaskSupervisor>, UnboundedReceiver<TaskStatusUpdate>) {
        let (tx, rx) = unbounded_channel();
        let config = SupervisorConfig { poll_every: Duration::from_millis(200), ..Default::default() };
        let addr = TaskSupervisor::with_config(node.clone(), rt.clone(), tx, config).start();
        (addr, rx)
    }

    /// Receives updates until one for `task` reaches `state`; panics after 5 s.
    async fn wait_state(
        rx: &mut UnboundedReceiver<TaskStatusUpdate>,
        task: &TaskId,
        state: TaskState,
    ) -> Vec<TaskStatus> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            match timeout_at(deadline, rx.recv()).await {
                Ok(Some(u)) if &u.task_id == task => {
                    let done = u.status.state == state;
                    seen.push(u.status);
                    if done {
                        return seen;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("status channel closed"),
                Err(_) => panic!("timed out waiting for {state}; saw {seen:?}"),
            }
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[actix::test]
    async fn runs_a_task_then_reports_its_failure() {
        let node = NodeId::random();
        let rt = Arc::new(FakeRuntime::new().with_image(IMAGE));
        let (addr, mut rx) = start(&node, &rt);
        let t = task(TaskState::Running);
        addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });

        let seen = wait_state(&mut rx, &t.id, TaskState::Running).await;
        let states: Vec<_> = seen.iter().map(|s| s.state).collect();
        use TaskState::*;
        assert_eq!(states, vec![Accepted, Preparing, Starting, Running]);
        let cid = seen.last().and_then(|s| s.container_id.clone()).expect("container id");
        assert_eq!(rt.container_of(&t.id).map(|c| c.id), Some(cid.clone()));

        rt.exit(&cid, 137);
        let failed = wait_state(&mut rx, &t.id, Failed).await.pop().expect("failed");
        assert_eq!(failed.exit_code, Some(137));
        assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (137)"));
        // Never restarted.
        let creates = rt.calls().iter().filter(|c| matches!(c, Call::CreateAndStart(_))).count();
        assert_eq!(creates, 1);
    }

    #[actix::test]
    async fn running_reports_host_ports_and_a_taken_host_port_fails_the_task() {
        use common::mesh::{HostPort, Protocol};
        let node = NodeId::random();
        let rt = Arc::new(FakeRuntime::new().with_image(IMAGE));
        let (addr, mut rx) = start(&node, &rt);
        let mut web = task(TaskState::Running);
        web.spec.ports =
            vec!["8080:80".parse().expect("port"), "published=9000,target=90,mode=host".parse().expect("port")];
        let mut clash = task(TaskState::Running);
        clash.spec.ports = vec!["published=9000,target=90,mode=host".parse().expect("port")];
        addr.do_send(Assign { full: true, tasks: vec![web.clone()], removed: vec![] });
        let running = wait_state(&mut rx, &web.id, TaskState::Running).await.pop().expect("running");
        assert_eq!(
            running.ports,
            vec![
                HostPort { protocol: Protocol::Tcp, target: 80, host_port: 32768 },
                HostPort { protocol: Protocol::Tcp, target: 90, host_port: 9000 },
            ]
        );

        addr.do_send(Assign { full: false, tasks: vec![clash.clone()], removed: vec![] });
        let failed = wait_state(&mut rx, &clash.id, TaskState::Failed).await.pop().expect("failed");
        assert_eq!(failed.err.as_deref(), Some("host port 9000/tcp is already in use on this node"));
        // Not retried: the port stays taken.
        let creates = rt.calls().iter().filter(|c| **c == Call::CreateAndStart(clash.id.clone())).count();
        assert_eq!(creates, 1);
    }

    #[actix::test]
    async fn a_missing_image_rejects_with_the_runtime_message() {
        let node = NodeId::random();
        let rt = Arc::new(FakeRuntime::new());
        let (addr, mut rx) = start(&node, &rt);
        let mut t = task(TaskState::Running);
        t.spec.image = "shoal/nope:latest".into();
        addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
        let rejected = wait_state(&mut rx, &t.id, TaskState::Rejected).await.pop().expect("rejected");
        assert_eq!(
            rejected.err.as_deref(),
            Some(
                "No such image: shoal/nope:latest: pull access denied for shoal/nope:latest, repository does not exist"
            )
        );
    }

    #[actix::test]
    async fn one_operation_per_task_while_a_pull_is_slow() {
        let node = NodeId::random();
        let rt = Arc::new(FakeRuntime::new());
        rt.add_pullable(IMAGE);
        rt.hold_pulls(true);
        let (addr, mut rx) = start(&node, &rt);
        let t = task(TaskState::Running);
        for _ in 0..5 {
            addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
        }
        wait_state(&mut rx, &t.id, TaskState::Preparing).await;
        // Several polls go by while the pull hangs.
        wait_for("a few lists", || rt.calls().iter().filter(|c| **c == Call::List).count() >= 4).await;
        let pulls = rt.calls().iter().filter(|c| matches!(c, Call::EnsureImage(_))).count();
        assert_eq!(pulls, 1);
        rt.hold_pulls(false);
        wait_state(&mut rx, &t.id, TaskState::Running).await;
    }

    #[actix::test]
    async fn desired_shutdown_stops_with_the_grace() {
        let node = NodeId::random();
        let rt = Arc::new(FakeRuntime::new().with_image(IMAGE));
        let (addr, mut rx) = start(&node, &rt);
        let mut t = task(TaskState::Running);
        addr.do_send(Assign { full: true, tasks: vec![t.clone()], removed: vec![] });
        let cid = wait_state(&mut rx, &t.id, TaskState::Running).await.pop().and_then(|s| s.container_id);
        t.desired_state = TaskState::Shutdown;
        t.status.state = TaskState::Running;
        addr.do_send(Assign { full: false, tasks: vec![t.clone()], removed: vec![] });
        wait_state(&mut rx, &t.id, TaskState::Shutdown).await;
        assert!(rt.calls().contains(&Call::Stop(cid.expect("cid"), 1_000)));
    }

    #[actix::test]
    async fn adopts_running_containers_and_removes_strays_only_after_a_full_set() {
        let node = NodeId::random();
        let rt = Arc::new(FakeRuntime::new().with_image(IMAGE));
        let mut kept = task(TaskState::Running);
        kept.status.state = TaskState::Running;
        let stray = task(TaskState::Running);
        let kept_cid = rt.insert_running(&node, &kept);
        let stray_cid = rt.insert_running(&node, &stray);

        let (addr, mut rx) = start(&node, &rt);
        // Before any full set, a delta must not cost the stray its life.
        addr.do_send(Assign { full: false, tasks: vec![kept.clone()], removed: vec![] });
        wait_for("a few lists", || rt.calls().iter().filter(|c| **c == Call::List).count() >= 3).await;
        assert_eq!(rt.containers().len(), 2);

        addr.do_send(Assign { full: true, tasks: vec![kept.clone()], removed: vec![] });
        wait_for("the stray to go", || rt.containers().len() == 1).await;
        assert_eq!(rt.containers()[0].id, kept_cid);
        assert!(rt.calls().contains(&Call::Stop(stray_cid.clone(), 1_000)));
        assert!(!rt.calls().iter().any(|c| matches!(c, Call::CreateAndStart(_))));
        // Adopted as it was: nothing new to say about it.
        assert!(rx.try_recv().is_err());
    }

    #[actix::test]
    async fn logs_pass_through() {
        let node = NodeId::random();
        let rt = Arc::new(FakeRuntime::new().with_image(IMAGE));
        let t = task(TaskState::Running);
        let cid = rt.insert_running(&node, &t);
        rt.push_log(&cid, "2024-05-01T12:00:00.000000001Z", "one");
        rt.push_log(&cid, "2024-05-01T12:00:00.000000002Z", "two");
        let (addr, _rx) = start(&node, &rt);
        let lines: Vec<_> = addr
            .send(Logs { task_id: t.id.clone(), follow: false, tail: Some(1) })
            .await
            .expect("mailbox")
            .expect("logs")
            .collect()
            .await;
        let lines: Vec<_> = lines.into_iter().map(|l| l.expect("line").line).collect();
        assert_eq!(lines, vec!["two"]);
        let missing = addr.send(Logs { task_id: TaskId::random(), follow: false, tail: None }).await.expect("mailbox");
        assert!(matches!(missing, Err(RuntimeError::NotFound(_))));
    }
}
