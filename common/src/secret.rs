//! Secrets and configs: named blobs kept in the replicated store and mounted
//! into a service's tasks as files, as Swarm's are.
//!
//! The two kinds share one shape ([`Stored`], [`FileRef`]) and differ in
//! what is shown and where the file lands:
//!
//! - a **secret**'s value is never shown (inspect, list, logs) and is mounted
//!   under `/run/secrets/` (a relative target) from a tmpfs on the node;
//! - a **config**'s value may be read back, and a relative target is under
//!   `/`.
//!
//! Both are immutable once created (only their labels change), and a
//! service refers to one by id, with its name beside it for display.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ConfigId, SecretId};
use crate::time::Millis;

/// Swarm's limit on a secret's value (swarmkit's `MaxSecretSize`).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
/// Swarm's limit on a config's value (swarmkit's `MaxConfigSize`).
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;
/// The file mode a reference gets when it names none (docker's default).
pub const DEFAULT_MODE: u32 = 0o444;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn max_bytes(self) -> usize {
        match self {
            Kind::Secret => MAX_SECRET_BYTES,
            Kind::Config => MAX_CONFIG_BYTES,
        }
    }

    /// Where a relative target lands in the container.
    pub fn mount_dir(self) -> &'static str {
        match self {
            Kind::Secret => "/run/secrets",
            Kind::Config => "/",
        }
    }

    /// A relative or absolute target as the path in the container.
    pub fn target_path(self, target: &str) -> String {
        if target.starts_with('/') {
            target.to_string()
        } else {
            format!("{}/{}", self.mount_dir().trim_end_matches('/'), target)
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        })
    }
}

/// A secret or config as the store keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored<Id> {
    pub id: Id,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default)]
    pub version: u64,
}

/// Never prints the value: a secret must not reach a log through `{:?}`.
impl<Id: fmt::Debug> fmt::Debug for Stored<Id> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

pub type Secret = Stored<SecretId>;
pub type Config = Stored<ConfigId>;

/// A service's use of a secret or config: which one, and the file it
/// becomes in each task's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef<Id> {
    pub id: Id,
    pub name: String,
    /// Relative (under [`Kind::mount_dir`]) or absolute.
    pub target: String,
    pub uid: String,
    pub gid: String,
    pub mode: u32,
}

pub type SecretRef = FileRef<SecretId>;
pub type ConfigRef = FileRef<ConfigId>;

/// A value as it is sent to a node that runs a task using it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    pub kind: Kind,
    pub id: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for FileData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileData({} {}, {} bytes)", self.kind, self.id, self.data.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SecretError {
    /// swarmkit's wording.
    #[error(
        "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]"
    )]
    Name,
    #[error("{kind} data must be larger than 0 and less than {max} bytes")]
    Size { kind: Kind, max: usize },
    /// docker's flag errors (the CLI prefixes `invalid argument … for "--secret" flag: `).
    #[error("invalid field '{0}' must be a key=value pair")]
    Field(String),
    #[error("invalid field in {0} request: {1}")]
    UnknownField(Kind, String),
    #[error("invalid mode specified: {0}")]
    Mode(String),
    #[error("source is required")]
    NoSource,
    #[error("{kind} references '{first}' and '{second}' have a conflicting target: '{target}'")]
    TargetTwice { kind: Kind, first: String, second: String, target: String },
    #[error("invalid {kind} target {target:?}: {why}")]
    Target { kind: Kind, target: String, why: &'static str },
}

/// Swarm's rule for secret and config names: 1–64 of `[a-zA-Z0-9-_.]`,
/// starting and ending with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SecretError::Name)
    }
}

pub fn validate_data(kind: Kind, data: &[u8]) -> Result<(), SecretError> {
    if data.is_empty() || data.len() >= kind.max_bytes() {
        return Err(SecretError::Size { kind, max: kind.max_bytes() });
    }
    Ok(())
}

/// A target must name a file: no `..` that climbs out, no empty name.
pub fn validate_target(kind: Kind, target: &str) -> Result<(), SecretError> {
    let bad = |why| Err(SecretError::Target { kind, target: target.to_string(), why });
    if target.is_empty() || target.ends_with('/') {
        return bad("it must name a file");
    }
    if target.split('/').any(|p| p == "..") {
        return bad("it must not contain ..");
    }
    if target.contains('\0') {
        return bad("it must not contain a NUL byte");
    }
    Ok(())
}

/// A spec's references of one kind: each target valid, no two the same
/// (swarmkit's check and wording).
pub fn validate_refs<Id>(kind: Kind, refs: &[FileRef<Id>]) -> Result<(), SecretError> {
    for (i, r) in refs.iter().enumerate() {
        validate_target(kind, &r.target)?;
        if let Some(other) = refs[..i].iter().find(|o| kind.target_path(&o.target) == kind.target_path(&r.target)) {
            return Err(SecretError::TargetTwice {
                kind,
                first: other.name.clone(),
                second: r.name.clone(),
                target: r.target.clone(),
            });
        }
    }
    Ok(())
}

