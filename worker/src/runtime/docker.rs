//! [`Runtime`] on the local Docker engine, through bollard 0.21.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HealthStatusEnum, HostConfig, HostConfigIsolationEnum, HostConfigLogConfig,
    Mount as DockerMount, MountBindOptions, MountTmpfsOptions, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, PortBinding, PortMap, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};

use common::container::{Health, HealthCheck, Isolation, Mount, MountType as MountKind, RegistryAuth};
use common::ids::{NodeId, TaskId};
use common::mesh::{HostPort, Protocol, PublishMode};
use common::spec::{expand_template, TemplateContext};
use common::task::Task;
use common::wire::{LogLine, OutputStream};

use super::{
    container_name, parse_rfc3339_ms, split_timestamp, task_labels, ContainerInfo, ContainerState, EventStream,
    Labelled, LogStream, Runtime, RuntimeError, LABEL_NODE, LABEL_TASK,
};

use super::files::{FilesError, TaskFiles};

/// How many containers `list` inspects at once.
const INSPECT_CONCURRENCY: usize = 8;

pub struct DockerRuntime {
    docker: Docker,
    /// The node's advertise address: task ports are published there only.
    /// `None`: on every address (Docker's default), which several nodes
    /// sharing one machine cannot do for host-mode ports.
    host_ip: Option<IpAddr>,
    /// The node's hostname, for `{{.Node.Hostname}}` in templates.
    node_hostname: String,
    /// Inspect results by (container id, state and health as listed): a
    /// container is inspected once per state it is seen in, not on every list.
    inspected: Mutex<HashMap<(String, Listed), ContainerInfo>>,
    /// Where tasks' secrets and configs are written for Docker to mount;
    /// `None`: a task that has any fails.
    files: Option<Arc<TaskFiles>>,
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
            host_ip: None,
            node_hostname: String::new(),
            inspected: Mutex::new(HashMap::new()),
            files: None,
        })
    }

    /// The node's hostname, for `{{.Node.Hostname}}` in task templates.
    pub fn node_hostname(mut self, hostname: &str) -> Self {
        self.node_hostname = hostname.to_string();
        self
    }

    /// Mounts tasks' secrets and configs from `files`.
    pub fn task_files(mut self, files: Arc<TaskFiles>) -> Self {
        self.files = Some(files);
        self
    }

    /// Publishes task ports on `ip` (the node's advertise address) instead
    /// of on every address.
    /// The engine's labels (`dockerd --label`), for `engine.labels.*`
    /// constraints; none if Docker does not say.
    pub async fn engine_labels(&self) -> std::collections::BTreeMap<String, String> {
        match self.docker.info().await {
            Ok(info) => info
                .labels
                .unwrap_or_default()
                .iter()
                .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the engine's labels");
                Default::default()
            }
        }
    }

    pub fn publish_on(mut self, ip: IpAddr) -> Self {
        self.host_ip = Some(ip);
        self
    }

    /// The bollard client, for callers that need more than the trait offers
    /// (tests, port inspection).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Listed), ContainerInfo>> {
        self.inspected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok(None)`: removed since it was listed. Any other failure fails the
    /// whole list: a container missing from a list reads as "gone", which
    /// would fail its task.
    async fn inspect(
        &self,
        id: String,
        task_id: TaskId,
        listed: Listed,
        labelled: Labelled,
    ) -> Result<Option<ContainerInfo>, RuntimeError> {
        let key = (id.clone(), listed);
        let listed = listed.0;
        if let Some(hit) = self.cache().get(&key) {
            return Ok(Some(hit.clone()));
        }
        let info = match self.docker.inspect_container(&id, None).await.map_err(map_err) {
            Ok(i) => i,
            Err(RuntimeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = info.state.unwrap_or_default();
        let current = state.status.map(|s| ContainerState::parse(s.as_ref())).unwrap_or(listed);
        let (health, health_output) = match state.health.filter(|_| current.is_live()) {
            Some(h) => {
                let last = h.log.as_ref().and_then(|l| l.last()).and_then(|r| r.output.clone());
                let status = match h.status {
                    Some(HealthStatusEnum::STARTING) => Some(Health::Starting),
                    Some(HealthStatusEnum::HEALTHY) => Some(Health::Healthy),
                    Some(HealthStatusEnum::UNHEALTHY) => Some(Health::Unhealthy),
                    _ => None,
                };
                (status, last)
            }
            None => (None, None),
        };
        let out = ContainerInfo {
            container_id: id,
            task_id,
            state: current,
            exit_code: if current.has_exited() { state.exit_code } else { None },
            started_at: state.started_at.as_deref().and_then(parse_rfc3339_ms),
            finished_at: if current.has_exited() {
                state.finished_at.as_deref().and_then(parse_rfc3339_ms)
            } else {
                None
            },
            stop_grace_ms: labelled.stop_grace_ms,
            service_id: labelled.service_id,
            slot: labelled.slot,
            log_retention_ms: labelled.log_retention_ms,
            address: info.network_settings.as_ref().filter(|_| current.is_live()).and_then(single_address),
            ports: info.network_settings.and_then(|n| n.ports).map(|p| host_ports(&p)).unwrap_or_default(),
            health,
            health_output,
        };
        self.cache().insert(key, out.clone());
        Ok(Some(out))
    }
}

/// A container as listed: its state and the health its status text shows.
type Listed = (ContainerState, Option<Health>);

/// The health in a listed container's status text (`Up 5 seconds
/// (healthy)`, `(unhealthy)`, `(health: starting)`): a change of it makes
/// the container worth inspecting again.
fn listed_health(status: &str) -> Option<Health> {
    if status.ends_with("(healthy)") {
        Some(Health::Healthy)
    } else if status.ends_with("(unhealthy)") {
        Some(Health::Unhealthy)
    } else if status.ends_with("(health: starting)") {
        Some(Health::Starting)
    } else {
        None
    }
}

