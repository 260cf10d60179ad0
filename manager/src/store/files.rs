//! The store's secrets and configs: their apply rules, shared by both kinds.
//!
//! Rules: names are unique per kind; the value never changes after create
//! (only labels, at an expected version); a service may name only ones
//! that exist, and one a service names cannot be removed.

use std::collections::BTreeMap;

use common::secret::{FileRef, Kind, Stored};
use common::time::Millis;
use serde::{Deserialize, Serialize};

use super::{Service, StoreError};

/// One kind's table, keyed by id.
pub type Table<Id> = BTreeMap<Id, Stored<Id>>;

pub fn by_name<'a, Id>(table: &'a Table<Id>, name: &str) -> Option<&'a Stored<Id>> {
    table.values().find(|s| s.name == name)
}

/// By full id, name, or unique id prefix (as docker finds them).
pub fn find<'a, Id: Ord + From<String> + AsRef<str>>(table: &'a Table<Id>, key: &str) -> Option<&'a Stored<Id>> {
    if let Some(s) = table.get(&Id::from(key.to_string())) {
        return Some(s);
    }
    if let Some(s) = by_name(table, key) {
        return Some(s);
    }
    let mut matches = table.values().filter(|s| s.id.as_ref().starts_with(key));
    match (matches.next(), matches.next()) {
        (Some(s), None) if !key.is_empty() => Some(s),
        _ => None,
    }
}

pub fn create<Id: Ord + Clone>(table: &mut Table<Id>, kind: Kind, item: Stored<Id>) -> Result<(), StoreError> {
    if by_name(table, &item.name).is_some() {
        return Err(StoreError::FileNameInUse(kind, item.name));
    }
    table.insert(item.id.clone(), item);
    Ok(())
}

pub fn update_labels<Id: Ord + std::fmt::Display>(
    table: &mut Table<Id>,
    kind: Kind,
    id: &Id,
    labels: BTreeMap<String, String>,
    at: Millis,
    expect_version: Option<u64>,
) -> Result<String, StoreError> {
    let item = table.get_mut(id).ok_or_else(|| StoreError::NoSuchFile(kind, id.to_string()))?;
    if let Some(v) = expect_version.filter(|v| *v != item.version) {
        return Err(StoreError::FileConflict(kind, id.to_string(), item.version, v));
    }
    item.labels = labels;
    item.version += 1;
    item.updated_at = at;
    Ok(item.name.clone())
}

/// Refused while a service names it, naming those services. Returns the
/// removed one's name.
pub fn remove<'a, Id: Ord + std::fmt::Display + 'a>(
    table: &mut Table<Id>,
    kind: Kind,
    id: &Id,
    users: impl Iterator<Item = &'a Service>,
    refs: impl Fn(&'a Service) -> &'a [FileRef<Id>],
) -> Result<String, StoreError> {
    let item = table.get(id).ok_or_else(|| StoreError::NoSuchFile(kind, id.to_string()))?;
    let using: Vec<String> =
        users.filter(|s| refs(s).iter().any(|r| r.id == *id)).map(|s| s.spec.name.clone()).collect();
    if !using.is_empty() {
        return Err(StoreError::FileInUse { kind, name: item.name.clone(), services: using });
    }
    Ok(table.remove(id).map(|s| s.name).unwrap_or_default())
}

/// Every reference names one that exists.
pub fn check_refs<Id: Ord>(table: &Table<Id>, kind: Kind, refs: &[FileRef<Id>]) -> Result<(), StoreError> {
    match refs.iter().find(|r| !table.contains_key(&r.id)) {
        Some(r) => Err(StoreError::NoSuchFile(kind, r.name.clone())),
        None => Ok(()),
    }
}

/// The labels-only change the Engine API's `/secrets/{id}/update` makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelsUpdate<Id> {
    pub id: Id,
    pub labels: BTreeMap<String, String>,
    pub at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
}
