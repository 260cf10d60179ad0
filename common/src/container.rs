//! Container settings a service passes to Docker beyond the basics in
//! [`crate::spec`]: the health check, and the parsers that read them the way
//! the docker CLI does (same forms, same error texts), so that a flag that
//! docker would refuse is refused here before anything is written.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, TaskTemplate};

/// Docker's HealthConfig. `test` is Docker's: empty inherits the image's
/// HEALTHCHECK (with the non-zero timings here overriding it), `["NONE"]`
/// disables it, `["CMD", …]` or `["CMD-SHELL", cmd]` runs a probe. Zero
/// timings mean Docker's defaults (30 s, 30 s, 0 s, 3 retries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval_ns: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ns: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period_ns: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval_ns: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl HealthCheck {
    /// `--no-healthcheck`: the image's HEALTHCHECK is switched off.
    pub fn disabled() -> Self {
        HealthCheck { test: vec!["NONE".into()], ..Default::default() }
    }

    pub fn is_disabled(&self) -> bool {
        self.test.first().is_some_and(|t| t == "NONE")
    }
}

/// The `--health-*` flags as given (strings as typed; `None` when absent).
#[derive(Clone, Debug, Default)]
pub struct HealthFlags<'a> {
    pub cmd: Option<&'a str>,
    pub interval: Option<&'a str>,
    pub timeout: Option<&'a str>,
    pub retries: Option<&'a str>,
    pub start_period: Option<&'a str>,
    pub start_interval: Option<&'a str>,
    pub no_healthcheck: bool,
}

impl HealthFlags<'_> {
    /// The flags checked and parsed, with docker's error texts.
    pub fn patch(&self) -> Result<HealthPatch, String> {
        let dur = |v: Option<&str>, flag: &str| -> Result<Option<u64>, String> {
            v.map(|s| positive_duration(s).map_err(|e| flag_error(s, flag, &e))).transpose()
        };
        let p = HealthPatch {
            cmd: self.cmd.map(str::to_string),
            interval_ns: dur(self.interval, "--health-interval")?,
            timeout_ns: dur(self.timeout, "--health-timeout")?,
            retries: self
                .retries
                .map(|r| parse_int(r).map_err(|e| flag_error(r, "--health-retries", &e)))
                .transpose()?,
            start_period_ns: dur(self.start_period, "--health-start-period")?,
            start_interval_ns: dur(self.start_interval, "--health-start-interval")?,
            no_healthcheck: self.no_healthcheck,
        };
        if p.no_healthcheck && p.sets_any() {
            return Err("--no-healthcheck conflicts with --health-* options".into());
        }
        Ok(p)
    }
}

/// What the `--health-*` flags change, parsed: `service create` applies it
/// to no check, `service update` to the service's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthPatch {
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub interval_ns: Option<u64>,
    #[serde(default)]
    pub timeout_ns: Option<u64>,
    #[serde(default)]
    pub retries: Option<u64>,
    #[serde(default)]
    pub start_period_ns: Option<u64>,
    #[serde(default)]
    pub start_interval_ns: Option<u64>,
    #[serde(default)]
    pub no_healthcheck: bool,
}

impl HealthPatch {
    fn sets_any(&self) -> bool {
        self.cmd.as_deref().is_some_and(|c| !c.is_empty())
            || self.interval_ns.is_some()
            || self.timeout_ns.is_some()
            || self.retries.is_some()
            || self.start_period_ns.is_some()
            || self.start_interval_ns.is_some()
    }

    pub fn is_empty(&self) -> bool {
        *self == HealthPatch::default()
    }

    /// Sets what the flags give, keeping the rest; no flag, no change (an
    /// absent check stays absent: the image's own applies).
    pub fn apply(&self, hc: &mut Option<HealthCheck>) {
        if self.no_healthcheck {
            *hc = Some(HealthCheck::disabled());
            return;
        }
        if !self.sets_any() && self.cmd.is_none() {
            return;
        }
        let h = hc.get_or_insert_with(HealthCheck::default);
        if let Some(cmd) = &self.cmd {
            h.test = if cmd.is_empty() { vec![] } else { vec!["CMD-SHELL".into(), cmd.clone()] };
        } else if h.is_disabled() {
            // New timings for a disabled check: the image's test again.
            h.test = vec![];
        }
        let set = |field: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut h.interval_ns, self.interval_ns);
        set(&mut h.timeout_ns, self.timeout_ns);
        set(&mut h.retries, self.retries);
        set(&mut h.start_period_ns, self.start_period_ns);
        set(&mut h.start_interval_ns, self.start_interval_ns);
    }
}

/// What `service update` changes in a task's container settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUpdate {
    #[serde(default, skip_serializing_if = "HealthPatch::is_empty")]
    pub health: HealthPatch,
    /// `--mount-rm`: targets whose mounts go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_rm: Vec<String>,
    /// `--mount-add`: a mount at a target already mounted replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_add: Vec<Mount>,
    /// `--container-label-add/-rm`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_rm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_rm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search_rm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_option_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_option_rm: Vec<String>,
    /// Swarm's `IP HOSTNAME` lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_add: Vec<String>,
    /// `HOSTNAME` or `HOSTNAME:IP`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rm: Vec<String>,
    /// Added to the added capabilities (and taken from the dropped ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Added to the dropped capabilities (and taken from the added ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl_add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctl_rm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimit_add: Vec<Ulimit>,
    /// Names of limits to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimit_rm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_rm: Vec<String>,
    /// `--log-driver` (with its `--log-opt`s) replaces the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<LogDriver>,
    /// The single-value flags (`--hostname`, `--user`, `--limit-memory`, …).
    #[serde(default, skip_serializing_if = "SingleValues::is_empty")]
    pub single: SingleValues,
}

