//! Placement constraints: `node.role==manager`, `node.labels.zone!=east`, …
//! Several constraints on one service are ANDed. `node.platform.*` and
//! `engine.labels.*` match what the node reports ([`NodeDescription`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::sched::NodeDescription;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    Id,
    Hostname,
    Role,
    Label(String),
    PlatformOs,
    PlatformArch,
    EngineLabel(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Eq,
    Ne,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub field: Field,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("invalid constraint {0:?}: expected KEY==VALUE or KEY!=VALUE")]
    Syntax(String),
    #[error(
        "invalid constraint {0:?}: unknown key {1:?} (expected node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.KEY or engine.labels.KEY)"
    )]
    UnknownKey(String, String),
    #[error("invalid constraint {0:?}: empty value")]
    EmptyValue(String),
    #[error("invalid constraint {0:?}: node.role must be manager or worker")]
    BadRole(String),
}

impl Constraint {
    pub fn parse(s: &str) -> Result<Self, ConstraintError> {
        let (key, op, value) = if let Some((k, v)) = s.split_once("==") {
            (k, Op::Eq, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, Op::Ne, v)
        } else {
            return Err(ConstraintError::Syntax(s.to_string()));
        };
        let key = key.trim();
        let value = value.trim();
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(s.to_string()));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(ConstraintError::Syntax(s.to_string()));
        }
        let field = match key.to_ascii_lowercase().as_str() {
            "node.id" => Field::Id,
            "node.hostname" => Field::Hostname,
            "node.role" => {
                if !matches!(value, "manager" | "worker") {
                    return Err(ConstraintError::BadRole(s.to_string()));
                }
                Field::Role
            }
            "node.platform.os" => Field::PlatformOs,
            "node.platform.arch" => Field::PlatformArch,
            lower => match (lower.strip_prefix("node.labels."), lower.strip_prefix("engine.labels.")) {
                (Some(_), _) if key.len() > "node.labels.".len() => {
                    Field::Label(key["node.labels.".len()..].to_string())
                }
                (_, Some(_)) if key.len() > "engine.labels.".len() => {
                    Field::EngineLabel(key["engine.labels.".len()..].to_string())
                }
                _ => return Err(ConstraintError::UnknownKey(s.to_string(), key.to_string())),
            },
        };
        Ok(Constraint { field, op, value: value.to_string() })
    }

    pub fn matches(&self, node: &Node) -> bool {
        self.matches_described(node, None)
    }

    /// Matches against the node and what it reports; a node that reported
    /// nothing has no platform and no engine labels.
    pub fn matches_described(&self, node: &Node, desc: Option<&NodeDescription>) -> bool {
        let actual: Option<String> = match &self.field {
            Field::Id => Some(node.id.to_string()),
            Field::Hostname => Some(node.hostname.clone()),
            Field::Role => Some(node.role.to_string()),
            Field::Label(k) => node.labels.get(k).cloned(),
            Field::PlatformOs => desc.map(|d| d.os.clone()).filter(|s| !s.is_empty()),
            Field::PlatformArch => desc.map(|d| d.arch.clone()).filter(|s| !s.is_empty()),
            Field::EngineLabel(k) => desc.and_then(|d| d.engine_labels.get(k).cloned()),
        };
        // Swarm compares the platform without regard to case.
        let equal = match (&self.field, actual.as_deref()) {
            (Field::PlatformOs | Field::PlatformArch, Some(a)) => a.eq_ignore_ascii_case(&self.value),
            (_, a) => a == Some(self.value.as_str()),
        };
        match self.op {
            Op::Eq => equal,
            Op::Ne => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.field {
            Field::Id => "node.id".to_string(),
            Field::Hostname => "node.hostname".to_string(),
            Field::Role => "node.role".to_string(),
            Field::Label(k) => format!("node.labels.{k}"),
            Field::PlatformOs => "node.platform.os".to_string(),
            Field::PlatformArch => "node.platform.arch".to_string(),
            Field::EngineLabel(k) => format!("engine.labels.{k}"),
        };
        let op = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, "{key}{op}{}", self.value)
    }
}

