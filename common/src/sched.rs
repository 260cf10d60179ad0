//! What placement weighs beyond constraints: a task's reservations, its
//! placement preferences and per-node cap ([`Scheduling`], one field of the
//! task template), and what a node offers ([`NodeDescription`], which each
//! node reports to the leader and the store keeps).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// CPUs, memory and generic resources (`gpu=2`): a node's capacity, a
/// task's reservation, or what the tasks on a node reserve together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs in units of 10⁻⁹.
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    /// Discrete generic resources by kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generic: BTreeMap<String, u64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0 && self.generic.values().all(|n| *n == 0)
    }

    pub fn add(&mut self, other: &Resources) {
        self.nano_cpus = self.nano_cpus.saturating_add(other.nano_cpus);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        for (kind, n) in &other.generic {
            let have = self.generic.entry(kind.clone()).or_default();
            *have = have.saturating_add(*n);
        }
    }

    /// True when `need` more fits in `capacity` beside `self` (what is
    /// reserved already).
    pub fn fits(&self, need: &Resources, capacity: &Resources) -> bool {
        let within = |used: u64, more: u64, cap: u64| used.saturating_add(more) <= cap;
        within(self.nano_cpus, need.nano_cpus, capacity.nano_cpus)
            && within(self.memory_bytes, need.memory_bytes, capacity.memory_bytes)
            && need.generic.iter().all(|(kind, n)| {
                *n == 0
                    || within(
                        self.generic.get(kind).copied().unwrap_or(0),
                        *n,
                        capacity.generic.get(kind).copied().unwrap_or(0),
                    )
            })
    }
}

/// What a node reports about itself (Swarm's `NodeDescription`): its
/// capacity, platform and engine labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    #[serde(default)]
    pub resources: Resources,
    /// `linux`, as Go's GOOS spells it.
    #[serde(default)]
    pub os: String,
    /// `x86_64`, `aarch64`, as `uname -m` spells it (Docker's way).
    #[serde(default)]
    pub arch: String,
    /// The engine's labels (`engine.labels.*` constraints).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_labels: BTreeMap<String, String>,
}

/// A node's description and what its tasks reserve, as `node inspect`
/// shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub description: NodeDescription,
    pub reserved: Resources,
}

/// CPUs from nano-CPUs, as docker prints them: `2`, `1.5`.
pub fn format_cpus(nano: u64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    format!("{whole}.{}", format!("{frac:09}").trim_end_matches('0'))
}

/// Bytes as docker's `units.BytesSize` prints them: four significant
/// digits and a binary unit (`512MiB`, `3.842GiB`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    let decimals = if v >= 1000.0 {
        0
    } else if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    format!("{s}{}", UNITS[i])
}

/// The scheduling part of a task template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduling {
    /// Kept free for each task on its node (`--reserve-cpu`, …).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub reservations: Resources,
    /// Spread over these, in order (`--placement-pref spread=…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<Spread>,
    /// At most this many tasks of the service on one node; 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_replicas_per_node: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Scheduling {
    pub fn is_default(&self) -> bool {
        *self == Scheduling::default()
    }
}

/// A spread preference: its descriptor, `node.labels.zone` or
/// `engine.labels.rack`; tasks are spread evenly over the descriptor's
/// values, and nodes without it count as one more value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Spread(pub String);

impl Spread {
    /// The descriptor's value on a node (empty when it has no such label).
    /// A descriptor of another kind puts every node in one group, as
    /// Swarm does (it is skipped).
    pub fn value_of<'a>(&self, labels: &'a BTreeMap<String, String>, desc: Option<&'a NodeDescription>) -> &'a str {
        let d = self.0.as_str();
        if let Some(k) = strip_prefix_ignore_case(d, "node.labels.") {
            return labels.get(k).map(String::as_str).unwrap_or("");
        }
        if let Some(k) = strip_prefix_ignore_case(d, "engine.labels.") {
            return desc.and_then(|d| d.engine_labels.get(k)).map(String::as_str).unwrap_or("");
        }
        ""
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    (head.eq_ignore_ascii_case(prefix) && s.len() > prefix.len()).then(|| &s[prefix.len()..])
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spread={}", self.0)
    }
}

/// `service update`'s scheduling flags; absent ones leave the spec as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulingPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_nano_cpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_memory_bytes: Option<u64>,
    /// Generic resources to reserve (a kind's count replaced) and kinds to
    /// stop reserving.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generic_add: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generic_rm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preference_add: Vec<Spread>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preference_rm: Vec<Spread>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
}

impl SchedulingPatch {
    pub fn is_default(&self) -> bool {
        *self == SchedulingPatch::default()
    }