/// `service update`'s single-value flags: each one given replaces the
/// template's value; an empty string (or 0 for a limit) unsets it, as in
/// docker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SingleValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_nano_cpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_pids: Option<u64>,
    /// `--isolation` (`""`: Swarm's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// `--credential-spec`: `Some(None)` (the flag's empty value) removes it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub credential_spec: Option<Option<CredentialSpec>>,
}

/// A field that is there, even as `null`, is `Some` (so `Some(None)` says
/// "unset", apart from a field left out).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl SingleValues {
    pub fn is_empty(&self) -> bool {
        *self == SingleValues::default()
    }

    pub fn apply(&self, task: &mut TaskTemplate) {
        let text = |v: &Option<String>, into: &mut Option<String>| {
            if let Some(v) = v {
                *into = Some(v.clone()).filter(|v| !v.is_empty());
            }
        };
        let c = &mut task.container;
        text(&self.hostname, &mut c.hostname);
        text(&self.user, &mut c.user);
        text(&self.workdir, &mut c.workdir);
        text(&self.stop_signal, &mut c.stop_signal);
        if let Some(e) = &self.entrypoint {
            task.entrypoint = e.clone();
        }
        if let Some(t) = self.tty {
            c.tty = t;
        }
        if let Some(i) = self.init {
            c.init = Some(i);
        }
        if let Some(r) = self.read_only {
            c.read_only = r;
        }
        if let Some(i) = self.isolation {
            c.isolation = Some(i);
        }
        if let Some(cs) = &self.credential_spec {
            c.credential_spec = cs.clone();
        }
        if let Some(g) = self.stop_grace_ms {
            task.stop_grace_ms = g;
        }
        let l = &mut task.limits;
        for (v, into) in [
            (self.limit_nano_cpus, &mut l.nano_cpus),
            (self.limit_memory_bytes, &mut l.memory_bytes),
            (self.limit_pids, &mut l.pids),
        ] {
            if let Some(v) = v {
                *into = v;
            }
        }
    }
}

impl ContainerUpdate {
    pub fn is_empty(&self) -> bool {
        *self == ContainerUpdate::default()
    }

    pub fn apply(&self, task: &mut TaskTemplate) {
        self.health.apply(&mut task.container.healthcheck);
        task.mounts.retain(|m| !self.mount_rm.contains(&m.target));
        for add in &self.mount_add {
            task.mounts.retain(|m| m.target != add.target);
            task.mounts.push(add.clone());
        }
        let c = &mut task.container;
        update_map(&mut c.labels, &self.label_add, &self.label_rm);
        update_map(&mut c.sysctls, &self.sysctl_add, &self.sysctl_rm);
        let same = |s: &String| s.clone();
        update_list(&mut c.dns, &self.dns_add, &self.dns_rm, same);
        update_list(&mut c.dns_search, &self.dns_search_add, &self.dns_search_rm, same);
        update_list(&mut c.dns_options, &self.dns_option_add, &self.dns_option_rm, same);
        update_list(&mut c.groups, &self.group_add, &self.group_rm, same);
        update_list(&mut c.ulimits, &self.ulimit_add, &self.ulimit_rm, |u| u.name.clone());
        for rm in &self.host_rm {
            let (name, ip) = rm.split_once(':').map_or((rm.as_str(), None), |(n, ip)| (n, Some(ip)));
            c.hosts.retain(|line| {
                let mut words = line.split_whitespace();
                let line_ip = words.next().unwrap_or("");
                !(words.any(|w| w == name) && ip.is_none_or(|ip| ip == line_ip))
            });
        }
        for add in &self.host_add {
            if !c.hosts.contains(add) {
                c.hosts.push(add.clone());
            }
        }
        for cap in &self.cap_add {
            c.cap_drop.retain(|d| d != cap);
            if !c.cap_add.contains(cap) {
                c.cap_add.push(cap.clone());
            }
        }
        for cap in &self.cap_drop {
            c.cap_add.retain(|a| a != cap);
            if !c.cap_drop.contains(cap) {
                c.cap_drop.push(cap.clone());
            }
        }
        if let Some(d) = &self.log_driver {
            c.log_driver = Some(d.clone());
        }
        self.single.apply(task);
    }
}

/// The kinds of `--mount` shoal runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A path of the node (entries written before mount types decode as this).
    #[default]
    Bind,
    /// A named volume of the node's engine, created there if missing (an
    /// empty source: a fresh anonymous volume per container).
    Volume,
    Tmpfs,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Volume => "volume",
            MountType::Tmpfs => "tmpfs",
        }
    }
}

