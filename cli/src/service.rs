//! `shoal service …`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use common::api::{LogEntry, RestartPatch, ServiceInfo, ServiceUpdate, TaskInfo, UpdateConfigPatch};
use common::constraint::Constraint;
use common::container::{CredentialSpec, Isolation};
use common::mesh::PortConfig;
use common::secret::{self, FileRef, Kind};
use common::spec::{
    parse_key_value, parse_label, parse_replicas, validate_env, ContainerOptions, FailureAction, Limits, Mount,
    RestartPolicy, ServiceMode, ServiceSpec, TaskTemplate, UpdateConfig,
};
use common::task::TaskState;
use common::time::{now_ms, parse_duration};
use common::wire::OutputStream;

use crate::client::{seg, Client};
use crate::container_flags::{ContainerArgs, CreateListArgs, UpdateListArgs};
use crate::list::ListFlags;
use crate::output;
use crate::placement::{PlacementFlags, PlacementUpdateFlags};
use crate::progress;

#[derive(Args)]
pub struct Detach {
    /// Exit once the change is committed instead of waiting for the service to converge.
    #[arg(short = 'd', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    detach: bool,
    /// Suppress progress output (still waits, unless --detach).
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Create a new service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls(ListFlags),
    /// List the tasks of one or more services.
    Ps {
        #[arg(required = true)]
        services: Vec<String>,
        #[arg(long)]
        no_trunc: bool,
        /// desired-state=running|shutdown|accepted
        #[arg(short, long)]
        filter: Vec<String>,
        #[command(flatten)]
        list: ListFlags,
    },
    /// Fetch the logs of a service's tasks, from every node.
    Logs {
        service: String,
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of each task's log.
        #[arg(short = 'n', long, allow_hyphen_values = true)]
        tail: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        #[arg(long)]
        no_trunc: bool,
        /// Only lines written since then: a duration (10m), an RFC 3339 time or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Leave the task ids out of the context.
        #[arg(long)]
        no_task_ids: bool,
        /// Show the service's and nodes' ids instead of their names.
        #[arg(long)]
        no_resolve: bool,
        /// The lines alone, without their context.
        #[arg(long)]
        raw: bool,
        /// Show extra details given to the logs (shoal's log lines carry none beyond the context).
        #[arg(long)]
        details: bool,
    },
    /// Scale one or more services: NAME=REPLICAS…
    Scale {
        #[arg(required = true)]
        targets: Vec<String>,
        #[command(flatten)]
        detach: Detach,
    },
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Restore the service's previous spec.
    Rollback {
        service: String,
        #[command(flatten)]
        detach: Detach,
    },
    /// Show details of one or more services.
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
        #[arg(long)]
        pretty: bool,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long)]
    name: Option<String>,
    /// Number of tasks (default 1); for a replicated job, the completions wanted.
    #[arg(long, allow_hyphen_values = true)]
    replicas: Option<String>,
    /// Number of job tasks to run concurrently (default equal to --replicas)
    #[arg(long, allow_hyphen_values = true)]
    max_concurrent: Option<String>,
    /// Accepted for docker's scripts: shoal never asks a registry for an
    /// image's digest, so images are always used as given.
    #[arg(long)]
    no_resolve_image: bool,
    /// Send registry authentication details to swarm agents (the login for
    /// the image's registry in the docker CLI's config.json)
    #[arg(long)]
    with_registry_auth: bool,
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long = "label")]
    label: Vec<String>,
    #[arg(long)]
    constraint: Vec<String>,
    #[arg(long)]
    mount: Vec<String>,
    /// Publish a port: PUBLISHED:TARGET[/udp], TARGET, or published=…,target=…,protocol=…,mode=ingress|host
    #[arg(short, long)]
    publish: Vec<String>,
    /// Service mode ("replicated", "global", "replicated-job", "global-job")
    #[arg(long, default_value = "replicated")]
    mode: String,
    #[command(flatten)]
    policies: PolicyFlags,
    /// Time to wait for a task to stop before killing it.
    #[arg(long, default_value = "10s")]
    stop_grace_period: String,
    /// How long a task's logs stay readable through `service logs` after the
    /// task is removed or replaced (its stopped container is kept; default 15m).
    #[arg(long)]
    log_retention: Option<String>,
    #[command(flatten)]
    container: ContainerFlags,
    #[command(flatten)]
    files: FileFlags,
    #[command(flatten)]
    placement: PlacementFlags,
    #[command(flatten)]
    more: ContainerArgs,
    #[command(flatten)]
    create_lists: CreateListArgs,
    #[command(flatten)]
    networks: crate::network::NetworkFlags,
    #[command(flatten)]
    detach: Detach,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// What `docker service create` passes to each container, same names.
