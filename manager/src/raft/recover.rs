//! `shoal daemon --force-new-cluster`: disaster recovery when a majority of
//! managers is lost for good.
//!
//! Like etcd's (and so Swarm's) force-new-cluster, every entry in this
//! manager's log is kept, including any whose commit it never heard of (a
//! write acknowledged by a majority that included this manager must not be
//! lost). The result is stored as a snapshot whose configuration has this
//! manager as the only voter; the other managers become workers in the
//! store, so that nothing adds them back.

use std::path::Path;

use common::node::Role;
use common::NodeId;
use raft::eraftpb::{ConfState, EntryType, Snapshot};
use raft::{GetEntriesContext, Storage};

use super::storage::keys::DataKey;
use super::storage::DiskStorage;
use super::{parse_context, RaftError};
use crate::store::{decode_command, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The log index the new cluster starts from.
    pub index: u64,
    pub services: usize,
    /// Hostnames of the managers that were made workers.
    pub demoted: Vec<String>,
}

/// Applies the whole log as a manager would, so an entry this version
/// cannot read and must not skip refuses the recovery (the store would not
/// be the cluster's).
pub fn force_new_cluster(dir: &Path, key: DataKey, raft_id: u64, me: &NodeId) -> Result<Recovered, RaftError> {
    let mut storage =
        DiskStorage::open(dir, key).map_err(|source| RaftError::Open { dir: dir.to_path_buf(), source })?;
    let mut store = match storage.snapshot_data() {
        Some((index, _, data)) => {
            Store::from_snapshot(&data).map_err(|reason| RaftError::CorruptSnapshot { index, reason })?
        }
        None => Store::default(),
    };
    let first = storage.first_index()?;
    let last = storage.last_index()?;
    let snap_index = storage.snapshot_data().map(|(i, _, _)| i).unwrap_or(0);
    let mut index = snap_index;
    if last >= first {
        let entries = storage.entries(first, last + 1, None, GetEntriesContext::empty(false))?;
        for e in entries {
            index = e.index;
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                continue;
            }
            match decode_command(&e.data) {
                // A command the store refuses leaves it unchanged, as it
                // did on every manager.
                Ok(cmd) => drop(store.apply_once(parse_context(&e.context), cmd, &mut Vec::new())),
                Err(err) if err.ignorable => {
                    tracing::warn!(index = e.index, error = %err, "skipping an ignorable log entry this version cannot read")
                }
                Err(source) => return Err(RaftError::UnreadableEntry { index: e.index, source }),
            }
        }
    }
    if store.cluster.id.is_empty() {
        return Err(RaftError::NothingToRecover(dir.to_path_buf()));
    }
    if !store.nodes.get(me).is_some_and(|n| n.role == Role::Manager) {
        return Err(RaftError::NotAManager);
    }
    let mut demoted = Vec::new();
    for n in store.nodes.values_mut() {
        if n.role == Role::Manager && &n.id != me {
            n.role = Role::Worker;
            demoted.push(n.hostname.clone());
        }
    }
    let term = if index == snap_index {
        storage.snapshot_data().map(|(_, t, _)| t).unwrap_or(0).max(1)
    } else {
        storage.term(index)?
    };
    let mut snap = Snapshot { data: store.to_snapshot().into(), ..Default::default() };
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(ConfState { voters: vec![raft_id], ..Default::default() });
    let services = store.services.len();
    storage.apply_snapshot(snap)?;
    Ok(Recovered { index, services, demoted })
}