/// One mount of a task's container, as Swarm's Mount. `source` and `target`
/// may use templates (`{{.Service.Name}}`, `{{.Task.Slot}}`, …), expanded
/// on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(default, rename = "type")]
    pub kind: MountType,
    #[serde(default)]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
    /// `bind-propagation` (rprivate, shared, …); `None`: Docker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_propagation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    /// Do not copy the image's files at the target into a new volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
    /// Labels of a volume this mount creates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The volume driver (`local` when `None`) and its options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsOptions {
    /// 0: Docker's default (no limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size_bytes: u64,
    /// Permission bits (`tmpfs-mode=1770`, octal); `None`: Docker's 1777.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// Docker's bind propagation modes.
pub const PROPAGATIONS: &[&str] = &["private", "rprivate", "shared", "rshared", "slave", "rslave"];

impl Mount {
    /// A bind mount of a node path.
    pub fn bind(source: &str, target: &str, readonly: bool) -> Mount {
        Mount { kind: MountType::Bind, source: source.into(), target: target.into(), readonly, ..Default::default() }
    }

    /// Docker's `--mount` syntax (`type=volume,source=v,target=/d,…`;
    /// volume when no type is given), with the docker CLI's error texts
    /// wrapped as pflag wraps them for `flag`.
    pub fn parse_flag(s: &str, flag: &str) -> Result<Mount, SpecError> {
        parse_mount(s).map_err(|e| SpecError::Invalid(flag_error(s, flag, &e)))
    }

    /// What Docker's daemon checks of a mount before it runs anything, in
    /// its words.
    pub fn validate(&self) -> Result<(), String> {
        let kind = self.kind.as_str();
        let bad = |why: String| Err(format!("invalid mount config for type {kind:?}: {why}"));
        if self.target.is_empty() {
            return bad("field Target must not be empty".into());
        }
        if !self.target.starts_with('/') && !self.target.starts_with("{{") {
            return bad(format!("invalid mount path: '{}' mount path must be absolute", self.target));
        }
        match self.kind {
            MountType::Bind => {
                if self.source.is_empty() {
                    return bad("field Source must not be empty".into());
                }
                if !self.source.starts_with('/') && !self.source.starts_with("{{") {
                    return bad(format!("invalid mount path: '{}' mount path must be absolute", self.source));
                }
            }
            MountType::Volume => {
                let local = self.volume.as_ref().and_then(|v| v.driver.as_deref()).is_none_or(|d| d == "local");
                if local && !self.source.is_empty() && !local_volume_name(&self.source) {
                    // The local driver's rule (moby's RestrictedNamePattern),
                    // checked before the spec is written rather than when
                    // each task fails on it.
                    return bad(format!(
                        "{:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed; for a host directory use type=bind",
                        self.source
                    ));
                }
            }
            MountType::Tmpfs => {
                if !self.source.is_empty() {
                    return bad("field Source must not be specified".into());
                }
            }
        }
        if self.volume.is_some() && self.kind != MountType::Volume {
            return bad("field VolumeOptions must not be specified".into());
        }
        if self.tmpfs.is_some() && self.kind != MountType::Tmpfs {
            return bad("field TmpfsOptions must not be specified".into());
        }
        if let Some(p) = &self.bind_propagation {
            if self.kind != MountType::Bind {
                return bad("field BindOptions must not be specified".into());
            }
            if !PROPAGATIONS.contains(&p.as_str()) {
                return bad(format!("invalid propagation mode: {p}"));
            }
        }
        Ok(())
    }
}

impl FromStr for Mount {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Mount::parse_flag(s, "--mount")
    }
}

/// One CSV record, as Go's `encoding/csv` reads it: commas split fields,
/// double quotes group (`""` inside them is a quote).
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            }
            '"' if at_start => quoted = true,
            '"' => return Err(format!("parse error on line 1, column {}: bare \" in non-quoted-field", out.len() + 1)),
            ',' if !quoted => {
                out.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            c => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err("parse error on line 1, column 0: extraneous or missing \" in quoted-field".into());
    }
    out.push(field);
    Ok(out)
}

fn parse_bool_value(key: &str, val: Option<&str>) -> Result<bool, String> {
    match val {
        None | Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(v) => Err(format!(
            "invalid value for '{key}': invalid boolean value ({v:?}): must be one of \"true\", \"1\", \"false\", or \"0\" (default \"true\")"
        )),
    }
}

