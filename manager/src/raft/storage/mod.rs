//! On-disk storage for raft-rs: the raft log, hard state, conf state and the
//! latest snapshot, kept in memory (like `raft::storage::MemStorageCore`) and
//! mirrored to three files in one directory:
//!
//! - `hardstate`: `HardState` + `ConfState`, replaced atomically
//!   (write `hardstate.tmp`, fsync, rename, fsync the directory).
//! - `snapshot`: the latest snapshot (metadata and state-machine bytes),
//!   replaced atomically the same way.
//! - `log`: append-only records, one `Entry` each. Overwriting a conflicting
//!   suffix is just another append: on replay an entry whose index is not past
//!   the last one truncates the in-memory suffix first. `compact` and
//!   `apply_snapshot` rewrite the file (`log.tmp` + rename), which is what
//!   bounds its size.
//!
//! The log's entries and the snapshot are encrypted with a data key
//! ([`keys`]: sealed by a key-encrypting key beside the files, or given by
//! the operator under autolock); see `format` for the bytes. A directory
//! written before that is encrypted when it opens.
//!
//! Layout: this file holds [`DiskStorage`], its writes and its raft
//! `Storage` impl; `format` the bytes of log records and sealed files;
//! [`keys`] the data key and its files;
//! `files` atomic replacement and reading back of sealed files; `open`
//! replaying a directory on start, with its crash recovery; `tests`.
//!
//! Errors: `StorageError::Io` means nothing changed, on disk or in memory, so
//! the call may be retried. Anything that may have left disk and memory apart
//! (failed fsync, rename, or a step after the first durable one) is
//! `StorageError::Durability`; the storage then refuses further writes and the
//! process should restart, which replays the files.
//!
//! What an error means for the node is [`StorageError::failure`]: a lack of
//! space (ENOSPC, EDQUOT, or the storage quota) leaves the files a state that
//! opening them recovers (a failed append is cut back to the last good
//! offset; the multi-file operations are crash-safe), so the node raises a
//! disk alarm and waits for space; a failed fsync or corruption stops it.

mod files;
mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
mod open;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_at_rest;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

use files::{probe_space, write_atomic};
use format::{encode_entries, encode_hardstate, encode_plain_entries, encode_snapshot, SnapshotOrigin};
use keys::DataKey;

const LOG_FILE: &str = "log";
const HARDSTATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot";

/// The room [`DiskStorage::probe_space`] asks for before writes resume:
/// one raft message's worth of entries (`max_size_per_msg`).
pub const RESUME_HEADROOM: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Nothing changed on disk or in memory; the call may be retried.
    #[error("raft storage: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Disk may no longer match memory. The storage refuses further writes;
    /// restart the process to replay the files.
    #[error("raft storage: {op} {path} failed, on-disk state unknown: {source}")]
    Durability {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("raft storage corrupt: {0}")]
    Corrupt(String),
    /// The caller broke raft's contract (gap in the log, compaction past the
    /// commit index, ...). Nothing was changed.
    #[error("invalid raft storage request: {0}")]
    Invalid(String),
    /// `apply_snapshot` with a snapshot older than what is stored. Nothing was
    /// changed; raft-rs never hands such a snapshot out in a `Ready`.
    #[error("snapshot at index {index} is out of date (first index {first_index})")]
    SnapshotOutOfDate { index: u64, first_index: u64 },
    #[error("raft storage unusable after an earlier durability failure")]
    Poisoned,
    /// The write would take the storage files past `--storage-quota`.
    /// Nothing was written.
    #[error("raft storage in {}: the storage quota of {quota} bytes would be exceeded ({used} bytes used, {wanted} more wanted)", dir.display())]
    QuotaReached { dir: PathBuf, used: u64, wanted: u64, quota: u64 },
}

/// The quota when `--storage-quota` is not given: the raft files may grow
/// by half the space free when the manager starts, by at most
/// [`DEFAULT_QUOTA_CAP`] (etcd's suggested maximum database size).
pub fn quota_for(used: u64, free: u64) -> u64 {
    used + (free / 2).min(DEFAULT_QUOTA_CAP)
}

pub const DEFAULT_QUOTA_CAP: u64 = 8 << 30;

/// [`quota_for`] this directory's filesystem (created if missing); `None`
/// if its free space cannot be read.
pub fn default_quota(dir: &Path) -> Option<u64> {
    let _ = std::fs::create_dir_all(dir);
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    let used: u64 = [LOG_FILE, HARDSTATE_FILE, SNAPSHOT_FILE]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|m| m.len())
        .sum();
    Some(quota_for(used, free))
}

