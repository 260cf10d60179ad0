//! The scheduling flags of `service create` and `service update`, as
//! docker's: `--reserve-cpu`, `--reserve-memory`, `--generic-resource`,
//! `--placement-pref`, `--replicas-max-per-node` (and update's `-add`/`-rm`).

use anyhow::{anyhow, Result};
use clap::Args;
use common::sched::{parse_generic_resource, parse_placement_pref, Resources, Scheduling, SchedulingPatch, Spread};

use crate::service::{parse_cpus_for as parse_cpus, parse_memory_for as parse_memory};

#[derive(Args, Default)]
pub struct PlacementFlags {
    /// Reserve CPUs
    #[arg(long)]
    reserve_cpu: Option<String>,
    /// Reserve Memory
    #[arg(long)]
    reserve_memory: Option<String>,
    /// User defined resources (KIND=COUNT)
    #[arg(long)]
    generic_resource: Vec<String>,
    /// Add a placement preference (spread=node.labels.KEY)
    #[arg(long, value_parser = pref)]
    placement_pref: Vec<Spread>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long)]
    replicas_max_per_node: Option<String>,
}

#[derive(Args, Default)]
pub struct PlacementUpdateFlags {
    /// Reserve CPUs
    #[arg(long)]
    reserve_cpu: Option<String>,
    /// Reserve Memory
    #[arg(long)]
    reserve_memory: Option<String>,
    /// Add a Generic resource
    #[arg(long)]
    generic_resource_add: Vec<String>,
    /// Remove a Generic resource
    #[arg(long)]
    generic_resource_rm: Vec<String>,
    /// Add a placement preference
    #[arg(long, value_parser = pref)]
    placement_pref_add: Vec<Spread>,
    /// Remove a placement preference
    #[arg(long, value_parser = pref)]
    placement_pref_rm: Vec<Spread>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long)]
    replicas_max_per_node: Option<String>,
}

fn pref(s: &str) -> Result<Spread, String> {
    parse_placement_pref(s).map_err(|e| e.to_string())
}

fn max_per_node(s: &str) -> Result<u64> {
    s.parse().map_err(|_| {
        anyhow!("invalid argument {s:?} for \"--replicas-max-per-node\" flag: strconv.ParseUint: parsing {s:?}: invalid syntax")
    })
}

fn generic(list: &[String]) -> Result<Vec<(String, u64)>> {
    list.iter().map(|g| parse_generic_resource(g).map_err(|e| anyhow!("{e}"))).collect()
}

impl PlacementFlags {
    pub fn scheduling(&self) -> Result<Scheduling> {
        Ok(Scheduling {
            reservations: Resources {
                nano_cpus: self
                    .reserve_cpu
                    .as_deref()
                    .map(|c| parse_cpus(c, "--reserve-cpu"))
                    .transpose()?
                    .unwrap_or(0),
                memory_bytes: self
                    .reserve_memory
                    .as_deref()
                    .map(|m| parse_memory(m, "--reserve-memory"))
                    .transpose()?
                    .unwrap_or(0),
                generic: generic(&self.generic_resource)?.into_iter().collect(),
            },
            preferences: self.placement_pref.clone(),
            max_replicas_per_node: self.replicas_max_per_node.as_deref().map(max_per_node).transpose()?.unwrap_or(0),
        })
    }
}

impl PlacementUpdateFlags {
    pub fn patch(&self) -> Result<SchedulingPatch> {
        Ok(SchedulingPatch {
            reserve_nano_cpus: self.reserve_cpu.as_deref().map(|c| parse_cpus(c, "--reserve-cpu")).transpose()?,
            reserve_memory_bytes: self
                .reserve_memory
                .as_deref()
                .map(|m| parse_memory(m, "--reserve-memory"))
                .transpose()?,
            generic_add: generic(&self.generic_resource_add)?.into_iter().collect(),
            // docker removes by kind (`gpu` or `gpu=2`).
            generic_rm: self
                .generic_resource_rm
                .iter()
                .map(|g| g.split_once('=').map_or(g.as_str(), |(k, _)| k).to_string())
                .collect(),
            preference_add: self.placement_pref_add.clone(),
            preference_rm: self.placement_pref_rm.clone(),
            max_replicas_per_node: self.replicas_max_per_node.as_deref().map(max_per_node).transpose()?,
        })
    }
}