/// docker's `MountOpt.Set`: its forms, its checks, its words.
fn parse_mount(value: &str) -> Result<Mount, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("value is empty".into());
    }
    let mut m = Mount { kind: MountType::Volume, ..Default::default() };
    let mut kind: Option<String> = None;
    let mut volume: Option<VolumeOptions> = None;
    let mut tmpfs: Option<TmpfsOptions> = None;
    let mut bind_opts = false;
    for field in csv_fields(value)? {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field.as_str(), None),
        };
        let k = key.trim();
        if k != key {
            return Err(format!("invalid option '{k}' in '{field}': option should not have whitespace"));
        }
        if let Some(v) = val {
            if v.trim().is_empty() {
                return Err(format!("invalid value for '{key}': value is empty"));
            }
            if v.trim() != v {
                return Err(format!("invalid value for '{key}' in '{field}': value should not have whitespace"));
            }
        }
        let key = key.to_ascii_lowercase();
        if val.is_none()
            && !matches!(key.as_str(), "readonly" | "ro" | "volume-nocopy" | "bind-nonrecursive" | "bind-create-src")
        {
            return Err(format!("invalid field '{field}' must be a key=value pair"));
        }
        let v = val.unwrap_or_default();
        match key.as_str() {
            "type" => kind = Some(v.to_ascii_lowercase()),
            "source" | "src" => m.source = v.to_string(),
            "target" | "dst" | "destination" => m.target = v.to_string(),
            "readonly" | "ro" => m.readonly = parse_bool_value(&key, val)?,
            "bind-propagation" => {
                bind_opts = true;
                m.bind_propagation = Some(v.to_ascii_lowercase());
            }
            "bind-nonrecursive" => {
                return Err("bind-nonrecursive is deprecated, use bind-recursive=disabled instead".into())
            }
            "volume-nocopy" => volume.get_or_insert_with(Default::default).nocopy = parse_bool_value(&key, val)?,
            "volume-label" => {
                let (lk, lv) = v.split_once('=').unwrap_or((v, ""));
                if !lk.is_empty() {
                    volume.get_or_insert_with(Default::default).labels.insert(lk.into(), lv.into());
                }
            }
            "volume-driver" => volume.get_or_insert_with(Default::default).driver = Some(v.to_string()),
            "volume-opt" => {
                let (ok, ov) = v.split_once('=').unwrap_or((v, ""));
                let vo = volume.get_or_insert_with(Default::default);
                if !ok.is_empty() {
                    vo.driver_opts.insert(ok.into(), ov.into());
                }
            }
            "tmpfs-size" => {
                let size = ram_in_bytes(v).ok_or_else(|| format!("invalid value for {key}: {v}"))?;
                tmpfs.get_or_insert_with(Default::default).size_bytes = size;
            }
            "tmpfs-mode" => {
                let mode = u32::from_str_radix(v, 8).map_err(|_| format!("invalid value for {key}: {v}"))?;
                tmpfs.get_or_insert_with(Default::default).mode = Some(mode);
            }
            "consistency" | "bind-recursive" | "bind-create-src" | "volume-subpath" | "image-subpath" => {
                return Err(format!("mount option '{key}' is not supported by shoal yet"))
            }
            _ => return Err(format!("unknown option '{key}' in '{field}'")),
        }
    }
    m.kind = match kind.as_deref() {
        None | Some("volume") => MountType::Volume,
        Some("bind") => MountType::Bind,
        Some("tmpfs") => MountType::Tmpfs,
        Some("") => return Err("type is required".into()),
        Some(other @ ("npipe" | "cluster" | "image")) => {
            return Err(format!("mount type '{other}' is not supported by shoal yet"))
        }
        Some(other) => return Err(format!("invalid mount config: mount type unknown: \"{other}\"")),
    };
    let kind = m.kind.as_str();
    if m.kind != MountType::Bind && bind_opts {
        return Err(format!("cannot mix 'bind-*' options with mount type '{kind}'"));
    }
    if m.kind != MountType::Volume && volume.is_some() {
        return Err(format!("cannot mix 'volume-*' options with mount type '{kind}'"));
    }
    if m.kind != MountType::Tmpfs && tmpfs.is_some() {
        return Err(format!("cannot mix 'tmpfs-*' options with mount type '{kind}'"));
    }
    m.volume = volume;
    m.tmpfs = tmpfs;
    m.validate()?;
    Ok(m)
}

/// go-units' `RAMInBytes`: `64m`, `1.5g`, `512k`, `1024`, `64MiB` (powers
/// of 1024).
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let bytes = n * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// One `--ulimit`: `nofile=1024:2048` (soft:hard) or `nofile=1024` (both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// The limits go-units knows by name.
const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl FromStr for Ulimit {
    type Err = String;
    /// go-units' `ParseUlimit`, with its words.
    fn from_str(val: &str) -> Result<Self, String> {
        let Some((name, limits)) = val.split_once('=') else {
            return Err(format!("invalid ulimit argument: {val}"));
        };
        if !ULIMITS.contains(&name) {
            return Err(format!("invalid ulimit type: {name}"));
        }
        let int = |s: &str| s.parse::<i64>().map_err(|_| format!("strconv.ParseInt: parsing {s:?}: invalid syntax"));
        let parts: Vec<&str> = limits.split(':').collect();
        let (soft, hard) = match parts.as_slice() {
            [soft] => (int(soft)?, int(soft)?),
            [soft, hard] => (int(soft)?, int(hard)?),
            _ => {
                return Err(format!(
                    "too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
                ))
            }
        };
        if hard != -1 && soft > hard {
            return Err(format!("ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"));
        }
        Ok(Ulimit { name: name.to_string(), soft, hard })
    }
}

impl Ulimit {
    pub fn parse_flag(s: &str, flag: &str) -> Result<Ulimit, SpecError> {
        s.parse().map_err(|e: String| SpecError::Invalid(flag_error(s, flag, &e)))
    }
}

