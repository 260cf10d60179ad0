//! [`Runtime`] on the local Docker engine, through bollard 0.21.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount as DockerMount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};

use common::ids::{NodeId, TaskId};
use common::task::Task;
use common::wire::LogLine;

use super::{
    container_name, parse_rfc3339_ms, split_timestamp, task_labels, ContainerInfo, ContainerState,
    EventStream, LogStream, Runtime, RuntimeError, LABEL_NODE, LABEL_STOP_GRACE, LABEL_TASK,
};

/// How many containers `list` inspects at once.
const INSPECT_CONCURRENCY: usize = 8;

pub struct DockerRuntime {
    docker: Docker,
    /// Inspect results by (container id, state as listed): a container is
    /// inspected once per state it is seen in, not on every list.
    inspected: Mutex<HashMap<(String, ContainerState), ContainerInfo>>,
}

impl DockerRuntime {
    /// Connects as `docker` would (`DOCKER_HOST`, else the local socket) and
    /// settles the API version with the engine.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_defaults().map_err(map_err)?;
        Self::with_client(docker).await
    }

    pub async fn with_client(docker: Docker) -> Result<Self, RuntimeError> {
        let docker = docker.negotiate_version().await.map_err(map_err)?;
        Ok(DockerRuntime {
            docker,
            inspected: Mutex::new(HashMap::new()),
        })
    }

    /// The bollard client, for callers that need more than the trait offers
    /// (tests, port inspection).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, ContainerState), ContainerInfo>> {
        self.inspected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok(None)`: removed since it was listed. Any other failure fails the
    /// whole list: a container missing from a list reads as "gone", which
    /// would fail its task.
    async fn inspect(
        &self,
        id: String,
        task_id: TaskId,
        listed: ContainerState,
        grace: Option<u64>,
    ) -> Result<Option<ContainerInfo>, RuntimeError> {
        let key = (id.clone(), listed);
        if let Some(hit) = self.cache().get(&key) {
            return Ok(Some(hit.clone()));
        }
        let info = match self
            .docker
            .inspect_container(&id, None)
            .await
            .map_err(map_err)
        {
            Ok(i) => i,
            Err(RuntimeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = info.state.unwrap_or_default();
        let current = state
            .status
            .map(|s| ContainerState::parse(s.as_ref()))
            .unwrap_or(listed);
        let out = ContainerInfo {
            container_id: id,
            task_id,
            state: current,
            exit_code: if current.has_exited() {
                state.exit_code
            } else {
                None
            },
            started_at: state.started_at.as_deref().and_then(parse_rfc3339_ms),
            finished_at: if current.has_exited() {
                state.finished_at.as_deref().and_then(parse_rfc3339_ms)
            } else {
                None
            },
            stop_grace_ms: grace,
        };
        self.cache().insert(key, out.clone());
        Ok(Some(out))
    }
}

/// `busybox` pulls all tags of busybox; Docker's CLI means `busybox:latest`.
fn has_tag_or_digest(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.contains(':') || image.contains('@')
}

fn map_err(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict(message),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Docker {
            status: status_code,
            message,
        },
        BollardError::DockerStreamError { error } => RuntimeError::Docker {
            status: 500,
            message: error,
        },
        e @ (BollardError::RequestTimeoutError
        | BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::SocketNotFoundError(_)) => RuntimeError::Unavailable(e.to_string()),
        e => RuntimeError::Other(e.to_string()),
    }
}

fn container_body(node: &NodeId, task: &Task) -> ContainerCreateBody {
    let spec = &task.spec;
    let mounts: Vec<DockerMount> = spec
        .mounts
        .iter()
        .map(|m| DockerMount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(m.readonly),
            ..Default::default()
        })
        .collect();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(spec.env.clone()),
        labels: Some(task_labels(node, task)),
        // So that a hand-run `docker stop` honours the service's grace too.
        stop_timeout: Some(grace_secs(spec.stop_grace_ms) as i64),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Docker counts the grace in whole seconds: round up, so a grace is never
/// cut short.
fn grace_secs(ms: u64) -> i32 {
    ms.div_ceil(1000).min(i32::MAX as u64) as i32
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(map_err(e)),
        }
        tracing::info!(image, "pulling image");
        let mut opts = CreateImageOptionsBuilder::new().from_image(image);
        if !has_tag_or_digest(image) {
            opts = opts.tag("latest");
        }
        let pulled: Result<Vec<_>, _> = self
            .docker
            .create_image(Some(opts.build()), None, None)
            .try_collect()
            .await;
        match pulled.map_err(map_err) {
            Ok(_) => Ok(()),
            Err(e @ RuntimeError::Unavailable(_)) => Err(e),
            Err(e) => Err(RuntimeError::Image {
                image: image.to_string(),
                message: e.message(),
            }),
        }
    }

    async fn create_and_start(&self, node: &NodeId, task: &Task) -> Result<String, RuntimeError> {
        let name = container_name(task);
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(opts), container_body(node, task))
            .await
            .map_err(map_err)?;
        for w in created.warnings.iter().filter(|w| !w.is_empty()) {
            tracing::warn!(container = %name, warning = %w, "docker warning on create");
        }
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(map_err)?;
        Ok(created.id)
    }

    async fn list(&self, node: &NodeId) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={node}")])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(map_err)?;
        let wanted: Vec<_> = summaries
            .into_iter()
            .filter_map(|s| {
                let id = s.id?;
                let labels = s.labels.unwrap_or_default();
                // Carries our node label but no task: not ours to judge.
                let task_id = TaskId::from(labels.get(LABEL_TASK)?.as_str());
                let grace = labels.get(LABEL_STOP_GRACE).and_then(|g| g.parse().ok());
                let state = s
                    .state
                    .map(|st| ContainerState::parse(st.as_ref()))
                    .unwrap_or(ContainerState::Unknown);
                Some((id, task_id, state, grace))
            })
            .collect();
        // Forget inspections of containers that are gone.
        self.cache()
            .retain(|(id, _), _| wanted.iter().any(|(w, ..)| w == id));
        let out = futures::stream::iter(wanted)
            .map(|(id, task, state, grace)| self.inspect(id, task, state, grace))
            .buffer_unordered(INSPECT_CONCURRENCY)
            .try_filter_map(|c| async move { Ok(c) })
            .try_collect::<Vec<_>>()
            .await?;
        Ok(out)
    }

    async fn stop(&self, container_id: &str, grace_ms: u64) -> Result<(), RuntimeError> {
        let t = grace_secs(grace_ms);
        let opts = StopContainerOptionsBuilder::new().t(t).build();
        // Docker answers only once the container has stopped: allow the
        // whole grace plus slack, whatever the client's usual timeout.
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(t as u64 + 60));
        docker
            .stop_container(container_id, Some(opts))
            .await
            .map_err(map_err)
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        self.docker
            .remove_container(container_id, Some(opts))
            .await
            .map_err(map_err)
    }

    fn logs(
        &self,
        task_id: &TaskId,
        container_id: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> LogStream {
        let tail = tail
            .map(|n| n.to_string())
            .unwrap_or_else(|| "all".to_string());
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(follow)
            .tail(&tail)
            .build();
        let task_id = task_id.clone();
        self.docker
            .logs(container_id, Some(opts))
            .map(move |item| match item {
                Ok(out) => {
                    let text = String::from_utf8_lossy(out.as_ref()).into_owned();
                    let lines: Vec<_> = text
                        .split_terminator('\n')
                        .map(|l| {
                            let l = l.strip_suffix('\r').unwrap_or(l);
                            let (ts, line) = split_timestamp(l);
                            Ok(LogLine {
                                task_id: task_id.clone(),
                                timestamp: ts.to_string(),
                                line: line.to_string(),
                            })
                        })
                        .collect();
                    futures::stream::iter(lines)
                }
                Err(e) => futures::stream::iter(vec![Err(map_err(e))]),
            })
            .flatten()
            .boxed()
    }

    fn events(&self, node: &NodeId) -> EventStream {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{LABEL_NODE}={node}")]),
        ]);
        let opts = EventsOptionsBuilder::new().filters(&filters).build();
        self.docker
            .events(Some(opts))
            .map_ok(|_| ())
            .map_err(map_err)
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(!has_tag_or_digest("busybox"));
        assert!(has_tag_or_digest("shoal/busybox:latest"));
        assert!(!has_tag_or_digest("localhost:5000/busybox"));
        assert!(has_tag_or_digest("localhost:5000/busybox:1"));
        assert!(has_tag_or_digest("busybox@sha256:abc"));
    }

    #[test]
    fn grace_rounds_up_to_seconds() {
        assert_eq!(grace_secs(0), 0);
        assert_eq!(grace_secs(1), 1);
        assert_eq!(grace_secs(1000), 1);
        assert_eq!(grace_secs(10_500), 11);
    }
}
