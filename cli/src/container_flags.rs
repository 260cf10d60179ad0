//! The `service create/update` flags for container settings beyond the
//! basics (health checks, …), each group its own clap struct flattened into
//! both commands. Values are checked here with docker's words, before
//! anything is sent.

use anyhow::{anyhow, Result};
use clap::Args;
use std::collections::BTreeMap;

use common::container::{
    flag_error, parse_env_file, ContainerUpdate, CredentialSpec, HealthFlags, Isolation, LogDriver, Mount,
    SingleValues, Ulimit,
};
use common::spec::{parse_key_value, TaskTemplate};

/// `--health-*` and `--no-healthcheck`, as docker names them.
#[derive(Args, Default)]
pub struct HealthArgs {
    /// Command to run to check health
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long, allow_hyphen_values = true)]
    health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long, allow_hyphen_values = true)]
    health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long, allow_hyphen_values = true)]
    health_retries: Option<String>,
    /// Start period for the container to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long, allow_hyphen_values = true)]
    health_start_period: Option<String>,
    /// Time between running the check during the start period (ms|s|m|h)
    #[arg(long, allow_hyphen_values = true)]
    health_start_interval: Option<String>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long)]
    no_healthcheck: bool,
}

impl HealthArgs {
    fn flags(&self) -> HealthFlags<'_> {
        HealthFlags {
            cmd: self.health_cmd.as_deref(),
            interval: self.health_interval.as_deref(),
            timeout: self.health_timeout.as_deref(),
            retries: self.health_retries.as_deref(),
            start_period: self.health_start_period.as_deref(),
            start_interval: self.health_start_interval.as_deref(),
            no_healthcheck: self.no_healthcheck,
        }
    }
}

/// Every container flag group of this module, for `create` and `update`.
#[derive(Args, Default)]
pub struct ContainerArgs {
    #[command(flatten)]
    health: HealthArgs,
    /// Logging driver for service
    #[arg(long)]
    log_driver: Option<String>,
    /// Logging driver options
    #[arg(long)]
    log_opt: Vec<String>,
}

impl ContainerArgs {
    /// The change these flags make (to a new template on create).
    pub fn update(&self) -> Result<ContainerUpdate> {
        let log_driver = match &self.log_driver {
            // As docker: --log-opt means something only with --log-driver.
            Some(name) => Some(LogDriver { name: name.clone(), options: key_values(&self.log_opt, "--log-opt")? }),
            None => None,
        };
        Ok(ContainerUpdate {
            health: self.health.flags().patch().map_err(|e| anyhow!(e))?,
            log_driver,
            ..Default::default()
        })
    }
}

/// `service create` only: `--env-file` and `--ulimit`.
#[derive(Args, Default)]
pub struct CreateListArgs {
    /// Read in a file of environment variables
    #[arg(long)]
    env_file: Vec<String>,
    /// Ulimit options (e.g. nofile=1024:2048)
    #[arg(long)]
    ulimit: Vec<String>,
}

impl CreateListArgs {
    /// Sets what these and the shared flags ask for on a new template:
    /// env files' lines come before `--env`, as in docker.
    pub fn apply_create(&self, shared: &ContainerArgs, task: &mut TaskTemplate) -> Result<()> {
        let mut env = Vec::new();
        for path in &self.env_file {
            let text = std::fs::read(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => anyhow!("open {path}: no such file or directory"),
                _ => anyhow!("open {path}: {e}"),
            })?;
            let lines = parse_env_file(&text, |k| std::env::var(k).ok())
                .map_err(|e| anyhow!("invalid env file ({path}): {e}"))?;
            env.extend(lines);
        }
        env.append(&mut task.env);
        task.env = env;
        let mut u = shared.update()?;
        u.ulimit_add = self.ulimit.iter().map(|s| Ulimit::parse_flag(s, "--ulimit")).collect::<Result<Vec<_>, _>>()?;
        u.apply(task);
        Ok(())
    }
}