/// `--log-driver` and its `--log-opt`s (Swarm's TaskTemplate.LogDriver).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDriver {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// Swarm's ContainerSpec.Isolation (`--isolation`): Docker's HostConfig
/// isolation. Swarm keeps one of three values, matching the flag's word
/// case-insensitively (moby's `convert.isolationToGRPC`); on Linux Docker
/// takes only `default` and refuses the others when the task's container is
/// created (`Invalid isolation: "process" - linux only supports 'default'`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Default,
    Process,
    Hyperv,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Default => "default",
            Isolation::Process => "process",
            Isolation::Hyperv => "hyperv",
        }
    }

    /// The flag's value; an empty one is Swarm's default (as docker's
    /// `service update --isolation ""` resets it). Swarm turns any other
    /// word into `default` without a word; shoal refuses it instead.
    pub fn parse_flag(s: &str, flag: &str) -> Result<Isolation, SpecError> {
        match s.to_ascii_lowercase().as_str() {
            "" | "default" => Ok(Isolation::Default),
            "process" => Ok(Isolation::Process),
            "hyperv" => Ok(Isolation::Hyperv),
            _ => Err(SpecError::Invalid(flag_error(
                s,
                flag,
                "invalid isolation: expected \"default\", \"process\" or \"hyperv\"",
            ))),
        }
    }
}

/// Swarm's Privileges.CredentialSpec (`--credential-spec`): a Windows
/// group-managed service account's spec, from a file, the registry or a
/// config. Docker on Linux refuses the security option it becomes
/// (`invalid --security-opt 2: "credentialspec=file://…"`), so a task with
/// one fails on a Linux node with Docker's error, as under Swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSpec {
    File(String),
    Registry(String),
    /// A config's name, as given.
    Config(String),
}

impl CredentialSpec {
    /// docker's `credentialSpecOpt.Set`: `file://…`, `registry://…` or
    /// `config://…`; the empty value means none (`Ok(None)`).
    pub fn parse_flag(s: &str, flag: &str) -> Result<Option<CredentialSpec>, SpecError> {
        if s.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| SpecError::Invalid(flag_error(s, flag, why));
        let spec = match s.split_once("://") {
            Some(("file", v)) => CredentialSpec::File(v.to_string()),
            Some(("registry", v)) => CredentialSpec::Registry(v.to_string()),
            Some(("config", v)) => CredentialSpec::Config(v.to_string()),
            _ => return Err(bad(
                "invalid credential spec: value must be prefixed with \"config://\", \"file://\", or \"registry://\"",
            )),
        };
        // docker's CLI lets `file://` through and the daemon refuses it so.
        if spec.value().is_empty() {
            return Err(SpecError::Invalid(
                "invalid CredentialSpec: must either provide \"file\", \"registry\", or \"config\" for credential spec"
                    .into(),
            ));
        }
        Ok(Some(spec))
    }

    pub fn value(&self) -> &str {
        match self {
            CredentialSpec::File(v) | CredentialSpec::Registry(v) | CredentialSpec::Config(v) => v,
        }
    }

    /// The security option Swarm's executor gives Docker for it.
    pub fn security_opt(&self) -> String {
        format!("credentialspec={self}")
    }
}

impl std::fmt::Display for CredentialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self {
            CredentialSpec::File(_) => "file",
            CredentialSpec::Registry(_) => "registry",
            CredentialSpec::Config(_) => "config",
        };
        write!(f, "{scheme}://{}", self.value())
    }
}

/// The registry credentials a service's tasks pull its image with
/// (`--with-registry-auth`; Swarm's ContainerSpec.PullOptions.RegistryAuth):
/// the CLI's login for the image's registry, sent with the spec. Kept in the
/// store (encrypted at rest with it), carried to the node with the task, and
/// never shown: the APIs strip it ([`crate::spec::TaskTemplate::redacted`])
/// and its `Debug` prints no value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// The registry the login is for (`127.0.0.1:5000`, `https://index.docker.io/v1/`).
    pub server_address: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth").field("server_address", &self.server_address).finish_non_exhaustive()
    }
}

/// The lines of an `--env-file`, as docker's `kvfile` reads them: blank
/// lines and `#` comments skipped, `KEY` alone taken from `lookup` (and
/// dropped when unset there), with its error texts.
pub fn parse_env_file(text: &[u8], lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let text = text.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(text);
    for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            return Err(format!("invalid utf8 bytes at line {}: {raw:?}", i + 1));
        };
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, has_value) = match line.split_once('=') {
            Some((k, _)) => (k, true),
            None => (line, false),
        };
        if key.is_empty() {
            return Err(format!("no variable name on line '{line}'"));
        }
        if key.contains([' ', '\t']) {
            return Err(format!("variable '{key}' contains whitespaces"));
        }
        if has_value {
            out.push(line.to_string());
        } else if let Some(v) = lookup(line) {
            out.push(format!("{key}={v}"));
        }
    }
    Ok(out)
}

/// Removes every entry `key_of` maps to a key in `rm`, then adds `add`,
/// each replacing an entry of the same key.
fn update_list<T: Clone>(list: &mut Vec<T>, add: &[T], rm: &[String], key_of: impl Fn(&T) -> String) {
    list.retain(|e| !rm.contains(&key_of(e)));
    for a in add {
        let k = key_of(a);
        list.retain(|e| key_of(e) != k);
        list.push(a.clone());
    }
}