#[derive(Args, Default)]
pub struct ContainerFlags {
    /// Container hostname; may use templates like {{.Service.Name}}-{{.Task.Slot}}
    #[arg(long)]
    hostname: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Set one or more supplementary user groups for the container
    #[arg(long)]
    group: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image (split at spaces)
    #[arg(long)]
    entrypoint: Option<String>,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    tty: bool,
    /// Use an init inside each service container to forward signals and reap processes
    #[arg(long)]
    init: bool,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    read_only: bool,
    /// Signal to stop the container
    #[arg(long)]
    stop_signal: Option<String>,
    /// Add Linux capabilities
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Sysctl options (KEY=VALUE)
    #[arg(long)]
    sysctl: Vec<String>,
    /// Set custom DNS servers
    #[arg(long)]
    dns: Vec<String>,
    /// Set custom DNS search domains
    #[arg(long)]
    dns_search: Vec<String>,
    /// Set DNS options
    #[arg(long)]
    dns_option: Vec<String>,
    /// Set one or more custom host-to-IP mappings (host:ip)
    #[arg(long)]
    host: Vec<String>,
    /// Container labels (KEY=VALUE)
    #[arg(long)]
    container_label: Vec<String>,
    /// Limit CPUs
    #[arg(long)]
    limit_cpu: Option<String>,
    /// Limit Memory (e.g. 64MiB, 1g)
    #[arg(long)]
    limit_memory: Option<String>,
    /// Limit maximum number of processes (default 0 = unlimited)
    #[arg(long)]
    limit_pids: Option<String>,
    /// Service container isolation mode (default, process or hyperv; Linux runs only default)
    #[arg(long)]
    isolation: Option<String>,
    /// Credential spec for managed service account (Windows only): file://…, registry://… or config://…
    #[arg(long, value_name = "credential-spec")]
    credential_spec: Option<String>,
}

