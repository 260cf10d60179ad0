//! What a node tells the leader it offers (its [`NodeDescription`]): the
//! machine's CPUs and memory unless `--resources` says otherwise (tests
//! declare small nodes on one machine), the generic resources it is given
//! (`--generic-resource gpu=2`), its platform, and the engine's labels
//! (Docker's, then `--engine-label`).

use std::collections::BTreeMap;

use clap::Args;
use common::sched::{parse_generic_resource, NodeDescription, Resources};

use super::parse_size;

#[derive(Args, Debug, Default, Clone)]
pub struct DescribeFlags {
    /// The capacity this node offers to reservations, instead of the
    /// machine's: `cpus=2,memory=4GiB` (either may be left out).
    #[arg(long, value_name = "cpus=N,memory=SIZE", value_parser = parse_capacity)]
    resources: Option<Capacity>,
    /// A generic resource this node offers, KIND=COUNT (`gpu=2`); repeatable.
    #[arg(long = "generic-resource", value_name = "KIND=COUNT", value_parser = parse_generic)]
    generic_resources: Vec<(String, u64)>,
    /// An engine label (`engine.labels.KEY` constraints) beside Docker's own; repeatable.
    #[arg(long = "engine-label", value_name = "KEY=VALUE", value_parser = parse_engine_label)]
    engine_labels: Vec<(String, String)>,
}

/// `--resources`: what it overrides of the machine's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    nano_cpus: Option<u64>,
    memory_bytes: Option<u64>,
}

fn parse_capacity(s: &str) -> Result<Capacity, String> {
    let mut c = Capacity::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("cpus", v)) => c.nano_cpus = Some(parse_cpus(v)?),
            Some(("memory", v)) => c.memory_bytes = Some(parse_size(v)?),
            _ => return Err(format!("invalid resources {part:?}: expected cpus=N or memory=SIZE")),
        }
    }
    Ok(c)
}

/// `2`, `0.5` CPUs as nano-CPUs.
fn parse_cpus(v: &str) -> Result<u64, String> {
    match v.trim().parse::<f64>() {
        Ok(n) if (0.0..1e9).contains(&n) => Ok((n * 1e9).round() as u64),
        _ => Err(format!("invalid cpus {v:?}: expected a number of CPUs, e.g. 2 or 0.5")),
    }
}

fn parse_generic(s: &str) -> Result<(String, u64), String> {
    parse_generic_resource(s).map_err(|e| e.to_string())
}

fn parse_engine_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid engine label {s:?}: expected KEY=VALUE")),
    }
}

impl DescribeFlags {
    /// This node's description: `engine` holds Docker's labels.
    pub fn description(&self, engine: BTreeMap<String, String>) -> NodeDescription {
        let machine = machine();
        let capacity = self.resources.unwrap_or_default();
        let mut engine_labels = engine;
        engine_labels.extend(self.engine_labels.iter().cloned());
        NodeDescription {
            resources: Resources {
                nano_cpus: capacity.nano_cpus.unwrap_or(machine.nano_cpus),
                memory_bytes: capacity.memory_bytes.unwrap_or(machine.memory_bytes),
                generic: self.generic_resources.iter().cloned().collect(),
            },
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            engine_labels,
        }
    }
}

/// The machine's CPUs (those this process may use) and memory.
fn machine() -> Resources {
    let ncpu = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    Resources { nano_cpus: ncpu * 1_000_000_000, memory_bytes, generic: BTreeMap::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_capacity_overrides_the_machine() {
        let c = parse_capacity("cpus=2,memory=4GiB").unwrap();
        assert_eq!(c, Capacity { nano_cpus: Some(2_000_000_000), memory_bytes: Some(4 << 30) });
        assert_eq!(parse_capacity("cpus=0.5").unwrap().nano_cpus, Some(500_000_000));
        assert_eq!(
            parse_capacity("gpus=1").unwrap_err(),
            "invalid resources \"gpus=1\": expected cpus=N or memory=SIZE"
        );
        assert!(parse_capacity("cpus=lots").is_err());
        let flags = DescribeFlags {
            resources: Some(c),
            generic_resources: vec![("gpu".into(), 2)],
            engine_labels: vec![("storage".into(), "ssd".into())],
        };
        let d = flags.description(BTreeMap::from([("zone".to_string(), "a".to_string())]));
        assert_eq!(d.resources.nano_cpus, 2_000_000_000);
        assert_eq!(d.resources.generic.get("gpu"), Some(&2));
        assert_eq!(d.engine_labels.len(), 2);
        assert_eq!(d.os, "linux");
        let machine = DescribeFlags::default().description(BTreeMap::new());
        assert!(machine.resources.nano_cpus >= 1_000_000_000 && machine.resources.memory_bytes > 0);
        assert!(parse_engine_label("=x").is_err());
    }
}