/// Docker's HealthConfig for a task's health check.
fn health_config(h: &HealthCheck) -> HealthConfig {
    let ns = |n: u64| (n > 0).then(|| i64::try_from(n).unwrap_or(i64::MAX));
    HealthConfig {
        test: (!h.test.is_empty()).then(|| h.test.clone()),
        interval: ns(h.interval_ns),
        timeout: ns(h.timeout_ns),
        retries: ns(h.retries),
        start_period: ns(h.start_period_ns),
        start_interval: ns(h.start_interval_ns),
    }
}

/// `busybox` pulls all tags of busybox; Docker's CLI means `busybox:latest`.
fn has_tag_or_digest(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.contains(':') || image.contains('@')
}

fn map_err(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError { status_code: 404, message } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError { status_code: 409, message } => RuntimeError::Conflict(message),
        BollardError::DockerResponseServerError { status_code, message } => {
            RuntimeError::Docker { status: status_code, message }
        }
        BollardError::DockerStreamError { error } => RuntimeError::Docker { status: 500, message: error },
        e @ (BollardError::RequestTimeoutError
        | BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::SocketNotFoundError(_)) => RuntimeError::Unavailable(e.to_string()),
        e => RuntimeError::Other(e.to_string()),
    }
}

/// `80/tcp`, as Docker keys exposed ports and port maps.
fn port_key(protocol: Protocol, target: u16) -> String {
    format!("{target}/{protocol}")
}

/// The bindings of every published target: ingress ports at an ephemeral
/// host port, host-mode ports at their published number (ephemeral if none
/// was given), on `host_ip` if set.
fn port_bindings(task: &Task, host_ip: Option<IpAddr>) -> PortMap {
    let mut map = PortMap::new();
    for pc in &task.spec.ports {
        let host_port = match pc.mode {
            PublishMode::Ingress => None,
            PublishMode::Host => pc.published.map(|p| p.to_string()),
        };
        let binding = PortBinding { host_ip: host_ip.map(|ip| ip.to_string()), host_port };
        map.entry(port_key(pc.protocol, pc.target))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
    }
    map
}

/// The host ports of an inspected container's port map, one per
/// (protocol, target): Docker lists an IPv4 and an IPv6 binding for a port
/// published on every address, and they share the number.
fn host_ports(map: &PortMap) -> Vec<HostPort> {
    let mut out: Vec<HostPort> = map
        .iter()
        .filter_map(|(key, bindings)| {
            let (target, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            let protocol: Protocol = proto.parse().ok()?;
            let target: u16 = target.parse().ok()?;
            let host_port = bindings.iter().flatten().find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())?;
            Some(HostPort { protocol, target, host_port })
        })
        .collect();
    out.sort();
    out
}