impl ContainerFlags {
    fn options(&self) -> Result<(ContainerOptions, Limits)> {
        let sysctls = self
            .sysctl
            .iter()
            .map(|kv| {
                parse_key_value(kv)
                    .ok_or_else(|| anyhow!("invalid argument {kv:?} for \"--sysctl\" flag: expected KEY=VALUE"))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let hosts = self
            .host
            .iter()
            .map(|h| match h.split_once(':') {
                Some((name, ip)) if !name.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => {
                    Ok(format!("{ip} {name}"))
                }
                _ => Err(anyhow!("invalid argument {h:?} for \"--host\" flag: bad format for add-host: {h:?}")),
            })
            .collect::<Result<Vec<_>>>()?;
        let options = ContainerOptions {
            hostname: self.hostname.clone(),
            user: self.user.clone(),
            groups: self.group.clone(),
            workdir: self.workdir.clone(),
            tty: self.tty,
            init: self.init.then_some(true),
            read_only: self.read_only,
            stop_signal: self.stop_signal.clone(),
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            sysctls,
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            dns_options: self.dns_option.clone(),
            hosts,
            labels: parse_labels(&self.container_label)?,
            healthcheck: None,
            ulimits: vec![],
            log_driver: None,
            isolation: self.isolation.as_deref().map(|i| Isolation::parse_flag(i, "--isolation")).transpose()?,
            credential_spec: match self.credential_spec.as_deref() {
                Some(cs) => CredentialSpec::parse_flag(cs, "--credential-spec")?,
                None => None,
            },
        };
        let limits = Limits {
            nano_cpus: self.limit_cpu.as_deref().map(parse_cpus).transpose()?.unwrap_or(0),
            memory_bytes: self.limit_memory.as_deref().map(parse_memory).transpose()?.unwrap_or(0),
            pids: match self.limit_pids.as_deref() {
                Some(p) => p
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("invalid argument {p:?} for \"--limit-pids\" flag: expected a number"))?,
                None => 0,
            },
        };
        Ok((options, limits))
    }

    fn entrypoint(&self) -> Vec<String> {
        self.entrypoint.as_deref().map(|e| e.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
    }
}

/// `0.5`, `2` CPUs as nano-CPUs, exactly (no floating point).
fn parse_cpus(s: &str) -> Result<u64> {
    parse_cpus_for(s, "--limit-cpu")
}

/// [`parse_cpus`] for the flag `flag`.
pub(crate) fn parse_cpus_for(s: &str, flag: &str) -> Result<u64> {
    let bad = || anyhow!("invalid argument {s:?} for \"{flag}\" flag: expected a number of CPUs, e.g. 0.5");
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if frac.len() > 9 || (whole.is_empty() && frac.is_empty()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let frac: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
    whole.checked_mul(1_000_000_000).and_then(|w| w.checked_add(frac)).ok_or_else(bad)
}

/// `64m`, `64MiB`, `1.5g`, `1024` (bytes), as docker reads memory sizes
/// (powers of 1024).
fn parse_memory(s: &str) -> Result<u64> {
    parse_memory_for(s, "--limit-memory")
}

/// [`parse_memory`] for the flag `flag`.
pub(crate) fn parse_memory_for(s: &str, flag: &str) -> Result<u64> {
    let bad = || anyhow!("invalid argument {s:?} for \"{flag}\" flag: invalid size: '{s}'");
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[derive(Args)]
pub struct UpdateArgs {
    #[arg(long, allow_hyphen_values = true)]
    replicas: Option<String>,
    /// Number of job tasks to run concurrently (replicated-job only)
    #[arg(long, allow_hyphen_values = true)]
    max_concurrent: Option<String>,
    /// Send registry authentication details to swarm agents (for the new
    /// image, or the service's own)
    #[arg(long)]
    with_registry_auth: bool,
    #[arg(long)]
    image: Option<String>,
    /// Replace the command and arguments (one --args string, split on spaces).
    #[arg(long)]
    args: Option<String>,
    #[arg(long)]
    env_add: Vec<String>,
    #[arg(long)]
    env_rm: Vec<String>,
    #[arg(long)]
    label_add: Vec<String>,
    #[arg(long)]
    label_rm: Vec<String>,
    #[arg(long)]
    constraint_add: Vec<String>,
    #[arg(long)]
    constraint_rm: Vec<String>,
    /// Add a published port (same forms as create's --publish).
    #[arg(long)]
    publish_add: Vec<String>,
    /// Remove a published port by its target (TARGET[/udp]) or PUBLISHED:TARGET.
    #[arg(long)]
    publish_rm: Vec<String>,
    #[command(flatten)]
    policies: PolicyFlags,
    /// Roll every task, even if nothing changed.
    #[arg(long)]
    force: bool,
    /// How long a task's logs stay readable after the task goes (see create).
    #[arg(long)]
    log_retention: Option<String>,
    /// Move the fewest tasks needed to spread the service evenly over its
    /// nodes again (after a drain, or nodes that joined), as a rolling
    /// update with the service's update settings.
    #[arg(long)]
    rebalance: bool,
    /// Roll back to the previous specification (as `service rollback`;
    /// no other flag may be given with it).
    #[arg(long)]
    rollback: bool,
    /// Accepted for docker's scripts: shoal never asks a registry for an
    /// image's digest, so images are always used as given.
    #[arg(long)]
    no_resolve_image: bool,
    #[command(flatten)]
    files: FileUpdateFlags,
    #[command(flatten)]
    placement: PlacementUpdateFlags,
    #[command(flatten)]
    more: ContainerArgs,
    #[command(flatten)]
    lists: UpdateListArgs,
    #[command(flatten)]
    single: crate::container_flags::SingleUpdateArgs,
    #[command(flatten)]
    networks: crate::network::NetworkUpdateFlags,
    #[command(flatten)]
    detach: Detach,
    service: String,
}

/// `--secret` and `--config` on create, docker's forms.
#[derive(Args, Default)]
pub struct FileFlags {
    /// Specify secrets to expose to the service (NAME or source=NAME,target=…,uid=…,gid=…,mode=…)
    #[arg(long)]
    secret: Vec<String>,
    /// Specify configurations to expose to the service (same forms as --secret)
    #[arg(long)]
    config: Vec<String>,
}

/// Their `-add`/`-rm` forms on update.
#[derive(Args, Default)]
pub struct FileUpdateFlags {
    /// Add or update a secret on a service
    #[arg(long)]
    secret_add: Vec<String>,
    /// Remove a secret (by name)
    #[arg(long)]
    secret_rm: Vec<String>,
    /// Add or update a config file on a service
    #[arg(long)]
    config_add: Vec<String>,
    /// Remove a configuration file (by name)
    #[arg(long)]
    config_rm: Vec<String>,
}

/// One kind's references, each checked as docker's flag parser does.
fn parse_refs<Id: From<String>>(kind: Kind, flag: &str, values: &[String]) -> Result<Vec<FileRef<Id>>> {
    values
        .iter()
        .map(|v| secret::parse_ref(kind, v).map_err(|e| anyhow!("invalid argument {v:?} for \"--{flag}\" flag: {e}")))
        .collect()
}

/// The policy flags `create` and `update` share; each sets only what is given.
#[derive(Args)]
pub struct PolicyFlags {
    #[command(flatten)]
    restart: RestartFlags,
    #[command(flatten)]
    update: UpdateFlags,
    #[command(flatten)]
    rollback: RollbackFlags,
}

#[derive(Args)]
pub struct RestartFlags {
    /// none, on-failure or any (default any)
    #[arg(long)]
    restart_condition: Option<String>,
    /// Delay between restart attempts (default 5s)
    #[arg(long)]
    restart_delay: Option<String>,
    /// Maximum restarts before giving up (default unlimited)
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    /// Window in which restarts count toward --restart-max-attempts
    #[arg(long)]
    restart_window: Option<String>,
}

impl RestartFlags {
    fn patch(&self) -> Result<RestartPatch> {
        Ok(RestartPatch {
            condition: self.restart_condition.as_deref().map(str::parse).transpose()?,
            delay_ms: self.restart_delay.as_deref().map(|d| ms(d, "--restart-delay")).transpose()?,
            max_attempts: self.restart_max_attempts,
            window_ms: self.restart_window.as_deref().map(|d| ms(d, "--restart-window")).transpose()?,
        })
    }
}

/// The six knobs of a rolling update, for `--update-*` and `--rollback-*`.
struct Knobs<'a> {
    prefix: &'static str,
    parallelism: Option<u64>,
    delay: Option<&'a str>,
    order: Option<&'a str>,
    failure_action: Option<&'a str>,
    monitor: Option<&'a str>,
    max_failure_ratio: Option<&'a str>,
}

impl Knobs<'_> {
    fn patch(&self) -> Result<UpdateConfigPatch> {
        let p = self.prefix;
        Ok(UpdateConfigPatch {
            parallelism: self.parallelism,
            delay_ms: self.delay.map(|d| ms(d, &format!("--{p}-delay"))).transpose()?,
            order: self.order.map(str::parse).transpose()?,
            failure_action: self.failure_action.map(str::parse).transpose()?,
            monitor_ms: self.monitor.map(|d| ms(d, &format!("--{p}-monitor"))).transpose()?,
            max_failure_ratio: self.max_failure_ratio.map(str::parse).transpose()?,
        })
    }
}

#[derive(Args)]
pub struct UpdateFlags {
    /// Tasks updated at once (0: all; default 1)
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Delay between updates of batches (default 0s)
    #[arg(long)]
    update_delay: Option<String>,
    /// stop-first (default) or start-first
    #[arg(long)]
    update_order: Option<String>,
    /// pause (default), continue or rollback
    #[arg(long)]
    update_failure_action: Option<String>,
    /// How long a new task must run to count as updated (default 5s)
    #[arg(long)]
    update_monitor: Option<String>,
    /// Fraction of failed tasks tolerated (default 0)
    #[arg(long)]
    update_max_failure_ratio: Option<String>,
}

impl UpdateFlags {
    fn patch(&self) -> Result<UpdateConfigPatch> {
        Knobs {
            prefix: "update",
            parallelism: self.update_parallelism,
            delay: self.update_delay.as_deref(),
            order: self.update_order.as_deref(),
            failure_action: self.update_failure_action.as_deref(),
            monitor: self.update_monitor.as_deref(),
            max_failure_ratio: self.update_max_failure_ratio.as_deref(),
        }
        .patch()
    }
}

#[derive(Args)]
pub struct RollbackFlags {
    /// Tasks rolled back at once (0: all; default 1)
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    /// Delay between rollbacks of batches (default 0s)
    #[arg(long)]
    rollback_delay: Option<String>,
    /// stop-first (default) or start-first
    #[arg(long)]
    rollback_order: Option<String>,
    /// pause (default) or continue
    #[arg(long)]
    rollback_failure_action: Option<String>,
    /// How long a task must run to count as rolled back (default 5s)
    #[arg(long)]
    rollback_monitor: Option<String>,
    /// Fraction of failed tasks tolerated (default 0)
    #[arg(long)]
    rollback_max_failure_ratio: Option<String>,
}

impl RollbackFlags {
    fn patch(&self) -> Result<UpdateConfigPatch> {
        let patch = Knobs {
            prefix: "rollback",
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay.as_deref(),
            order: self.rollback_order.as_deref(),
            failure_action: self.rollback_failure_action.as_deref(),
            monitor: self.rollback_monitor.as_deref(),
            max_failure_ratio: self.rollback_max_failure_ratio.as_deref(),
        }
        .patch()?;
        if patch.failure_action == Some(FailureAction::Rollback) {
            bail!("invalid --rollback-failure-action \"rollback\": expected pause or continue");
        }
        Ok(patch)
    }
}

fn parse_constraints(list: &[String]) -> Result<Vec<Constraint>> {
    list.iter().map(|c| Constraint::parse(c).map_err(|e| anyhow!("{e}"))).collect()
}

fn parse_ports(list: &[String]) -> Result<Vec<PortConfig>> {
    list.iter().map(|p| p.parse::<PortConfig>().map_err(|e| anyhow!("{e}"))).collect()
}

fn parse_labels(list: &[String]) -> Result<BTreeMap<String, String>> {
    list.iter().map(|l| parse_label(l).map_err(|e| anyhow!("{e}"))).collect()
}

/// A count flag, with docker's (pflag's) words for a bad one.
fn parse_count(s: &str, flag: &str) -> Result<u64> {
    s.trim().parse::<u64>().map_err(|_| {
        anyhow!("invalid argument {s:?} for \"{flag}\" flag: strconv.ParseUint: parsing {s:?}: invalid syntax")
    })
}

fn ms(s: &str, what: &str) -> Result<u64> {
    parse_duration(s).map(|d| d.as_millis() as u64).map_err(|e| anyhow!("invalid {what}: {e}"))
}

fn create_spec(a: &CreateArgs) -> Result<ServiceSpec> {
    let replicas = a.replicas.as_deref().map(parse_replicas).transpose()?;
    let max_concurrent = a.max_concurrent.as_deref().map(|s| parse_count(s, "--max-concurrent")).transpose()?;
    for e in &a.env {
        validate_env(e)?;
    }
    let mounts = a.mount.iter().map(|m| m.parse::<Mount>()).collect::<Result<Vec<_>, _>>()?;
    let mode = ServiceMode::from_flags(&a.mode, replicas, max_concurrent)?;
    let mut restart = RestartPolicy::default();
    a.policies.restart.patch()?.apply(&mut restart);
    let (update_patch, rollback_patch) = (a.policies.update.patch()?, a.policies.rollback.patch()?);
    if mode.is_job() && (update_patch != Default::default() || rollback_patch != Default::default()) {
        bail!("update and rollback configuration is not supported for jobs");
    }
    let mut update = UpdateConfig::default();
    update_patch.apply(&mut update);
    let mut rollback = UpdateConfig::default();
    rollback_patch.apply(&mut rollback);
    let name = match &a.name {
        Some(n) => n.clone(),
        None => {
            // docker picks a random name; so do we, from the image.
            let base: String = a.image.rsplit('/').next().unwrap_or("svc").split(':').next().unwrap_or("svc").into();
            format!("{base}-{}", &common::ServiceId::random().as_str()[..6])
        }
    };
    let (container, limits) = a.container.options()?;
    let spec = ServiceSpec {
        name,
        labels: parse_labels(&a.label)?,
        mode,
        update,
        rollback,
        task: TaskTemplate {
            image: a.image.clone(),
            entrypoint: a.container.entrypoint(),
            args: a.command.clone(),
            env: a.env.clone(),
            mounts,
            constraints: parse_constraints(&a.constraint)?,
            restart,
            stop_grace_ms: ms(&a.stop_grace_period, "--stop-grace-period")?,
            ports: parse_ports(&a.publish)?,
            force_update: 0,
            container,
            limits,
            secrets: parse_refs(Kind::Secret, "secret", &a.files.secret)?,
            configs: parse_refs(Kind::Config, "config", &a.files.config)?,
            scheduling: a.placement.scheduling()?,
            networks: a.networks.attachments()?,
            log_retention_ms: a.log_retention.as_deref().map(|d| ms(d, "--log-retention")).transpose()?,
            registry_auth: None,
        },
        engine_spec: None,
        endpoint_mode: a.networks.endpoint_mode()?,
    };
    let mut spec = spec;
    a.create_lists.apply_create(&a.more, &mut spec.task)?;
    spec.validate()?;
    if a.with_registry_auth {
        spec.task.registry_auth = crate::registry_auth::for_image(&a.image)?;
    }
    Ok(spec)
}

pub fn run(c: &Client, cmd: ServiceCmd) -> Result<ExitCode> {
    match cmd {
        ServiceCmd::Create(a) => {
            let spec = create_spec(&a)?;
            let info: ServiceInfo = c.post("/v1/services", &spec)?;
            println!("{}", info.id);
            if !a.detach.detach {
                return progress::watch(c, info.id.as_str(), now_ms(), a.detach.quiet);
            }
        }
        ServiceCmd::Ls(list) => {
            let services: Vec<ServiceInfo> = c.get("/v1/services")?;
            list.print(&services, output::service_ls_quiet, output::service_ls)?;
        }
        ServiceCmd::Ps { services, no_trunc, filter, list } => {
            let mut desired: Option<TaskState> = None;
            for f in &filter {
                match f.split_once('=') {
                    Some(("desired-state", v)) => {
                        desired = Some(match v {
                            "running" => TaskState::Running,
                            "shutdown" => TaskState::Shutdown,
                            "accepted" => TaskState::Accepted,
                            _ => bail!("invalid filter {f:?}: desired-state must be running, shutdown or accepted"),
                        })
                    }
                    _ => bail!("invalid filter {f:?}: supported is desired-state=running|shutdown|accepted"),
                }
            }
            let (lists, failed) = c.get_each::<Vec<TaskInfo>>(&services, |s| format!("/v1/services/{s}/tasks"));
            let mut tasks: Vec<TaskInfo> = lists.into_iter().flatten().collect();
            if let Some(d) = desired {
                tasks.retain(|t| t.task.desired_state == d);
            }
            // A failed lookup with nothing to show prints no empty table.
            list.print(&tasks, output::service_ps_quiet, |tasks| {
                if !tasks.is_empty() || !failed {
                    output::service_ps(tasks, now_ms(), no_trunc)
                } else {
                    String::new()
                }
            })?;
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ServiceCmd::Logs {
            service,
            follow,
            tail,
            timestamps,
            no_trunc,
            since,
            no_task_ids,
            no_resolve,
            raw,
            details: _,
        } => {
            // Checked before anything is asked of the cluster.
            let since = since.map(|s| crate::events::parse_since(&s, common::time::now_ms())).transpose()?;
            let tail = match tail.as_deref() {
                None | Some("all") => None,
                Some(n) => Some(
                    n.parse::<u64>()
                        .map_err(|_| anyhow!("invalid --tail {n:?}: expected a number of lines or \"all\""))?,
                ),
            };
            let info: ServiceInfo = c.get(&format!("/v1/services/{}", seg(&service)))?;
            let mut path = format!("/v1/services/{}/logs?follow={follow}", info.id);
            if let Some(n) = tail {
                path.push_str(&format!("&tail={n}"));
            }
            use std::io::Write;
            // Like docker: what a task wrote to stderr goes to stderr.
            let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
            let format = output::LogFormat {
                timestamps,
                no_trunc,
                no_task_ids,
                no_resolve: no_resolve.then(|| info.id.to_string()),
                raw,
                replicas: info.desired,
            };
            c.stream_lines::<LogEntry>(&path, |e| {
                if let Some(since) = since {
                    let at = humantime::parse_rfc3339_weak(&e.timestamp)
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64);
                    if at.is_some_and(|at| at < since) {
                        return Ok(());
                    }
                }
                let line = output::format_log(&e, &format);
                match e.stream {
                    OutputStream::Stdout => {
                        let mut out = stdout.lock();
                        writeln!(out, "{line}")?;
                        out.flush()?;
                    }
                    OutputStream::Stderr => {
                        let mut out = stderr.lock();
                        writeln!(out, "{line}")?;
                        out.flush()?;
                    }
                }
                Ok(())
            })?;
        }
        ServiceCmd::Scale { targets, detach } => {
            let mut parsed = Vec::new();
            for t in &targets {
                let (name, n) = t
                    .split_once('=')
                    .ok_or_else(|| anyhow!("invalid scale specifier {t:?}: expected SERVICE=REPLICAS"))?;
                parsed.push((name.to_string(), parse_replicas(n)?));
            }
            let mut code = ExitCode::SUCCESS;
            let started = now_ms();
            let mut scaled = Vec::new();
            for (name, n) in parsed {
                let update = ServiceUpdate { replicas: Some(n), ..Default::default() };
                match c.post::<_, ServiceInfo>(&format!("/v1/services/{}/update", seg(&name)), &update) {
                    Ok(info) => {
                        println!("{name} scaled to {n}");
                        scaled.push(info.id.to_string());
                    }
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = ExitCode::FAILURE;
                    }
                }
            }
            if !detach.detach {
                for id in scaled {
                    if progress::watch(c, &id, started, detach.quiet)? != ExitCode::SUCCESS {
                        code = ExitCode::FAILURE;
                    }
                }
            }
            return Ok(code);
        }
        ServiceCmd::Update(a) => {
            let update = ServiceUpdate {
                replicas: a.replicas.as_deref().map(parse_replicas).transpose()?,
                image: a.image.clone(),
                args: a.args.as_ref().map(|s| s.split_whitespace().map(str::to_string).collect()),
                env_add: {
                    for e in &a.env_add {
                        validate_env(e)?;
                    }
                    a.env_add.clone()
                },
                env_rm: a.env_rm.clone(),
                label_add: parse_labels(&a.label_add)?,
                label_rm: a.label_rm.clone(),
                constraint_add: parse_constraints(&a.constraint_add)?,
                constraint_rm: parse_constraints(&a.constraint_rm)?,
                publish_add: parse_ports(&a.publish_add)?,
                publish_rm: parse_ports(&a.publish_rm)?,
                update_config: a.policies.update.patch()?,
                rollback_config: a.policies.rollback.patch()?,
                restart: a.policies.restart.patch()?,
                force: a.force,
                rebalance: a.rebalance,
                log_retention_ms: a.log_retention.as_deref().map(|d| ms(d, "--log-retention")).transpose()?,
                secret_add: parse_refs(Kind::Secret, "secret-add", &a.files.secret_add)?,
                secret_rm: a.files.secret_rm.clone(),
                config_add: parse_refs(Kind::Config, "config-add", &a.files.config_add)?,
                config_rm: a.files.config_rm.clone(),
                scheduling: a.placement.patch()?,
                container: {
                    let mut u = a.more.update()?;
                    a.lists.fill(&mut u)?;
                    u.single = a.single.values()?;
                    u
                },
                network: a.networks.patch()?,
                max_concurrent: a.max_concurrent.as_deref().map(|s| parse_count(s, "--max-concurrent")).transpose()?,
                registry_auth: None,
            };
            let mut update = update;
            if a.with_registry_auth {
                // docker's: the login for the new image, else the service's.
                let image = match &a.image {
                    Some(i) => i.clone(),
                    None => c.get::<ServiceInfo>(&format!("/v1/services/{}", seg(&a.service)))?.spec.task.image,
                };
                update.registry_auth = crate::registry_auth::for_image(&image)?;
            }
            let started = now_ms();
            let path = if a.rollback {
                // docker's rule: only --detach and --quiet go with it.
                if update != ServiceUpdate::default() {
                    bail!("other flags may not be combined with --rollback");
                }
                format!("/v1/services/{}/rollback", seg(&a.service))
            } else {
                format!("/v1/services/{}/update", seg(&a.service))
            };
            let info: ServiceInfo = if a.rollback { c.post(&path, &())? } else { c.post(&path, &update)? };
            println!("{}", a.service);
            if !a.detach.detach {
                return progress::watch(c, info.id.as_str(), started, a.detach.quiet);
            }
        }
        ServiceCmd::Rollback { service, detach } => {
            let started = now_ms();
            let info: ServiceInfo = c.post(&format!("/v1/services/{}/rollback", seg(&service)), &())?;
            println!("{service}");
            if !detach.detach {
                return progress::watch(c, info.id.as_str(), started, detach.quiet);
            }
        }
        ServiceCmd::Inspect { services, pretty } => {
            return c.inspect::<ServiceInfo>(
                &services,
                |s| format!("/v1/services/{s}"),
                pretty.then_some(pretty_service as fn(&ServiceInfo) -> String),
            );
        }
        ServiceCmd::Rm { services } => {
            return Ok(c.delete_each::<ServiceInfo>(&services, |s| format!("/v1/services/{s}")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(at: common::time::Millis) -> String {
    let d = std::time::Duration::from_millis(now_ms().saturating_sub(at));
    format!("{} ago", common::time::human_duration(d))
}

fn pretty_service(s: &ServiceInfo) -> String {
    let t = &s.spec.task;
    let mut out = format!("\nID:\t\t{}\nName:\t\t{}\n", s.id, s.spec.name);
    if !s.spec.labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, v) in &s.spec.labels {
            out.push_str(&format!(" {k}={v}\n"));
        }
    }
    match s.spec.mode {
        ServiceMode::Replicated { replicas } => {
            out.push_str(&format!("Service Mode:\tReplicated\n Replicas:\t{replicas}\n"))
        }
        ServiceMode::Global => out.push_str("Service Mode:\tGlobal\n"),
        ServiceMode::ReplicatedJob { total_completions, max_concurrent } => out.push_str(&format!(
            "Service Mode:\tReplicatedJob\n Max Concurrent:\t{max_concurrent}\n Total Completions:\t{total_completions}\n"
        )),
        ServiceMode::GlobalJob => out.push_str("Service Mode:\tGlobalJob\n"),
    }
    if let Some(u) = &s.update_status {
        out.push_str(&format!("UpdateStatus:\n State:\t\t{}\n", u.state.as_str()));
        out.push_str(&format!(" Started:\t{}\n", ago(u.started_at)));
        if let Some(done) = u.completed_at {
            out.push_str(&format!(" Completed:\t{}\n", ago(done)));
        }
        out.push_str(&format!(" Message:\t{}\n", u.message));
    }
    if !t.constraints.is_empty() {
        out.push_str("Placement:\n Constraints:\t[");
        out.push_str(&t.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" "));
        out.push_str("]\n");
    }
    out.push_str(&format!(
        "RestartPolicy:\n Condition:\t{}\n Delay:\t\t{}\n MaxAttempts:\t{}\n",
        t.restart.condition,
        humantime::format_duration(std::time::Duration::from_millis(t.restart.delay_ms)),
        t.restart.max_attempts.unwrap_or(0)
    ));
    for (title, u) in [("UpdateConfig", &s.spec.update), ("RollbackConfig", &s.spec.rollback)] {
        out.push_str(&format!(
            "{title}:\n Parallelism:\t{}\n Delay:\t\t{}\n On failure:\t{:?}\n Monitoring Period: {}\n Max failure ratio: {}\n Update order:\t{:?}\n",
            u.parallelism,
            humantime::format_duration(std::time::Duration::from_millis(u.delay_ms)),
            u.failure_action,
            humantime::format_duration(std::time::Duration::from_millis(u.monitor_ms)),
            u.max_failure_ratio.0,
            u.order,
        ));
    }
    out.push_str(&format!("ContainerSpec:\n Image:\t\t{}\n", t.image));
    if !t.args.is_empty() {
        out.push_str(&format!(" Args:\t\t{}\n", t.args.join(" ")));
    }
    if !t.env.is_empty() {
        out.push_str(&format!(" Env:\t\t{}\n", t.env.join(" ")));
    }
    if !t.mounts.is_empty() {
        out.push_str("Mounts:\n");
        for m in &t.mounts {
            out.push_str(&format!(
                " Target:\t{}\n  Source:\t{}\n  ReadOnly:\t{}\n  Type:\t\t{}\n",
                m.target,
                m.source,
                m.readonly,
                m.kind.as_str()
            ));
        }
    }
    if !t.ports.is_empty() {
        out.push_str("Ports:\n");
        for p in &t.ports {
            out.push_str(&format!(
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}\n",
                p.published.map(|n| n.to_string()).unwrap_or_default(),
                p.protocol,
                p.target,
                p.mode
            ));
        }
    }
    for e in &s.mesh_errors {
        out.push_str(&format!("Mesh error:\t{e}\n"));
    }
    out.push_str(&format!("Running:\t{}/{}\n", s.running, s.desired));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_and_memory_parse_as_docker_reads_them() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(parse_cpus(".25").unwrap(), 250_000_000);
        assert!(parse_cpus("x").is_err());
        assert!(parse_cpus("0.0000000001").is_err());
        assert_eq!(parse_memory("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("1024").unwrap(), 1024);
        assert_eq!(
            parse_memory("lots").unwrap_err().to_string(),
            "invalid argument \"lots\" for \"--limit-memory\" flag: invalid size: 'lots'"
        );
    }
}