/// `KEY=VALUE` flags into a map (`KEY` alone: an empty value).
fn key_values(list: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|kv| match parse_key_value(kv) {
            Some(p) => Ok(p),
            None if !kv.is_empty() && !kv.contains('=') => Ok((kv.clone(), String::new())),
            None => Err(anyhow!(flag_error(kv, flag, "expected KEY=VALUE"))),
        })
        .collect()
}

/// `HOST:IP` as Swarm's `IP HOST` hosts line.
fn host_line(h: &str, flag: &str) -> Result<String> {
    match h.split_once(':') {
        Some((name, ip)) if !name.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => Ok(format!("{ip} {name}")),
        _ => Err(anyhow!(flag_error(h, flag, &format!("bad format for add-host: {h:?}")))),
    }
}

/// `service update`'s single-value flags, as docker names them; each one
/// given replaces the template's value.
#[derive(Args, Default)]
pub struct SingleUpdateArgs {
    /// Container hostname ("" unsets it)
    #[arg(long)]
    hostname: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image ("" restores it)
    #[arg(long)]
    entrypoint: Option<String>,
    /// Allocate a pseudo-TTY (--tty=false to stop)
    #[arg(short = 't', long, num_args = 0..=1, default_missing_value = "true")]
    tty: Option<bool>,
    /// Use an init inside each service container
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    init: Option<bool>,
    /// Mount the container's root filesystem as read only
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    read_only: Option<bool>,
    /// Signal to stop the container
    #[arg(long)]
    stop_signal: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long)]
    stop_grace_period: Option<String>,
    /// Limit CPUs (0 removes the limit)
    #[arg(long)]
    limit_cpu: Option<String>,
    /// Limit Memory (0 removes the limit)
    #[arg(long)]
    limit_memory: Option<String>,
    /// Limit maximum number of processes (0 = unlimited)
    #[arg(long)]
    limit_pids: Option<String>,
    /// Service container isolation mode (default, process or hyperv; Linux runs only default)
    #[arg(long)]
    isolation: Option<String>,
    /// Credential spec for managed service account (Windows only; "" removes it)
    #[arg(long, value_name = "credential-spec")]
    credential_spec: Option<String>,
}

impl SingleUpdateArgs {
    pub fn values(&self) -> Result<SingleValues> {
        let pids = |p: &str| {
            p.trim()
                .parse::<u64>()
                .map_err(|_| anyhow!("invalid argument {p:?} for \"--limit-pids\" flag: expected a number"))
        };
        Ok(SingleValues {
            hostname: self.hostname.clone(),
            user: self.user.clone(),
            workdir: self.workdir.clone(),
            entrypoint: self.entrypoint.as_deref().map(|e| e.split_whitespace().map(str::to_string).collect()),
            tty: self.tty,
            init: self.init,
            read_only: self.read_only,
            stop_signal: self.stop_signal.clone(),
            stop_grace_ms: self
                .stop_grace_period
                .as_deref()
                .map(|d| {
                    common::time::parse_duration(d)
                        .map(|d| d.as_millis() as u64)
                        .map_err(|e| anyhow!("invalid --stop-grace-period: {e}"))
                })
                .transpose()?,
            limit_nano_cpus: self
                .limit_cpu
                .as_deref()
                .map(|s| crate::service::parse_cpus_for(s, "--limit-cpu"))
                .transpose()?,
            limit_memory_bytes: self
                .limit_memory
                .as_deref()
                .map(|s| crate::service::parse_memory_for(s, "--limit-memory"))
                .transpose()?,
            limit_pids: self.limit_pids.as_deref().map(pids).transpose()?,
            isolation: self.isolation.as_deref().map(|i| Isolation::parse_flag(i, "--isolation")).transpose()?,
            credential_spec: self
                .credential_spec
                .as_deref()
                .map(|cs| CredentialSpec::parse_flag(cs, "--credential-spec"))
                .transpose()?,
        })
    }
}