/// The container's address if it is on exactly one network (not the
/// host's): Docker maps its published ports to that address. With several
/// networks which one carries the mapping depends on the engine's version,
/// so the mesh goes through the host port as before.
fn single_address(n: &bollard::models::NetworkSettings) -> Option<IpAddr> {
    let nets = n.networks.as_ref()?;
    let [ep] = nets.values().collect::<Vec<_>>()[..] else { return None };
    ep.ip_address.as_deref().filter(|a| !a.is_empty())?.parse().ok()
}

/// Host-mode ports must be free on this node. Docker's own check misses a
/// port held by a process outside Docker when its userland proxy is off, and
/// its message names neither the task nor the mode: try to bind first.
fn check_host_ports(task: &Task, host_ip: Option<IpAddr>) -> Result<(), RuntimeError> {
    let ip = host_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    for pc in &task.spec.ports {
        let (PublishMode::Host, Some(port)) = (pc.mode, pc.published) else {
            continue;
        };
        let addr = SocketAddr::new(ip, port);
        let bound = match pc.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
            Protocol::Udp => std::net::UdpSocket::bind(addr).map(drop),
        };
        if let Err(e) = bound {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(port_in_use(pc.protocol, addr));
            }
            // Not ours to bind (another host's address in a test, say):
            // let Docker judge.
            tracing::debug!(%addr, error = %e, "host port pre-check skipped");
        }
    }
    Ok(())
}

fn port_in_use(protocol: Protocol, addr: SocketAddr) -> RuntimeError {
    RuntimeError::PortInUse(format!("host port {addr}/{protocol} is already in use on this node"))
}

/// Docker's words for a host port it could not bind ("port is already
/// allocated", "bind: address already in use").
fn is_port_conflict(message: &str) -> bool {
    message.contains("port is already allocated") || message.contains("address already in use")
}

/// Swarm's `IP HOSTNAME [ALIAS…]` hosts line as Docker's `HOSTNAME:IP`
/// (aliases become lines of their own).
fn extra_host(line: &str) -> Option<Vec<String>> {
    let mut words = line.split_whitespace();
    let ip = words.next()?;
    let names: Vec<String> = words.map(|n| format!("{n}:{ip}")).collect();
    (!names.is_empty()).then_some(names)
}

/// A login as bollard sends it (Docker's X-Registry-Auth).
fn credentials(a: &RegistryAuth) -> bollard::auth::DockerCredentials {
    bollard::auth::DockerCredentials {
        username: Some(a.username.clone()),
        password: Some(a.password.clone()),
        serveraddress: Some(a.server_address.clone()),
        ..Default::default()
    }
}

fn container_body(node: &NodeId, node_hostname: &str, task: &Task, host_ip: Option<IpAddr>) -> ContainerCreateBody {
    let spec = &task.spec;
    let c = &spec.container;
    let (task_id, node_id) = (task.id.to_string(), node.to_string());
    let task_name = container_name(task);
    let cx = TemplateContext {
        service_id: task.service_id.as_str(),
        service_name: &task.service_name,
        task_id: &task_id,
        task_name: &task_name,
        slot: task.slot,
        node_id: &node_id,
        node_hostname,
    };
    let mounts = docker_mounts(task, &cx);
    let mut labels: HashMap<String, String> = c.labels.clone().into_iter().collect();
    labels.extend(task_labels(node, task));
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let limit = |n: u64| (n > 0).then(|| i64::try_from(n).unwrap_or(i64::MAX));
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(spec.env.iter().map(|e| expand_template(e, &cx)).collect()),
        labels: Some(labels),
        hostname: c.hostname.as_ref().map(|h| expand_template(h, &cx)),
        user: c.user.clone(),
        working_dir: c.workdir.clone(),
        tty: c.tty.then_some(true),
        stop_signal: c.stop_signal.clone(),
        healthcheck: c.healthcheck.as_ref().map(health_config),
        exposed_ports: (!task.spec.ports.is_empty())
            .then(|| task.spec.ports.iter().map(|pc| port_key(pc.protocol, pc.target)).collect()),
        // So that a hand-run `docker stop` honours the service's grace too.
        stop_timeout: Some(grace_secs(spec.stop_grace_ms) as i64),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            port_bindings: (!task.spec.ports.is_empty()).then(|| port_bindings(task, host_ip)),
            init: c.init,
            readonly_rootfs: c.read_only.then_some(true),
            group_add: some_vec(&c.groups),
            cap_add: some_vec(&c.cap_add),
            cap_drop: some_vec(&c.cap_drop),
            sysctls: (!c.sysctls.is_empty()).then(|| c.sysctls.clone().into_iter().collect()),
            dns: dns_servers(task).or_else(|| some_vec(&c.dns)),
            dns_search: some_vec(&c.dns_search),
            dns_options: some_vec(&c.dns_options),
            extra_hosts: (!c.hosts.is_empty())
                .then(|| c.hosts.iter().filter_map(|h| extra_host(h)).flatten().collect()),
            nano_cpus: limit(spec.limits.nano_cpus),
            memory: limit(spec.limits.memory_bytes),
            // Swarm passes a memory reservation to Docker as a soft limit.
            memory_reservation: limit(spec.scheduling.reservations.memory_bytes),
            pids_limit: limit(spec.limits.pids),
            ulimits: (!c.ulimits.is_empty()).then(|| {
                c.ulimits
                    .iter()
                    .map(|u| ResourcesUlimits { name: Some(u.name.clone()), soft: Some(u.soft), hard: Some(u.hard) })
                    .collect()
            }),
            log_config: c.log_driver.as_ref().map(|d| HostConfigLogConfig {
                typ: Some(d.name.clone()),
                config: (!d.options.is_empty()).then(|| d.options.clone().into_iter().collect()),
            }),
            network_mode: network_mode(task),
            isolation: c.isolation.map(|i| match i {
                Isolation::Default => HostConfigIsolationEnum::DEFAULT,
                Isolation::Process => HostConfigIsolationEnum::PROCESS,
                Isolation::Hyperv => HostConfigIsolationEnum::HYPERV,
            }),
            // As Swarm's executor does; Docker on Linux refuses it.
            security_opt: c.credential_spec.as_ref().map(|cs| vec![cs.security_opt()]),
            ..Default::default()
        }),
        networking_config: networking_config(task),
        ..Default::default()
    }
}