    pub fn apply(&self, s: &mut Scheduling) {
        let r = &mut s.reservations;
        if let Some(n) = self.reserve_nano_cpus {
            r.nano_cpus = n;
        }
        if let Some(n) = self.reserve_memory_bytes {
            r.memory_bytes = n;
        }
        for kind in &self.generic_rm {
            r.generic.remove(kind);
        }
        r.generic.extend(self.generic_add.iter().map(|(k, n)| (k.clone(), *n)));
        s.preferences.retain(|p| !self.preference_rm.contains(p));
        // docker appends an added preference, even one already there.
        s.preferences.extend(self.preference_add.iter().cloned());
        if let Some(n) = self.max_replicas_per_node {
            s.max_replicas_per_node = n;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error("placement preference must be of the format \"<strategy>=<arg>\"")]
    PrefFormat,
    #[error("unsupported placement preference {0} (only spread is supported)")]
    PrefStrategy(String),
    #[error("invalid generic resource specification: could not parse GenericResource: incorrect term {0}, missing '=' or malformed expression")]
    GenericTerm(String),
    #[error("invalid generic-resource request `{0}={1}`, Named Generic Resources is not supported for service create or update")]
    NamedGeneric(String, String),
}

/// `spread=node.labels.zone` (docker's `--placement-pref`).
pub fn parse_placement_pref(s: &str) -> Result<Spread, SchedError> {
    match s.split_once('=') {
        Some(("spread", arg)) => Ok(Spread(arg.to_string())),
        Some((strategy, _)) if !strategy.is_empty() => Err(SchedError::PrefStrategy(strategy.to_string())),
        _ => Err(SchedError::PrefFormat),
    }
}

/// `gpu=2` (docker's `--generic-resource`): a kind and a count. A
/// non-numeric value names a resource, which services cannot ask for.
pub fn parse_generic_resource(s: &str) -> Result<(String, u64), SchedError> {
    let Some((kind, value)) = s.split_once('=').filter(|(k, v)| !k.is_empty() && !v.is_empty()) else {
        return Err(SchedError::GenericTerm(s.to_string()));
    };
    if value.contains('=') {
        return Err(SchedError::GenericTerm(s.to_string()));
    }
    match value.parse::<u64>() {
        Ok(n) => Ok((kind.to_string(), n)),
        Err(_) => Err(SchedError::NamedGeneric(kind.to_string(), value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpus: u64, mem: u64, gpu: Option<u64>) -> Resources {
        Resources {
            nano_cpus: cpus,
            memory_bytes: mem,
            generic: gpu.map(|n| BTreeMap::from([("gpu".to_string(), n)])).unwrap_or_default(),
        }
    }

    #[test]
    fn a_reservation_fits_within_what_is_left() {
        let cap = res(2_000, 4_000, Some(2));
        let mut used = Resources::default();
        assert!(used.fits(&res(1_500, 0, None), &cap));
        used.add(&res(1_500, 1_000, Some(1)));
        assert!(!used.fits(&res(1_500, 0, None), &cap), "cpu over");
        assert!(used.fits(&res(500, 3_000, Some(1)), &cap), "exactly full fits");
        assert!(!used.fits(&res(0, 3_001, None), &cap), "memory over");
        assert!(!used.fits(&res(0, 0, Some(2)), &cap), "gpu over");
        let mut other = Resources::default();
        other.generic.insert("fpga".into(), 1);
        assert!(!used.fits(&other, &cap), "a kind the node lacks");
        assert!(Resources::default().fits(&Resources::default(), &Resources::default()), "nothing in nothing");
    }

    #[test]
    fn sizes_and_cpus_print_as_docker() {
        assert_eq!(format_cpus(2_000_000_000), "2");
        assert_eq!(format_cpus(1_500_000_000), "1.5");
        assert_eq!(format_cpus(250_000_000), "0.25");
        assert_eq!(format_bytes(4 << 30), "4GiB");
        assert_eq!(format_bytes(512 << 20), "512MiB");
        assert_eq!(format_bytes(4_125_000_000), "3.842GiB");
        assert_eq!(format_bytes(1000), "1000B");
        assert_eq!(format_bytes(0), "0B");
    }

    #[test]
    fn preferences_and_generic_resources_parse_as_docker() {
        assert_eq!(parse_placement_pref("spread=node.labels.zone"), Ok(Spread("node.labels.zone".into())));
        assert_eq!(
            parse_placement_pref("zone").unwrap_err().to_string(),
            "placement preference must be of the format \"<strategy>=<arg>\""
        );
        assert_eq!(
            parse_placement_pref("pack=node.labels.zone").unwrap_err().to_string(),
            "unsupported placement preference pack (only spread is supported)"
        );
        assert_eq!(parse_generic_resource("gpu=2"), Ok(("gpu".into(), 2)));
        assert_eq!(
            parse_generic_resource("gpu").unwrap_err().to_string(),
            "invalid generic resource specification: could not parse GenericResource: incorrect term gpu, missing '=' or malformed expression"
        );
        assert_eq!(
            parse_generic_resource("gpu=UUID1").unwrap_err().to_string(),
            "invalid generic-resource request `gpu=UUID1`, Named Generic Resources is not supported for service create or update"
        );
    }

    #[test]
    fn spread_values_come_from_node_or_engine_labels() {
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let desc = NodeDescription {
            engine_labels: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
            ..Default::default()
        };
        assert_eq!(Spread("node.labels.zone".into()).value_of(&labels, Some(&desc)), "a");
        assert_eq!(Spread("Node.Labels.zone".into()).value_of(&labels, None), "a");
        assert_eq!(Spread("engine.labels.rack".into()).value_of(&labels, Some(&desc)), "r1");
        assert_eq!(Spread("node.labels.dc".into()).value_of(&labels, Some(&desc)), "");
        assert_eq!(Spread("node.hostname".into()).value_of(&labels, Some(&desc)), "");
    }
}