/// The `service update` flags that add to or take from lists of the
/// template (`--mount-add/--mount-rm`, …), as docker names them.
#[derive(Args, Default)]
pub struct UpdateListArgs {
    /// Add or update a mount on a service
    #[arg(long)]
    mount_add: Vec<String>,
    /// Remove a mount by its target path
    #[arg(long)]
    mount_rm: Vec<String>,
    /// Add or update a container label
    #[arg(long)]
    container_label_add: Vec<String>,
    /// Remove a container label by its key
    #[arg(long)]
    container_label_rm: Vec<String>,
    /// Add or update a custom DNS server
    #[arg(long)]
    dns_add: Vec<String>,
    /// Remove a custom DNS server
    #[arg(long)]
    dns_rm: Vec<String>,
    /// Add or update a custom DNS search domain
    #[arg(long)]
    dns_search_add: Vec<String>,
    /// Remove a DNS search domain
    #[arg(long)]
    dns_search_rm: Vec<String>,
    /// Add or update a DNS option
    #[arg(long)]
    dns_option_add: Vec<String>,
    /// Remove a DNS option
    #[arg(long)]
    dns_option_rm: Vec<String>,
    /// Add a custom host-to-IP mapping (host:ip)
    #[arg(long)]
    host_add: Vec<String>,
    /// Remove a custom host-to-IP mapping (host:ip)
    #[arg(long)]
    host_rm: Vec<String>,
    /// Add Linux capabilities
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Add or update a Sysctl option
    #[arg(long)]
    sysctl_add: Vec<String>,
    /// Remove a Sysctl option
    #[arg(long)]
    sysctl_rm: Vec<String>,
    /// Add or update a ulimit option
    #[arg(long)]
    ulimit_add: Vec<String>,
    /// Remove a ulimit option
    #[arg(long)]
    ulimit_rm: Vec<String>,
    /// Add an additional supplementary user group to the container
    #[arg(long)]
    group_add: Vec<String>,
    /// Remove a previously added supplementary user group from the container
    #[arg(long)]
    group_rm: Vec<String>,
}

impl UpdateListArgs {
    /// Adds these flags' changes to `u`.
    pub fn fill(&self, u: &mut ContainerUpdate) -> Result<()> {
        u.mount_add =
            self.mount_add.iter().map(|m| Mount::parse_flag(m, "--mount-add")).collect::<Result<Vec<_>, _>>()?;
        u.mount_rm = self.mount_rm.clone();
        u.label_add = key_values(&self.container_label_add, "--container-label-add")?;
        u.label_rm = self.container_label_rm.clone();
        (u.dns_add, u.dns_rm) = (self.dns_add.clone(), self.dns_rm.clone());
        (u.dns_search_add, u.dns_search_rm) = (self.dns_search_add.clone(), self.dns_search_rm.clone());
        (u.dns_option_add, u.dns_option_rm) = (self.dns_option_add.clone(), self.dns_option_rm.clone());
        u.host_add = self.host_add.iter().map(|h| host_line(h, "--host-add")).collect::<Result<Vec<_>>>()?;
        u.host_rm = self.host_rm.clone();
        (u.cap_add, u.cap_drop) = (self.cap_add.clone(), self.cap_drop.clone());
        u.sysctl_add = self
            .sysctl_add
            .iter()
            .map(|kv| parse_key_value(kv).ok_or_else(|| anyhow!(flag_error(kv, "--sysctl-add", "expected KEY=VALUE"))))
            .collect::<Result<_>>()?;
        u.sysctl_rm = self.sysctl_rm.clone();
        u.ulimit_add =
            self.ulimit_add.iter().map(|s| Ulimit::parse_flag(s, "--ulimit-add")).collect::<Result<Vec<_>, _>>()?;
        u.ulimit_rm = self.ulimit_rm.clone();
        (u.group_add, u.group_rm) = (self.group_add.clone(), self.group_rm.clone());
        Ok(())
    }
}