/// Every mount of a task's container, as Docker takes them: the spec's
/// mounts with templates expanded in their source and target.
fn docker_mounts(task: &Task, cx: &TemplateContext) -> Vec<DockerMount> {
    task.spec.mounts.iter().map(|m| docker_mount(m, cx)).collect()
}

fn docker_mount(m: &Mount, cx: &TemplateContext) -> DockerMount {
    let source = expand_template(&m.source, cx);
    let some_map = |m: &std::collections::BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>())
    };
    DockerMount {
        target: Some(expand_template(&m.target, cx)),
        // An empty volume source: an anonymous volume.
        source: (!source.is_empty()).then_some(source),
        typ: Some(match m.kind {
            MountKind::Bind => MountType::BIND,
            MountKind::Volume => MountType::VOLUME,
            MountKind::Tmpfs => MountType::TMPFS,
        }),
        read_only: Some(m.readonly),
        bind_options: m
            .bind_propagation
            .as_deref()
            .map(|p| MountBindOptions { propagation: p.parse().ok(), ..Default::default() }),
        volume_options: m.volume.as_ref().map(|v| MountVolumeOptions {
            no_copy: v.nocopy.then_some(true),
            labels: some_map(&v.labels),
            driver_config: (v.driver.is_some() || !v.driver_opts.is_empty())
                .then(|| MountVolumeOptionsDriverConfig { name: v.driver.clone(), options: some_map(&v.driver_opts) }),
            ..Default::default()
        }),
        tmpfs_options: m.tmpfs.as_ref().map(|t| MountTmpfsOptions {
            size_bytes: (t.size_bytes > 0).then(|| i64::try_from(t.size_bytes).unwrap_or(i64::MAX)),
            mode: t.mode.map(i64::from),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A task on a shoal network asks its node's resolver, on its first
/// network's gateway (Docker's embedded resolver in the container forwards
/// to it), unless the spec names its own servers.
fn dns_servers(task: &Task) -> Option<Vec<String>> {
    let c = &task.spec.container;
    if !c.dns.is_empty() {
        return None;
    }
    task.addresses.first().map(|a| vec![a.gateway().to_string()])
}

/// `host`, or the Docker network of the task's first network.
fn network_mode(task: &Task) -> Option<String> {
    if task.spec.networks.iter().any(|n| n.network == common::network::HOST_NETWORK) {
        return Some("host".into());
    }
    task.addresses.first().map(|a| a.docker_network())
}

/// The task's address on its first network (Docker's API before 1.44
/// takes one network at create; the others are connected before start).
fn networking_config(task: &Task) -> Option<bollard::models::NetworkingConfig> {
    let a = task.addresses.first()?;
    Some(bollard::models::NetworkingConfig {
        endpoints_config: Some([(a.docker_network(), endpoint(task, a))].into_iter().collect()),
    })
}

/// The task's endpoint on one network: its address and its aliases there.
fn endpoint(task: &Task, a: &common::network::TaskAddress) -> bollard::models::EndpointSettings {
    let aliases = task.spec.networks.iter().find(|n| n.network == a.name).map(|n| n.aliases.clone());
    bollard::models::EndpointSettings {
        ipam_config: Some(bollard::models::EndpointIpamConfig {
            ipv4_address: Some(a.addr.to_string()),
            ..Default::default()
        }),
        aliases,
        ..Default::default()
    }
}

/// Docker counts the grace in whole seconds: round up, so a grace is never
/// cut short.
fn grace_secs(ms: u64) -> i32 {
    ms.div_ceil(1000).min(i32::MAX as u64) as i32
}

impl DockerRuntime {
    /// A task on several networks: each network's VIPs through that
    /// network's gateway (see [`crate::net::link::route_vips`]). A failure
    /// only costs the task those VIPs, so it is logged, not fatal.
    async fn route_vips(&self, id: &str, task: &Task) {
        let pid = match self.docker.inspect_container(id, None).await {
            Ok(c) => c.state.and_then(|s| s.pid).filter(|p| *p > 0),
            Err(_) => None,
        };
        // A directly routed network's other blocks go through its gateway too.
        let direct = task.addresses.iter().filter(|a| !a.routing.is_vxlan()).map(|a| (a.range, a.gateway()));
        let routes: Vec<_> = task.addresses.iter().map(|a| (a.vip_range(), a.gateway())).chain(direct).collect();
        let done = match pid {
            Some(pid) => crate::net::link::route_vips(pid, &routes).await,
            None => Err(crate::net::NetError::Link("no process to route in".into())),
        };
        if let Err(e) = done {
            tracing::warn!(task = %task.id, error = %e, "vip: a task on several networks may not reach their VIPs");
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ensure_image(&self, image: &str, auth: Option<&RegistryAuth>) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(map_err(e)),
        }
        tracing::info!(image, "pulling image");
        let mut opts = CreateImageOptionsBuilder::new().from_image(image);
        if !has_tag_or_digest(image) {
            opts = opts.tag("latest");
        }
        let pulled: Result<Vec<_>, _> =
            self.docker.create_image(Some(opts.build()), None, auth.map(credentials)).try_collect().await;
        match pulled.map_err(map_err) {
            Ok(_) => Ok(()),
            Err(e @ RuntimeError::Unavailable(_)) => Err(e),
            Err(e) => Err(RuntimeError::Image { image: image.to_string(), message: e.message() }),
        }
    }

    async fn create_and_start(&self, node: &NodeId, task: &Task) -> Result<String, RuntimeError> {
        let name = container_name(task);
        check_host_ports(task, self.host_ip)?;
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let mut body = container_body(node, &self.node_hostname, task, self.host_ip);
        let files = match &self.files {
            Some(f) => f.materialise(task),
            None if task.spec.secrets.is_empty() && task.spec.configs.is_empty() => Ok(vec![]),
            None => Err(FilesError::NoTmpfs("this node keeps no task files".into())),
        };
        let files = files.map_err(|e| RuntimeError::Other(e.to_string()))?;
        if let Some(hc) = body.host_config.as_mut() {
            hc.mounts.get_or_insert_with(Vec::new).extend(files.into_iter().map(|f| DockerMount {
                source: Some(f.source.to_string_lossy().into_owned()),
                target: Some(f.target),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }));
        }
        // The Docker network of each of its networks, before the container.
        for a in &task.addresses {
            let net = crate::net::docker::DockerNetwork::of_task(a);
            crate::net::docker::ensure(&self.docker, node, &a.docker_network(), &net)
                .await
                .map_err(|e| RuntimeError::Docker { status: 500, message: e.to_string() })?;
        }
        let created = self.docker.create_container(Some(opts), body).await.map_err(map_err)?;
        for w in created.warnings.iter().filter(|w| !w.is_empty()) {
            tracing::warn!(container = %name, warning = %w, "docker warning on create");
        }
        // Its other networks, before it starts (a failure leaves no
        // container behind).
        for a in task.addresses.iter().skip(1) {
            let connect = bollard::models::NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint(task, a)),
            };
            if let Err(e) = self.docker.connect_network(&a.docker_network(), connect).await {
                let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = self.docker.remove_container(&created.id, Some(opts)).await;
                return Err(map_err(e));
            }
        }
        match self.docker.start_container(&created.id, None::<StartContainerOptions>).await.map_err(map_err) {
            Ok(()) => {
                if task.addresses.len() > 1 {
                    self.route_vips(&created.id, task).await;
                }
                Ok(created.id)
            }
            // Lost a race for a host port to someone else: say which port
            // and why, and do not retry (the port stays taken).
            Err(RuntimeError::Docker { message, .. }) if is_port_conflict(&message) => Err(RuntimeError::PortInUse(
                format!("a host port of this task is already in use on this node: {message}"),
            )),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, node: &NodeId) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={node}")])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let summaries = self.docker.list_containers(Some(opts)).await.map_err(map_err)?;
        let wanted: Vec<_> = summaries
            .into_iter()
            .filter_map(|s| {
                let id = s.id?;
                let labels = s.labels.unwrap_or_default();
                // Carries our node label but no task: not ours to judge.
                let task_id = TaskId::from(labels.get(LABEL_TASK)?.as_str());
                let labelled = Labelled::read(&labels);
                let state = s.state.map(|st| ContainerState::parse(st.as_ref())).unwrap_or(ContainerState::Unknown);
                let health = s.status.as_deref().and_then(listed_health);
                Some((id, task_id, (state, health), labelled))
            })
            .collect();
        // Forget inspections of containers that are gone.
        self.cache().retain(|(id, _), _| wanted.iter().any(|(w, ..)| w == id));
        let out = futures::stream::iter(wanted)
            .map(|(id, task, state, labelled)| self.inspect(id, task, state, labelled))
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
        let docker = self.docker.clone().with_timeout(Duration::from_secs(t as u64 + 60));
        docker.stop_container(container_id, Some(opts)).await.map_err(map_err)
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        self.docker.remove_container(container_id, Some(opts)).await.map_err(map_err)
    }

    fn logs(&self, task_id: &TaskId, container_id: &str, follow: bool, tail: Option<u64>) -> LogStream {
        let tail = tail.map(|n| n.to_string()).unwrap_or_else(|| "all".to_string());
        let opts =
            LogsOptionsBuilder::new().stdout(true).stderr(true).timestamps(true).follow(follow).tail(&tail).build();
        let task_id = task_id.clone();
        self.docker
            .logs(container_id, Some(opts))
            .map(move |item| match item {
                Ok(out) => {
                    let stream = match out {
                        LogOutput::StdErr { .. } => OutputStream::Stderr,
                        _ => OutputStream::Stdout,
                    };
                    let text = String::from_utf8_lossy(out.as_ref()).into_owned();
                    let lines: Vec<_> = text
                        .split_terminator('\n')
                        .map(|l| {
                            let l = l.strip_suffix('\r').unwrap_or(l);
                            let (ts, line) = split_timestamp(l);
                            Ok(LogLine {
                                task_id: task_id.clone(),
                                slot: None,
                                timestamp: ts.to_string(),
                                line: line.to_string(),
                                stream,
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
        let filters =
            HashMap::from([("type", vec!["container".to_string()]), ("label", vec![format!("{LABEL_NODE}={node}")])]);
        let opts = EventsOptionsBuilder::new().filters(&filters).build();
        self.docker.events(Some(opts)).map_ok(|_| ()).map_err(map_err).boxed()
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

    fn task_with_ports(ports: &[&str]) -> Task {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": "t1", "service_id": "s1", "service_name": "web", "slot": 1, "node_id": null,
            "spec": {"image": "i", "restart": {"condition": "any", "delay_ms": 0, "max_attempts": null}},
            "desired_state": "running",
            "status": {"state": "new", "timestamp": 0},
            "created_at": 0
        }))
        .expect("a minimal task");
        t.spec.ports = ports.iter().map(|p| p.parse().expect("port")).collect();
        t
    }

    #[test]
    fn ingress_ports_bind_ephemeral_host_ports_and_host_ports_their_number() {
        let t = task_with_ports(&["8080:80", "53:5353/udp", "published=9000,target=90,mode=host"]);
        let ip: IpAddr = "127.0.0.11".parse().unwrap();
        let map = port_bindings(&t, Some(ip));
        let b = |host_port: Option<&str>| {
            Some(vec![PortBinding { host_ip: Some("127.0.0.11".into()), host_port: host_port.map(String::from) }])
        };
        assert_eq!(map.len(), 3);
        assert_eq!(map["80/tcp"], b(None));
        assert_eq!(map["5353/udp"], b(None));
        assert_eq!(map["90/tcp"], b(Some("9000")));
        let body = container_body(&NodeId::from("n1"), "node1", &t, Some(ip));
        let mut exposed = body.exposed_ports.expect("exposed");
        exposed.sort();
        assert_eq!(exposed, vec!["5353/udp", "80/tcp", "90/tcp"]);
        // No ports, no port fields at all.
        let body = container_body(&NodeId::from("n1"), "node1", &task_with_ports(&[]), Some(ip));
        assert!(body.exposed_ports.is_none());
        assert!(body.host_config.and_then(|h| h.port_bindings).is_none());
    }

    #[test]
    fn host_ports_are_read_from_the_inspected_port_map() {
        let bind = |ip: &str, port: &str| PortBinding { host_ip: Some(ip.into()), host_port: Some(port.into()) };
        let map = PortMap::from([
            ("80/tcp".to_string(), Some(vec![bind("0.0.0.0", "32768"), bind("::", "32768")])),
            ("53/udp".to_string(), Some(vec![bind("127.0.0.11", "32769")])),
            // Exposed by the image but not published.
            ("443/tcp".to_string(), None),
            ("7/sctp".to_string(), Some(vec![bind("0.0.0.0", "32770")])),
        ]);
        assert_eq!(
            host_ports(&map),
            vec![
                HostPort { protocol: Protocol::Tcp, target: 80, host_port: 32768 },
                HostPort { protocol: Protocol::Udp, target: 53, host_port: 32769 },
            ]
        );
    }

    #[test]
    fn a_taken_host_port_is_refused_before_docker_is_asked() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let t = task_with_ports(&[&format!("published={port},target=80,mode=host")]);
        let err = check_host_ports(&t, Some("127.0.0.1".parse().unwrap())).unwrap_err();
        assert_eq!(err.to_string(), format!("host port 127.0.0.1:{port}/tcp is already in use on this node"));
        assert!(!err.is_retryable());
        // Ingress ports are ephemeral: nothing to check.
        let t = task_with_ports(&[&format!("{port}:80")]);
        assert!(check_host_ports(&t, Some("127.0.0.1".parse().unwrap())).is_ok());
        assert!(is_port_conflict("driver failed programming external connectivity on endpoint x: Bind for 127.0.0.11:8080 failed: port is already allocated"));
        assert!(is_port_conflict(
            "Error starting userland proxy: listen tcp4 127.0.0.11:8080: bind: address already in use"
        ));
    }

    #[test]
    fn health_shows_in_the_listed_status_and_the_check_reaches_the_body() {
        assert_eq!(listed_health("Up 5 seconds (healthy)"), Some(Health::Healthy));
        assert_eq!(listed_health("Up 1 second (health: starting)"), Some(Health::Starting));
        assert_eq!(listed_health("Up 2 minutes (unhealthy)"), Some(Health::Unhealthy));
        assert_eq!(listed_health("Up 2 minutes"), None);
        assert_eq!(listed_health("Exited (0) 3 seconds ago"), None);
        let mut t = task_with_ports(&[]);
        t.spec.container.healthcheck = Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval_ns: 1_000_000_000,
            retries: 2,
            ..Default::default()
        });
        let body = container_body(&NodeId::from("n1"), "node1", &t, None);
        assert_eq!(
            body.healthcheck,
            Some(HealthConfig {
                test: Some(vec!["CMD-SHELL".into(), "true".into()]),
                interval: Some(1_000_000_000),
                retries: Some(2),
                ..Default::default()
            })
        );
        // No check asked for: the image's own applies.
        assert!(container_body(&NodeId::from("n1"), "node1", &task_with_ports(&[]), None).healthcheck.is_none());
    }

    #[test]
    fn grace_rounds_up_to_seconds() {
        assert_eq!(grace_secs(0), 0);
        assert_eq!(grace_secs(1), 1);
        assert_eq!(grace_secs(1000), 1);
        assert_eq!(grace_secs(10_500), 11);
    }
}