/// What a storage error means for the node (see [`StorageError::failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No space (ENOSPC, EDQUOT, the quota): the files hold a state that
    /// opening them recovers; wait for space, refusing writes meanwhile.
    Space,
    /// An fsync failed: after that the page cache cannot be trusted (the
    /// kernel may have dropped the dirty pages), so the node must stop.
    Fsync,
    /// The files are damaged: stop, an operator must look.
    Corrupt,
    /// Anything else (an I/O error, a broken contract): stop.
    Other,
}

/// The raw OS errors that mean "no space": ENOSPC, and EDQUOT (a quota).
pub fn is_space_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(28 | 122))
}

impl StorageError {
    /// True when the node cannot go on with this storage: restart (for
    /// durability failures, replay recovers) or operator action (corruption).
    pub fn is_fatal(&self) -> bool {
        match self {
            StorageError::Io { .. } | StorageError::SnapshotOutOfDate { .. } | StorageError::QuotaReached { .. } => {
                false
            }
            StorageError::Durability { .. }
            | StorageError::Corrupt(_)
            | StorageError::Invalid(_)
            | StorageError::Poisoned => true,
        }
    }

    /// Classifies the error. A failed fsync wins over its errno (an fsync
    /// can fail with ENOSPC on some filesystems, and is fatal all the same).
    pub fn failure(&self) -> Failure {
        match self {
            StorageError::Io { op, source, .. } | StorageError::Durability { op, source, .. } => {
                if op.starts_with("fsync") {
                    Failure::Fsync
                } else if is_space_errno(source.raw_os_error()) {
                    Failure::Space
                } else {
                    Failure::Other
                }
            }
            StorageError::QuotaReached { .. } => Failure::Space,
            StorageError::Corrupt(_) => Failure::Corrupt,
            StorageError::Invalid(_) | StorageError::SnapshotOutOfDate { .. } | StorageError::Poisoned => {
                Failure::Other
            }
        }
    }

    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        StorageError::Io { op, path: path.to_owned(), source }
    }

    fn durability(op: &'static str, path: &Path, source: io::Error) -> Self {
        StorageError::Durability { op, path: path.to_owned(), source }
    }

    /// Used for every step after the first durable write of a multi-file
    /// operation: from then on a failure leaves disk and memory apart.
    fn escalate(self) -> Self {
        match self {
            StorageError::Io { op, path, source } => StorageError::Durability { op, path, source },
            other => other,
        }
    }
}

type Result<T> = std::result::Result<T, StorageError>;

/// Raft storage mirrored to the files of one directory (see the module doc).
/// `raft::RawNode` owns it; reach it through `node.store()` / `node.mut_store()`
/// from the ready loop.
pub struct DiskStorage {
    dir: PathBuf,
    /// Opened in append mode.
    log: File,
    log_bytes: u64,
    hardstate_bytes: u64,
    snapshot_bytes: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// Metadata index 0 means no snapshot yet.
    snapshot: Snapshot,
    /// `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    poisoned: bool,
    /// At most this many bytes of storage files (`--storage-quota`).
    quota: Option<u64>,
    /// Set when raft asked for a snapshot the stored one cannot serve (it
    /// predates the peer's membership); the owner compacts then.
    snapshot_wanted: std::sync::atomic::AtomicBool,
    /// Encrypts the log entries and the snapshot.
    key: DataKey,
    /// Appends write plaintext records ([`DiskStorage::write_plaintext_for_bench`]).
    plaintext: bool,
}