fn update_map(map: &mut BTreeMap<String, String>, add: &BTreeMap<String, String>, rm: &[String]) {
    for k in rm {
        // `--sysctl-rm k=v` and `--container-label-rm k` both name the key.
        map.remove(k.split_once('=').map_or(k.as_str(), |(k, _)| k));
    }
    map.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
}

/// pflag's wording for a flag value it could not take.
pub fn flag_error(value: &str, flag: &str, why: &str) -> String {
    format!("invalid argument {value:?} for {flag:?} flag: {why}")
}

/// An `int` flag as pflag parses it (Go's `strconv.ParseInt` words); a
/// negative count means nothing to Docker, so it is refused too.
fn parse_int(s: &str) -> Result<u64, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n as u64),
        Ok(_) => Err("value must not be negative".into()),
        Err(_) => Err(format!("strconv.ParseInt: parsing {s:?}: invalid syntax")),
    }
}

/// docker's `PositiveDurationOpt`: a Go duration that is not negative.
pub fn positive_duration(s: &str) -> Result<u64, String> {
    let ns = parse_go_duration(s)?;
    u64::try_from(ns).map_err(|_| "duration cannot be negative".to_string())
}

/// Go's `time.ParseDuration`: `300ms`, `1.5h`, `2h45m`, `-1s`, `0`, in
/// nanoseconds, with Go's error texts.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (whole, after) = rest.split_at(digits);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
        let mut part = whole.checked_mul(scale).ok_or_else(invalid)?;
        let mut f_scale = scale;
        for d in frac.bytes() {
            f_scale /= 10;
            part += (d - b'0') as u128 * f_scale;
        }
        total = total.checked_add(part).ok_or_else(invalid)?;
        rest = after;
    }
    let total = i64::try_from(total).map_err(|_| invalid())?;
    Ok(if neg { -total } else { total })
}

/// A health state as Docker reports it for a container with a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// The error of a task whose container went unhealthy, as Swarm's executor
/// words it, with the last probe's output when there is one.
pub fn unhealthy_error(last_output: Option<&str>) -> String {
    let base = "dockerexec: unhealthy container";
    match last_output.map(str::trim).filter(|o| !o.is_empty()) {
        Some(o) => {
            let first = o.lines().next().unwrap_or(o);
            let cut: String = first.chars().take(200).collect();
            format!("{base}: {cut}")
        }
        None => base.to_string(),
    }
}