/// docker's `--secret`/`--config` value: `NAME`, or CSV fields
/// `source=NAME,target=PATH,uid=0,gid=0,mode=0444` (`src` for source; mode
/// in Go's base-prefixed form: `0444` octal, `292` decimal, `0x124` hex).
/// The id is left empty: the manager looks the name up when it takes the
/// spec.
pub fn parse_ref<Id: From<String>>(kind: Kind, s: &str) -> Result<FileRef<Id>, SecretError> {
    let mut req = FileRef {
        id: Id::from(String::new()),
        name: String::new(),
        target: String::new(),
        uid: "0".into(),
        gid: "0".into(),
        mode: DEFAULT_MODE,
    };
    let fields: Vec<&str> = s.split(',').collect();
    if fields.len() == 1 && !s.contains('=') {
        req.name = s.to_string();
        req.target = s.to_string();
        return Ok(req);
    }
    for field in fields {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) if !k.is_empty() => (k, v),
            _ => return Err(SecretError::Field(field.to_string())),
        };
        match key.to_ascii_lowercase().as_str() {
            "source" | "src" => req.name = val.to_string(),
            "target" => req.target = val.to_string(),
            "uid" => req.uid = val.to_string(),
            "gid" => req.gid = val.to_string(),
            "mode" => req.mode = parse_mode(val)?,
            _ => return Err(SecretError::UnknownField(kind, key.to_string())),
        }
    }
    if req.name.is_empty() {
        return Err(SecretError::NoSource);
    }
    if req.target.is_empty() {
        req.target = req.name.clone();
    }
    Ok(req)
}

/// Go's `strconv.ParseUint(s, 0, 32)`: `0x`/`0o`/`0b` prefixes, a leading
/// `0` for octal, else decimal.
fn parse_mode(s: &str) -> Result<u32, SecretError> {
    let err = || SecretError::Mode(format!("strconv.ParseUint: parsing {s:?}: invalid syntax"));
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(o) = s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")) {
        (o, 8)
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        (b, 2)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return Err(err());
    }
    u32::from_str_radix(digits, radix).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_swarm() {
        for ok in ["a", "db-password", "x.y_z", "A9"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "-a", "a-", "a b", "a/b", long.as_str()] {
            assert_eq!(validate_name(bad), Err(SecretError::Name), "{bad:?}");
        }
    }

    #[test]
    fn short_and_long_forms_parse_with_docker_defaults() {
        let r: SecretRef = parse_ref(Kind::Secret, "db").unwrap();
        assert_eq!((r.name.as_str(), r.target.as_str(), r.uid.as_str(), r.mode), ("db", "db", "0", 0o444));
        let r: SecretRef = parse_ref(Kind::Secret, "src=db,target=/etc/db.pw,uid=100,gid=101,mode=0400").unwrap();
        let want = FileRef {
            id: SecretId::from(""),
            name: "db".into(),
            target: "/etc/db.pw".into(),
            uid: "100".into(),
            gid: "101".into(),
            mode: 0o400,
        };
        assert_eq!(r, want);
        let c = |s| parse_ref::<ConfigId>(Kind::Config, s).unwrap();
        assert_eq!(c("source=c,mode=292").mode, 0o444);
        assert_eq!(c("source=c,mode=0x124").mode, 0o444);
        assert_eq!(c("source=c").target, "c");
    }

    #[test]
    fn malformed_references_say_what_docker_says() {
        let e = |s| parse_ref::<SecretId>(Kind::Secret, s).unwrap_err().to_string();
        assert_eq!(e("target=x"), "source is required");
        assert_eq!(e("source=a,oops"), "invalid field 'oops' must be a key=value pair");
        assert_eq!(e("source=a,colour=red"), "invalid field in secret request: colour");
        assert_eq!(e("source=a,mode=rw"), "invalid mode specified: strconv.ParseUint: parsing \"rw\": invalid syntax");
        assert_eq!(
            e("source=a,mode=0999"),
            "invalid mode specified: strconv.ParseUint: parsing \"0999\": invalid syntax"
        );
    }

    #[test]
    fn targets_and_sizes() {
        assert_eq!(Kind::Secret.target_path("db"), "/run/secrets/db");
        assert_eq!(Kind::Secret.target_path("/etc/x"), "/etc/x");
        assert_eq!(Kind::Config.target_path("nginx.conf"), "/nginx.conf");
        assert!(validate_target(Kind::Secret, "../../etc/shadow").is_err());
        assert!(validate_target(Kind::Secret, "").is_err());
        assert!(validate_target(Kind::Config, "/etc/app/").is_err());
        assert_eq!(validate_target(Kind::Config, "/etc/app.conf"), Ok(()));
        assert!(validate_data(Kind::Secret, b"").is_err());
        assert!(validate_data(Kind::Secret, &vec![0; MAX_SECRET_BYTES]).is_err());
        assert_eq!(validate_data(Kind::Config, &vec![0; MAX_SECRET_BYTES]), Ok(()));
        assert_eq!(
            validate_data(Kind::Secret, b"").unwrap_err().to_string(),
            "secret data must be larger than 0 and less than 512000 bytes"
        );
    }

    #[test]
    fn debug_never_shows_a_value() {
        let s = Secret {
            id: SecretId::from("s1"),
            name: "pw".into(),
            labels: BTreeMap::new(),
            data: b"hunter2".to_vec(),
            created_at: 0,
            updated_at: 0,
            version: 1,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let d = FileData { kind: Kind::Secret, id: "s1".into(), data: b"hunter2".to_vec() };
        assert!(!format!("{d:?}").contains("hunter2"));
    }
}