impl DiskStorage {
    /// Nothing stored at all (no hard state, conf state, entries or snapshot):
    /// a brand new node.
    pub fn initial_state_is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
            && self.entries.is_empty()
            && self.snapshot.get_metadata().index == 0
    }

    /// Appends `entries` (contiguous), first dropping any stored entries at or
    /// after `entries[0].index`. Durable (fsync) before returning.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.check_usable()?;
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first_log_index() {
            return Err(StorageError::Invalid(format!(
                "append at {first_new} would overwrite compacted entries (first index {})",
                self.first_log_index()
            )));
        }
        if first_new > self.last_log_index() + 1 {
            return Err(StorageError::Invalid(format!(
                "append at {first_new} leaves a gap after last index {}",
                self.last_log_index()
            )));
        }
        if let Some(w) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
            return Err(StorageError::Invalid(format!(
                "appended entries not contiguous: {} then {}",
                w[0].index, w[1].index
            )));
        }

        let buf = if self.plaintext { encode_plain_entries(entries)? } else { encode_entries(entries, &self.key)? };
        self.check_quota(self.disk_bytes(), buf.len() as u64)?;
        self.write_log(&buf)?;
        let keep = (first_new - self.first_log_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// For `cargo bench -p tests --bench protection` only: from now on
    /// [`append`](Self::append) writes the plaintext records of before
    /// encryption at rest (which [`open`](Self::open) reads, and rewrites
    /// encrypted), so that the cost of sealing is measured on the same
    /// path. Nothing in shoal calls it.
    #[doc(hidden)]
    pub fn write_plaintext_for_bench(&mut self) {
        self.plaintext = true;
    }

    /// Durably replaces the hard state.
    pub fn set_hardstate(&mut self, hs: HardState) -> Result<()> {
        self.check_usable()?;
        if hs == self.hard_state {
            return Ok(());
        }
        self.write_state(&hs, &self.conf_state.clone())?;
        self.hard_state = hs;
        Ok(())
    }

    /// Durably updates the commit index of the hard state.
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hardstate(hs)
    }

    /// Durably replaces the conf state.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<()> {
        self.check_usable()?;
        if cs == self.conf_state {
            return Ok(());
        }
        self.write_state(&self.hard_state.clone(), &cs)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log is emptied, the
    /// conf state is the snapshot's, commit moves to the snapshot index and term
    /// rises to at least the snapshot term (as `MemStorageCore::apply_snapshot`).
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        self.check_usable()?;
        let meta = snap.get_metadata();
        let index = meta.index;
        if index < self.first_log_index() {
            return Err(StorageError::SnapshotOutOfDate { index, first_index: self.first_log_index() });
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = index;
        let cs = meta.get_conf_state().clone();
        let snap_body = encode_snapshot(&snap, SnapshotOrigin::Received, &self.key)?;
        let state_body = encode_hardstate(&hs, &cs, index)?;
        let log_body = Vec::new();

        let snapshot_bytes = self.guard(write_atomic(&self.dir, SNAPSHOT_FILE, &snap_body))?;
        self.snapshot_bytes = snapshot_bytes;
        let rewritten = self.rewrite_log(&log_body).map_err(StorageError::escalate);
        self.guard(rewritten)?;
        let written = write_atomic(&self.dir, HARDSTATE_FILE, &state_body);
        self.hardstate_bytes = self.guard(written.map_err(StorageError::escalate))?;

        tracing::info!(index, term = meta.term, "applied raft snapshot from leader");
        self.hard_state = hs;
        self.conf_state = cs;
        self.snapshot = snap;
        self.entries.clear();
        Ok(())
    }

    /// Local compaction: stores a snapshot at `index` holding the state-machine
    /// bytes `data` and `conf_state` (both as of `index`), then drops log
    /// entries up to and including `index` from memory and disk. `index` must
    /// be committed (the caller must have applied it) and not behind the
    /// current snapshot; at the current snapshot index it is a no-op.
    pub fn compact(&mut self, index: u64, data: Vec<u8>, conf_state: ConfState) -> Result<()> {
        self.check_usable()?;
        let snap_index = self.snapshot.get_metadata().index;
        if index == snap_index {
            return Ok(());
        }
        if index < snap_index {
            return Err(StorageError::Invalid(format!("compact to {index} is behind the snapshot at {snap_index}")));
        }
        if index > self.hard_state.commit || index > self.last_log_index() {
            return Err(StorageError::Invalid(format!(
                "compact to {index} past commit {} / last index {}",
                self.hard_state.commit,
                self.last_log_index()
            )));
        }
        let offset = (index - self.first_log_index()) as usize;
        let term = self.entries[offset].term;

        let mut snap = Snapshot { data: data.into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        let snap_body = encode_snapshot(&snap, SnapshotOrigin::Compacted, &self.key)?;
        let log_body = encode_entries(&self.entries[offset + 1..], &self.key)?;

        let snapshot_bytes = self.guard(write_atomic(&self.dir, SNAPSHOT_FILE, &snap_body))?;
        self.snapshot_bytes = snapshot_bytes;
        let rewritten = self.rewrite_log(&log_body).map_err(StorageError::escalate);
        self.guard(rewritten)?;

        tracing::debug!(index, term, log_bytes = self.log_bytes, "compacted raft log");
        self.snapshot = snap;
        self.entries.drain(..=offset);
        Ok(())
    }

    /// Whether raft asked for a newer snapshot since the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// `(index, term, data)` of the stored snapshot, to restore the state
    /// machine on restart. `None` before the first snapshot.
    pub fn snapshot_data(&self) -> Option<(u64, u64, Vec<u8>)> {
        let meta = self.snapshot.get_metadata();
        (meta.index > 0).then(|| (meta.index, meta.term, self.snapshot.data.to_vec()))
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }

    /// Total size of the storage files.
    pub fn disk_bytes(&self) -> u64 {
        self.log_bytes + self.hardstate_bytes + self.snapshot_bytes
    }

    /// Size of the log file: what a compaction can reclaim.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Caps the storage files at `quota` bytes: appends and hard-state
    /// writes past it fail with [`StorageError::QuotaReached`], having
    /// written nothing. Snapshots (compaction, or one received from the
    /// leader) are never refused: they replace the log.
    pub fn set_quota(&mut self, quota: Option<u64>) {
        self.quota = quota;
    }

    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    /// Whether there is room to write again: under the quota by at least
    /// [`RESUME_HEADROOM`] (an eighth of a smaller quota), and
    /// [`RESUME_HEADROOM`] bytes can be written (and fsynced) in the
    /// directory. The error says why not.
    pub fn probe_space(&self) -> Result<()> {
        let headroom = self.quota.map_or(RESUME_HEADROOM, |q| RESUME_HEADROOM.min(q / 8));
        self.check_quota(self.disk_bytes(), headroom)?;
        probe_space(&self.dir, RESUME_HEADROOM as usize)
    }

    /// The stored log entries (after the snapshot).
    pub fn stored_entries(&self) -> &[Entry] {
        &self.entries
    }

    fn check_quota(&self, kept: u64, wanted: u64) -> Result<()> {
        match self.quota {
            Some(quota) if kept + wanted > quota => {
                Err(StorageError::QuotaReached { dir: self.dir.clone(), used: self.disk_bytes(), wanted, quota })
            }
            _ => Ok(()),
        }
    }

    fn first_log_index(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_log_index(&self) -> u64 {
        match self.entries.last() {
            Some(e) => e.index,
            None => self.snapshot.get_metadata().index,
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// Marks the storage unusable when `r` is a durability failure.
    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(StorageError::Durability { .. }) = &r {
            self.poisoned = true;
        }
        r
    }

    fn write_state(&mut self, hs: &HardState, cs: &ConfState) -> Result<()> {
        let body = encode_hardstate(hs, cs, self.snapshot.get_metadata().index)?;
        self.check_quota(self.disk_bytes() - self.hardstate_bytes, body.len() as u64)?;
        let written = write_atomic(&self.dir, HARDSTATE_FILE, &body);
        self.hardstate_bytes = self.guard(written)?;
        Ok(())
    }

    fn write_log(&mut self, buf: &[u8]) -> Result<()> {
        let path = self.dir.join(LOG_FILE);
        if let Err(e) = self.log.write_all(buf) {
            // Cut off a partial write so a retry does not leave garbage mid-log.
            return match self.log.set_len(self.log_bytes) {
                Ok(()) => Err(StorageError::io("write", &path, e)),
                Err(_) => self.guard(Err(StorageError::durability("write", &path, e))),
            };
        }
        if let Err(e) = self.log.sync_data() {
            return self.guard(Err(StorageError::durability("fsync", &path, e)));
        }
        self.log_bytes += buf.len() as u64;
        Ok(())
    }

    /// Atomically replaces the log file with `body` and reopens it.
    fn rewrite_log(&mut self, body: &[u8]) -> Result<()> {
        let written = write_atomic(&self.dir, LOG_FILE, body);
        self.log_bytes = self.guard(written)?;
        let path = self.dir.join(LOG_FILE);
        let reopened =
            OpenOptions::new().append(true).open(&path).map_err(|e| StorageError::durability("open", &path, e));
        self.log = self.guard(reopened)?;
        Ok(())
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    /// Entries in `[low, high)`, cut to `max_size` bytes the way
    /// `raft::util::limit_size` does (always at least one entry). Never
    /// asynchronous, so the context is not needed.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first_log_index();
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        // MemStorage panics here; an error is kinder and raft reports it.
        if high > self.last_log_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let range = &self.entries[(low - first) as usize..(high - first) as usize];
        let count = limited_len(range, max_size.into());
        Ok(range[..count].to_vec())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        let first = self.first_log_index();
        if idx < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last_log_index() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(idx - first) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_log_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_log_index())
    }

    /// The stored snapshot. Unlike MemStorage (which makes up an empty one at
    /// the commit index) this is real state-machine data, so when it is older
    /// than `request_index`, or there is none yet, raft is told to try later;
    /// it then skips sending until the application compacts again.
    /// The stored snapshot, unless it is older than `request_index` or its
    /// membership does not include `to` (a manager added after it was
    /// taken would refuse it): then raft retries later, and
    /// [`DiskStorage::take_snapshot_wanted`] tells the owner to compact.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let index = meta.index;
        let cs = meta.get_conf_state();
        let has_peer = cs.voters.contains(&to) || cs.learners.contains(&to);
        if index == 0 || index < request_index || !has_peer {
            self.snapshot_wanted.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

/// How many of `entries` `raft::util::limit_size` would keep.
fn limited_len(entries: &[Entry], max_size: Option<u64>) -> usize {
    let max = match max_size {
        None | Some(raft::NO_LIMIT) => return entries.len(),
        Some(max) => max,
    };
    let mut size = 0u64;
    let mut count = 0;
    for e in entries {
        size += u64::from(e.compute_size());
        if count > 0 && size > max {
            break;
        }
        count += 1;
    }
    count
}