/// A name the local volume driver takes: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`,
/// with each `{{…}}` template counted as a letter (it is expanded on the node).
fn local_volume_name(source: &str) -> bool {
    let mut plain = String::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        plain.push_str(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => {
                plain.push('x');
                rest = &rest[start + end + 2..];
            }
            None => return false,
        }
    }
    plain.push_str(rest);
    let b = plain.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("2h45m"), Ok(9_900_000_000_000));
        assert_eq!(parse_go_duration("1m30.5s"), Ok(90_500_000_000));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert_eq!(parse_go_duration("10us"), Ok(10_000));
        assert_eq!(parse_go_duration("x").unwrap_err(), "time: invalid duration \"x\"");
        assert_eq!(parse_go_duration("").unwrap_err(), "time: invalid duration \"\"");
        assert_eq!(parse_go_duration("5").unwrap_err(), "time: missing unit in duration \"5\"");
        assert_eq!(parse_go_duration("1d").unwrap_err(), "time: unknown unit \"d\" in duration \"1d\"");
        assert_eq!(positive_duration("-1s").unwrap_err(), "duration cannot be negative");
    }

    #[test]
    fn health_flags_build_what_docker_builds() {
        let check = |f: HealthFlags| -> Result<Option<HealthCheck>, String> {
            let mut hc = None;
            f.patch()?.apply(&mut hc);
            Ok(hc)
        };
        assert_eq!(check(HealthFlags::default()), Ok(None));
        let f = HealthFlags {
            cmd: Some("test -f /ok"),
            interval: Some("1s"),
            timeout: Some("500ms"),
            retries: Some("2"),
            start_period: Some("3s"),
            ..Default::default()
        };
        assert_eq!(
            check(f),
            Ok(Some(HealthCheck {
                test: vec!["CMD-SHELL".into(), "test -f /ok".into()],
                interval_ns: 1_000_000_000,
                timeout_ns: 500_000_000,
                retries: 2,
                start_period_ns: 3_000_000_000,
                start_interval_ns: 0,
            }))
        );
        // Timings alone keep the image's test.
        let t = check(HealthFlags { interval: Some("2s"), ..Default::default() }).unwrap().unwrap();
        assert!(t.test.is_empty());
        assert_eq!(
            check(HealthFlags { no_healthcheck: true, ..Default::default() }),
            Ok(Some(HealthCheck::disabled()))
        );
        let clash = HealthFlags { no_healthcheck: true, retries: Some("1"), ..Default::default() };
        assert_eq!(clash.patch().unwrap_err(), "--no-healthcheck conflicts with --health-* options");
        let bad = HealthFlags { interval: Some("soon"), ..Default::default() };
        assert_eq!(
            bad.patch().unwrap_err(),
            "invalid argument \"soon\" for \"--health-interval\" flag: time: invalid duration \"soon\""
        );
        let neg = HealthFlags { timeout: Some("-2s"), ..Default::default() };
        assert_eq!(
            neg.patch().unwrap_err(),
            "invalid argument \"-2s\" for \"--health-timeout\" flag: duration cannot be negative"
        );
        let retries = HealthFlags { retries: Some("many"), ..Default::default() };
        assert_eq!(
            retries.patch().unwrap_err(),
            "invalid argument \"many\" for \"--health-retries\" flag: strconv.ParseInt: parsing \"many\": invalid syntax"
        );
        // On update, flags change only what they name; new timings undo --no-healthcheck.
        let mut hc = Some(HealthCheck::disabled());
        HealthFlags { interval: Some("5s"), ..Default::default() }.patch().unwrap().apply(&mut hc);
        assert_eq!(hc, Some(HealthCheck { interval_ns: 5_000_000_000, ..Default::default() }));
        let mut hc = Some(HealthCheck { test: vec!["CMD".into(), "true".into()], retries: 3, ..Default::default() });
        HealthFlags { retries: Some("1"), ..Default::default() }.patch().unwrap().apply(&mut hc);
        assert_eq!(hc, Some(HealthCheck { test: vec!["CMD".into(), "true".into()], retries: 1, ..Default::default() }));
    }

    #[test]
    fn mounts_parse_as_docker_reads_them() {
        let m: Mount = "type=bind,source=/tmp,target=/data,readonly".parse().unwrap();
        assert_eq!(m, Mount::bind("/tmp", "/data", true));
        let m: Mount = "type=bind,src=/a,dst=/b,bind-propagation=rshared".parse().unwrap();
        assert_eq!((m.readonly, m.bind_propagation.as_deref()), (false, Some("rshared")));
        // No type: a volume, as in docker.
        let m: Mount = "source=data-{{.Task.Slot}},target=/d,volume-driver=local,volume-opt=type=tmpfs,volume-opt=device=tmpfs,volume-nocopy,volume-label=a=b".parse().unwrap();
        assert_eq!(m.kind, MountType::Volume);
        assert_eq!(m.source, "data-{{.Task.Slot}}");
        let v = m.volume.expect("volume options");
        assert!(v.nocopy);
        assert_eq!(v.driver.as_deref(), Some("local"));
        assert_eq!(v.driver_opts, BTreeMap::from([("type".into(), "tmpfs".into()), ("device".into(), "tmpfs".into())]));
        assert_eq!(v.labels, BTreeMap::from([("a".into(), "b".into())]));
        let m: Mount = "type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770".parse().unwrap();
        assert_eq!(m.tmpfs, Some(TmpfsOptions { size_bytes: 64 << 20, mode: Some(0o1770) }));
        let m: Mount = "\"type=volume\",target=/anon".parse().unwrap();
        assert_eq!((m.kind, m.source.as_str()), (MountType::Volume, ""));

        let err = |s: &str| s.parse::<Mount>().unwrap_err().to_string();
        let flag = |s: &str, why: &str| format!("invalid argument {s:?} for \"--mount\" flag: {why}");
        for (bad, why) in [
            ("type=bind,target=/b", "invalid mount config for type \"bind\": field Source must not be empty"),
            ("type=bind,source=/a", "invalid mount config for type \"bind\": field Target must not be empty"),
            (
                "type=bind,source=rel,target=/b",
                "invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be absolute",
            ),
            ("type=bind,source=/a,target=/b,colour=red", "unknown option 'colour' in 'colour=red'"),
            ("garbage", "invalid field 'garbage' must be a key=value pair"),
            ("type=tmpfs,source=x,target=/t", "invalid mount config for type \"tmpfs\": field Source must not be specified"),
            (
                "source=/tmp,target=/d",
                "invalid mount config for type \"volume\": \"/tmp\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed; for a host directory use type=bind",
            ),
            ("type=bind,source=/a,target=/b,volume-nocopy", "cannot mix 'volume-*' options with mount type 'bind'"),
            ("type=volume,target=/b,tmpfs-size=1m", "cannot mix 'tmpfs-*' options with mount type 'volume'"),
            ("type=tmpfs,target=/t,tmpfs-size=lots", "invalid value for tmpfs-size: lots"),
            ("type=tmpfs,target=/t,tmpfs-mode=9", "invalid value for tmpfs-mode: 9"),
            (
                "target=/d,readonly=maybe",
                "invalid value for 'readonly': invalid boolean value (\"maybe\"): must be one of \"true\", \"1\", \"false\", or \"0\" (default \"true\")",
            ),
            ("type=,target=/d", "invalid value for 'type': value is empty"),
            ("type=bind, source=/a,target=/b", "invalid option 'source' in ' source=/a': option should not have whitespace"),
        ] {
            assert_eq!(err(bad), flag(bad, why), "{bad}");
        }
        assert_eq!(
            Mount::parse_flag("", "--mount-add").unwrap_err().to_string(),
            "invalid argument \"\" for \"--mount-add\" flag: value is empty"
        );
        // Entries written before mount types decode as bind mounts.
        let old: Mount = serde_json::from_str(r#"{"source":"/a","target":"/b","readonly":true}"#).unwrap();
        assert_eq!(old, Mount::bind("/a", "/b", true));
        assert_eq!(ram_in_bytes("1.5g"), Some(3 << 29));
        assert_eq!(ram_in_bytes("64MiB"), Some(64 << 20));
        assert_eq!(ram_in_bytes("1024"), Some(1024));
        assert_eq!(ram_in_bytes("x"), None);
    }

    #[test]
    fn ulimits_env_files_and_list_updates() {
        assert_eq!("nofile=1024:2048".parse(), Ok(Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }));
        assert_eq!("nproc=64".parse(), Ok(Ulimit { name: "nproc".into(), soft: 64, hard: 64 }));
        assert_eq!("nofile".parse::<Ulimit>().unwrap_err(), "invalid ulimit argument: nofile");
        assert_eq!("files=1".parse::<Ulimit>().unwrap_err(), "invalid ulimit type: files");
        assert_eq!(
            "nofile=1:2:3".parse::<Ulimit>().unwrap_err(),
            "too many limit value arguments - 1:2:3, can only have up to two, `soft[:hard]`"
        );
        let env = parse_env_file(b"\xEF\xBB\xBF# c\nA=1\n\n  B=two words\nHOME\nUNSET\r\n", |k| {
            (k == "HOME").then(|| "/root".to_string())
        });
        assert_eq!(env, Ok(vec!["A=1".to_string(), "B=two words".into(), "HOME=/root".into()]));
        assert_eq!(parse_env_file(b"=x\n", |_| None).unwrap_err(), "no variable name on line '=x'");
        assert_eq!(parse_env_file(b"A B=1\n", |_| None).unwrap_err(), "variable 'A B' contains whitespaces");

        let mut t = TaskTemplate::new("i");
        t.container.cap_drop = vec!["NET_RAW".into()];
        t.container.hosts = vec!["10.0.0.1 db".into(), "10.0.0.2 cache".into()];
        t.container.labels = BTreeMap::from([("a".into(), "1".into())]);
        t.container.ulimits = vec!["nofile=10".parse().unwrap()];
        let u = ContainerUpdate {
            label_add: BTreeMap::from([("b".into(), "2".into())]),
            label_rm: vec!["a".into()],
            cap_add: vec!["NET_RAW".into()],
            host_rm: vec!["db".into()],
            host_add: vec!["10.0.0.3 web".into()],
            ulimit_add: vec!["nofile=20".parse().unwrap()],
            dns_add: vec!["10.0.0.53".into()],
            ..Default::default()
        };
        u.apply(&mut t);
        let c = &t.container;
        assert_eq!(c.labels, BTreeMap::from([("b".into(), "2".into())]));
        assert_eq!((c.cap_add.as_slice(), c.cap_drop.as_slice()), (&["NET_RAW".to_string()][..], &[][..]));
        assert_eq!(c.hosts, ["10.0.0.2 cache", "10.0.0.3 web"]);
        assert_eq!(c.ulimits, ["nofile=20".parse::<Ulimit>().unwrap()]);
        assert_eq!(c.dns, ["10.0.0.53"]);
    }

    #[test]
    fn the_unhealthy_error_names_the_probe_output() {
        assert_eq!(unhealthy_error(None), "dockerexec: unhealthy container");
        assert_eq!(unhealthy_error(Some("  \n")), "dockerexec: unhealthy container");
        assert_eq!(unhealthy_error(Some("no /ok\nmore")), "dockerexec: unhealthy container: no /ok");
    }

    #[test]
    fn isolation_and_credential_specs_parse_as_docker_and_swarm_read_them() {
        assert_eq!(Isolation::parse_flag("HyperV", "--isolation").unwrap(), Isolation::Hyperv);
        assert_eq!(Isolation::parse_flag("", "--isolation").unwrap(), Isolation::Default);
        assert_eq!(
            Isolation::parse_flag("vm", "--isolation").unwrap_err().to_string(),
            "invalid argument \"vm\" for \"--isolation\" flag: invalid isolation: expected \"default\", \"process\" or \"hyperv\""
        );
        let cs = CredentialSpec::parse_flag("registry://HKLM\\x", "--credential-spec").unwrap().unwrap();
        assert_eq!(cs, CredentialSpec::Registry("HKLM\\x".into()));
        assert_eq!(cs.security_opt(), "credentialspec=registry://HKLM\\x");
        assert_eq!(CredentialSpec::parse_flag("", "--credential-spec").unwrap(), None);
        assert!(CredentialSpec::parse_flag("http://x", "--credential-spec").is_err());
        assert!(CredentialSpec::parse_flag("config://", "--credential-spec").is_err());
        // An update's `""` says "remove", apart from the flag not given.
        let v: SingleValues = serde_json::from_str(r#"{"credential_spec":null}"#).unwrap();
        assert_eq!(v.credential_spec, Some(None));
        let v: SingleValues = serde_json::from_str("{}").unwrap();
        assert_eq!(v.credential_spec, None);
        let back: SingleValues = serde_json::from_str(
            &serde_json::to_string(&SingleValues { credential_spec: Some(None), ..Default::default() }).unwrap(),
        )
        .unwrap();
        assert_eq!(back.credential_spec, Some(None), "round-trips");
    }

    #[test]
    fn a_registry_login_never_prints_its_password() {
        let a = RegistryAuth { username: "alice".into(), password: "s3cret".into(), server_address: "r.io".into() };
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("alice"), "{shown}");
    }
}