/// True when the node satisfies every constraint (an empty list always does).
pub fn all_match(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

/// [`all_match`] with what the node reports about itself.
pub fn all_match_described(constraints: &[Constraint], node: &Node, desc: Option<&NodeDescription>) -> bool {
    constraints.iter().all(|c| c.matches_described(node, desc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Availability, Role};
    use std::collections::BTreeMap;

    fn node(hostname: &str, role: Role, labels: &[(&str, &str)]) -> Node {
        Node {
            id: format!("id-{hostname}").as_str().into(),
            raft_id: 1,
            hostname: hostname.into(),
            role,
            availability: Availability::Active,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            addr: "127.0.0.1:4242".parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn parses_each_key_and_operator() {
        let c = Constraint::parse("node.role==manager").unwrap();
        assert_eq!((c.field, c.op, c.value.as_str()), (Field::Role, Op::Eq, "manager"));
        let c = Constraint::parse("node.labels.zone != east").unwrap();
        assert_eq!(c.field, Field::Label("zone".into()));
        assert_eq!(c.op, Op::Ne);
        assert_eq!(c.to_string(), "node.labels.zone!=east");
        assert_eq!(Constraint::parse("node.hostname==n1").unwrap().field, Field::Hostname);
        assert_eq!(Constraint::parse("NODE.ID==abc").unwrap().field, Field::Id);
    }

    #[test]
    fn rejects_bad_syntax_with_a_reason() {
        assert!(matches!(Constraint::parse("node.role=manager"), Err(ConstraintError::Syntax(_))));
        assert!(matches!(Constraint::parse("node.role=="), Err(ConstraintError::EmptyValue(_))));
        assert!(matches!(Constraint::parse("node.colour==red"), Err(ConstraintError::UnknownKey(_, _))));
        assert!(matches!(Constraint::parse("node.labels.==x"), Err(ConstraintError::UnknownKey(_, _))));
        assert!(matches!(Constraint::parse("node.role==boss"), Err(ConstraintError::BadRole(_))));
        assert!(matches!(
            Constraint::parse("a==b==c"),
            Err(ConstraintError::UnknownKey(_, _)) | Err(ConstraintError::Syntax(_))
        ));
        let msg = Constraint::parse("nonsense").unwrap_err().to_string();
        assert!(msg.contains("KEY==VALUE"), "{msg}");
    }

    #[test]
    fn matching_is_anded() {
        let m = node("n1", Role::Manager, &[("zone", "east")]);
        let w = node("n2", Role::Worker, &[]);
        let cs = vec![
            Constraint::parse("node.role==manager").unwrap(),
            Constraint::parse("node.labels.zone==east").unwrap(),
        ];
        assert!(all_match(&cs, &m));
        assert!(!all_match(&cs, &w));
        // A missing label is "not equal".
        let ne = Constraint::parse("node.labels.zone!=east").unwrap();
        assert!(ne.matches(&w));
        assert!(!ne.matches(&m));
        assert!(all_match(&[], &w));
        assert!(Constraint::parse("node.hostname!=n1").unwrap().matches(&w));
        assert!(Constraint::parse("node.id==id-n2").unwrap().matches(&w));
    }

    #[test]
    fn platform_and_engine_labels_match_what_the_node_reports() {
        let n = node("n1", Role::Worker, &[]);
        let desc = NodeDescription {
            os: "linux".into(),
            arch: "x86_64".into(),
            engine_labels: BTreeMap::from([("storage".to_string(), "ssd".to_string())]),
            ..Default::default()
        };
        let c = |s: &str| Constraint::parse(s).unwrap();
        assert_eq!(c("node.platform.os==linux").field, Field::PlatformOs);
        assert_eq!(c("engine.labels.storage==ssd").to_string(), "engine.labels.storage==ssd");
        assert!(c("node.platform.os==Linux").matches_described(&n, Some(&desc)));
        assert!(c("node.platform.arch!=aarch64").matches_described(&n, Some(&desc)));
        assert!(!c("node.platform.arch==aarch64").matches_described(&n, Some(&desc)));
        assert!(c("engine.labels.storage==ssd").matches_described(&n, Some(&desc)));
        assert!(!c("engine.labels.storage==ssd").matches(&n), "a node that reported nothing");
        assert!(c("engine.labels.storage!=ssd").matches(&n));
        assert!(all_match_described(&[c("node.platform.os==linux"), c("node.role==worker")], &n, Some(&desc)));
        assert!(matches!(Constraint::parse("engine.labels.==x"), Err(ConstraintError::UnknownKey(_, _))));
        assert!(matches!(Constraint::parse("node.platform.cpu==x"), Err(ConstraintError::UnknownKey(_, _))));
    }
}
