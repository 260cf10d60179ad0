//! Opening a storage directory: its files are replayed into memory, a torn
//! write at the end of the log is cut off, and what a crash inside one of
//! the multi-file operations left behind is repaired.
//!
//! Crash recovery on open, for the multi-file operations:
//! - `compact` writes the snapshot first, then rewrites the log. A crash in
//!   between leaves log entries at or below the snapshot index; they are
//!   dropped (and the log rewritten) on open.
//! - `apply_snapshot` writes the snapshot, then an empty log, then the hard
//!   state. The snapshot file records that it came from the leader and the
//!   hard-state file records which snapshot index it was written after, so a
//!   hard state older than a received snapshot is repaired on open (conf state
//!   from the snapshot, commit and term raised to it). A log that does not
//!   contain the snapshot's index with its term is from the replaced history
//!   and is dropped.
//!
//! Plaintext written before encryption at rest (log records without the
//! encrypted bit, a version-1 snapshot) is read and then migrated right
//! here: the snapshot and the log are rewritten encrypted (each atomically,
//! the snapshot first; a crash in between leaves a plaintext log that the
//! next open migrates).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use super::files::{read_sealed, sync_dir, tmp_path, write_atomic, PROBE_FILE};
use super::format::{
    decode_entries, decode_hardstate, decode_record, decode_snapshot, encode_entries, encode_hardstate,
    encode_snapshot, BadRecord, SnapshotOrigin, ENCRYPTED_SNAPSHOT_VERSION, FORMAT_VERSION,
};
use super::keys::DataKey;
use super::{DiskStorage, Result, StorageError, HARDSTATE_FILE, LOG_FILE, SNAPSHOT_FILE};

impl DiskStorage {
    /// Opens (creating if missing) the storage in `dir` and replays its
    /// files, decrypting them with `key` (see [`super::keys`]).
    pub fn open(dir: &Path, key: DataKey) -> Result<DiskStorage> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
        // Left by a crash during a space probe.
        let _ = fs::remove_file(dir.join(PROBE_FILE));
        for name in [LOG_FILE, HARDSTATE_FILE, SNAPSHOT_FILE] {
            // A leftover tmp file is a write that never reached its rename.
            let tmp = tmp_path(dir, name);
            match fs::remove_file(&tmp) {
                Ok(()) => tracing::debug!(path = %tmp.display(), "removed leftover tmp file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &tmp, e)),
            }
        }

        let snapshot_versions = [FORMAT_VERSION, ENCRYPTED_SNAPSHOT_VERSION];
        let (snapshot, origin, mut snapshot_bytes, mut plaintext) =
            match read_sealed(dir, SNAPSHOT_FILE, &snapshot_versions)? {
                Some(body) => {
                    let len = body.len() as u64 + 4;
                    let (snap, origin, encrypted) = decode_snapshot(&body, &key)?;
                    (snap, Some(origin), len, !encrypted)
                }
                None => (Snapshot::default(), None, 0, false),
            };
        let (mut hard_state, mut conf_state, state_snapshot_index, mut hardstate_bytes) =
            match read_sealed(dir, HARDSTATE_FILE, &[FORMAT_VERSION])? {
                Some(body) => {
                    let len = body.len() as u64 + 4;
                    let (hs, cs, idx) = decode_hardstate(&body)?;
                    (hs, cs, idx, len)
                }
                None => (HardState::default(), ConfState::default(), 0, 0),
            };

        let snap_index = snapshot.get_metadata().index;
        let snap_term = snapshot.get_metadata().term;
        let mut repaired = false;
        if origin == Some(SnapshotOrigin::Received) && snap_index > state_snapshot_index {
            // Crashed inside apply_snapshot before the hard state was written.
            conf_state = snapshot.get_metadata().get_conf_state().clone();
            repaired = true;
        }
        // raft-rs panics on start if commit is below the snapshot index.
        if hard_state.commit < snap_index {
            hard_state.commit = snap_index;
            repaired = true;
        }
        if hard_state.term < snap_term {
            hard_state.term = snap_term;
            repaired = true;
        }

        let log_path = dir.join(LOG_FILE);
        let raw = match fs::read(&log_path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StorageError::io("read", &log_path, e)),
        };
        let replay = replay_log(&raw, &key)?;
        plaintext |= replay.plaintext;
        let replayed_first = replay.entries.first().map(|e| e.index);
        let entries = reconcile_with_snapshot(replay.entries, snap_index, snap_term)?;

        if let Some(last) = entries.last() {
            if hard_state.commit > last.index {
                return Err(StorageError::Corrupt(format!(
                    "hard state commit {} is past the last log entry {}",
                    hard_state.commit, last.index
                )));
            }
        } else if hard_state.commit > snap_index {
            return Err(StorageError::Corrupt(format!(
                "hard state commit {} is past the snapshot index {snap_index} and the log is empty",
                hard_state.commit
            )));
        }

        if repaired {
            tracing::warn!(
                dir = %dir.display(),
                snapshot_index = snap_index,
                "hard state older than the snapshot, repaired"
            );
            let body = encode_hardstate(&hard_state, &conf_state, snap_index)?;
            hardstate_bytes = write_atomic(dir, HARDSTATE_FILE, &body)?;
        }

