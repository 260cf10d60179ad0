//! The `service create/update` flags for container settings beyond the
//! basics (health checks, …), each group its own clap struct flattened into
//! both commands. Values are checked here with docker's words, before
//! anything is sent.

use anyhow::{anyhow, Result};
use clap::Args;
use common::container::{ContainerUpdate, HealthFlags, Mount};
use common::spec::TaskTemplate;

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
}

impl ContainerArgs {
    /// The change these flags make (to a new template on create).
    pub fn update(&self) -> Result<ContainerUpdate> {
        Ok(ContainerUpdate { health: self.health.flags().patch().map_err(|e| anyhow!(e))?, ..Default::default() })
    }

    /// Sets what these flags ask for on a new service's template.
    pub fn apply_create(&self, task: &mut TaskTemplate) -> Result<()> {
        self.update()?.apply(task);
        Ok(())
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
}

impl UpdateListArgs {
    /// Adds these flags' changes to `u`.
    pub fn fill(&self, u: &mut ContainerUpdate) -> Result<()> {
        u.mount_add =
            self.mount_add.iter().map(|m| Mount::parse_flag(m, "--mount-add")).collect::<Result<Vec<_>, _>>()?;
        u.mount_rm = self.mount_rm.clone();
        Ok(())
    }
}
