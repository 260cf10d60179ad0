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
    #[arg(long)]
    placement_pref: Vec<String>,
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
    #[arg(long)]
    placement_pref_add: Vec<String>,
    /// Remove a placement preference
    #[arg(long)]
    placement_pref_rm: Vec<String>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long)]
    replicas_max_per_node: Option<String>,
}

/// docker's words for a bad `--placement-pref` (a flag error).
fn prefs(list: &[String], flag: &str) -> Result<Vec<Spread>> {
    list.iter()
        .map(|p| parse_placement_pref(p).map_err(|e| anyhow!("invalid argument {p:?} for \"{flag}\" flag: {e}")))
        .collect()
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
            preferences: prefs(&self.placement_pref, "--placement-pref")?,
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
            preference_add: prefs(&self.placement_pref_add, "--placement-pref-add")?,
            preference_rm: prefs(&self.placement_pref_rm, "--placement-pref-rm")?,
            max_replicas_per_node: self.replicas_max_per_node.as_deref().map(max_per_node).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_docker_and_bad_ones_say_so_in_its_words() {
        let f = PlacementFlags {
            reserve_cpu: Some("1.5".into()),
            reserve_memory: Some("64MiB".into()),
            generic_resource: vec!["gpu=2".into()],
            placement_pref: vec!["spread=node.labels.zone".into()],
            replicas_max_per_node: Some("2".into()),
        };
        let s = f.scheduling().unwrap();
        assert_eq!((s.reservations.nano_cpus, s.reservations.memory_bytes), (1_500_000_000, 64 << 20));
        assert_eq!(s.reservations.generic.get("gpu"), Some(&2));
        assert_eq!(s.preferences, [Spread("node.labels.zone".into())]);
        assert_eq!(s.max_replicas_per_node, 2);
        let bad = |f: PlacementFlags| f.scheduling().unwrap_err().to_string();
        assert_eq!(
            bad(PlacementFlags { placement_pref: vec!["zone".into()], ..Default::default() }),
            "invalid argument \"zone\" for \"--placement-pref\" flag: placement preference must be of the format \"<strategy>=<arg>\""
        );
        assert_eq!(
            bad(PlacementFlags { replicas_max_per_node: Some("-1".into()), ..Default::default() }),
            "invalid argument \"-1\" for \"--replicas-max-per-node\" flag: strconv.ParseUint: parsing \"-1\": invalid syntax"
        );
        let patch = PlacementUpdateFlags {
            generic_resource_rm: vec!["gpu=2".into()],
            placement_pref_rm: vec!["spread=node.labels.zone".into()],
            reserve_cpu: Some("0".into()),
            ..Default::default()
        }
        .patch()
        .unwrap();
        let mut s = s;
        patch.apply(&mut s);
        assert!(s.reservations.generic.is_empty() && s.preferences.is_empty());
        assert_eq!(s.reservations.nano_cpus, 0);
    }
}