        let mut log_bytes;
        if replayed_first.is_some() && replayed_first != Some(snap_index + 1) {
            // Left over from a crash inside compact/apply_snapshot: rewrite so the
            // file starts right after the snapshot again (appends must not follow
            // entries the snapshot replaced).
            tracing::warn!(
                dir = %dir.display(),
                snapshot_index = snap_index,
                kept = entries.len(),
                "log overlaps the snapshot, rewriting"
            );
            log_bytes = write_atomic(dir, LOG_FILE, &encode_entries(&entries, &key)?)?;
        } else if replay.valid_len < raw.len() {
            tracing::warn!(
                dir = %dir.display(),
                offset = replay.valid_len,
                dropped_bytes = raw.len() - replay.valid_len,
                "truncating torn write at the end of the raft log"
            );
            truncate_file(&log_path, replay.valid_len as u64)?;
            log_bytes = replay.valid_len as u64;
        } else {
            log_bytes = raw.len() as u64;
        }

        if plaintext {
            if let Some(origin) = origin {
                snapshot_bytes = write_atomic(dir, SNAPSHOT_FILE, &encode_snapshot(&snapshot, origin, &key)?)?;
            }
            log_bytes = write_atomic(dir, LOG_FILE, &encode_entries(&entries, &key)?)?;
            tracing::warn!(
                dir = %dir.display(),
                entries = entries.len(),
                snapshot_index = snap_index,
                "encrypted the raft log and snapshot written in plaintext by an earlier version"
            );
        }

        let created = !log_path.exists();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| StorageError::io("open", &log_path, e))?;
        if created {
            sync_dir(dir)?;
        }

        let storage = DiskStorage {
            dir: dir.to_owned(),
            log,
            log_bytes,
            hardstate_bytes,
            snapshot_bytes,
            hard_state,
            conf_state,
            snapshot,
            entries,
            poisoned: false,
            quota: None,
            snapshot_wanted: Default::default(),
            key,
            plaintext: false,
        };
        tracing::info!(
            dir = %dir.display(),
            first_index = storage.first_log_index(),
            last_index = storage.last_log_index(),
            commit = storage.hard_state.commit,
            snapshot_index = snap_index,
            disk_bytes = storage.disk_bytes(),
            "raft storage opened"
        );
        Ok(storage)
    }
}

struct Replay {
    entries: Vec<Entry>,
    /// Some records were plaintext (written before encryption at rest).
    plaintext: bool,
    /// Bytes up to the end of the last good record.
    valid_len: usize,
}

fn replay_log(raw: &[u8], key: &DataKey) -> Result<Replay> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut plaintext = false;
    let mut pos = 0;
    while pos < raw.len() {
        let rest = &raw[pos..];
        let record = match decode_record(rest) {
            Ok(record) => record,
            Err(bad) => {
                let tail = match bad {
                    BadRecord::Incomplete => &[][..],
                    BadRecord::Header => rest,
                    BadRecord::Payload { end } => &rest[end..],
                };
                if tail.iter().all(|&b| b == 0) {
                    break; // torn write at the end: cut off by the caller
                }
                return Err(StorageError::Corrupt(format!(
                    "log record at byte {pos} fails its checksum and is followed by more data"
                )));
            }
        };
        let decoded = decode_entries(&record, key)
            .map_err(|e| StorageError::Corrupt(format!("log record at byte {pos}: {e}")))?;
        plaintext |= !record.encrypted;
        for entry in decoded {
            push_replayed(&mut entries, entry)
                .map_err(|msg| StorageError::Corrupt(format!("log record at byte {pos}: {msg}")))?;
        }
        pos += record.len;
    }
    Ok(Replay { entries, plaintext, valid_len: pos })
}

/// Applies one replayed entry with append semantics (an index not past the
/// last one overwrites the suffix from there).
fn push_replayed(entries: &mut Vec<Entry>, e: Entry) -> std::result::Result<(), String> {
    if e.index == 0 {
        return Err("entry with index 0".to_owned());
    }
    let (first, last) = match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => (f.index, l.index),
        _ => {
            entries.push(e);
            return Ok(());
        }
    };
    if e.index < first || e.index > last + 1 {
        return Err(format!("entry {} outside [{first}, {}]", e.index, last + 1));
    }
    entries.truncate((e.index - first) as usize);
    entries.push(e);
    Ok(())
}

/// Makes the replayed log start right after the snapshot. An overlap is left
/// by a crash between writing the snapshot and rewriting the log.
fn reconcile_with_snapshot(mut entries: Vec<Entry>, snap_index: u64, snap_term: u64) -> Result<Vec<Entry>> {
    let (first, last) = match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => (f.index, l.index),
        _ => return Ok(entries),
    };
    if first > snap_index + 1 {
        return Err(StorageError::Corrupt(format!("log starts at {first} but the snapshot ends at {snap_index}")));
    }
    if first == snap_index + 1 {
        return Ok(entries);
    }
    // first <= snap_index here.
    let offset = (snap_index - first) as usize;
    if last >= snap_index && entries[offset].term == snap_term {
        // Interrupted compaction: the entries after the snapshot are still good.
        entries.drain(..=offset);
    } else {
        // Interrupted apply_snapshot: this log is the history the snapshot replaced.
        entries.clear();
    }
    Ok(entries)
}

fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| StorageError::io("open", path, e))?;
    f.set_len(len).map_err(|e| StorageError::io("truncate", path, e))?;
    f.sync_all().map_err(|e| StorageError::io("fsync", path, e))
}
