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
//! Log record: `[u32 len][u32 crc32(payload)][u32 crc32(first 8 bytes)][payload]`,
//! little endian. The header has its own checksum so a damaged length in the
//! middle of the log is reported as corruption instead of being mistaken for a
//! torn write. A bad record with only zeros (or nothing) after it is a torn
//! write from a crash and is cut off on open; a bad record followed by more
//! data is `StorageError::Corrupt`.
//!
//! `hardstate` and `snapshot` contents: `[u32 crc32(body)][body]`, the body
//! starting with a format version byte.
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
//! Errors: `StorageError::Io` means nothing changed, on disk or in memory, so
//! the call may be retried. Anything that may have left disk and memory apart
//! (failed fsync, rename, or a step after the first durable one) is
//! `StorageError::Durability`; the storage then refuses further writes and the
//! process should restart, which replays the files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

const LOG_FILE: &str = "log";
const HARDSTATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot";

const FORMAT_VERSION: u8 = 1;
const RECORD_HEADER_LEN: usize = 12;

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
}

impl StorageError {
    /// True when the node cannot go on with this storage: restart (for
    /// durability failures, replay recovers) or operator action (corruption).
    pub fn is_fatal(&self) -> bool {
        match self {
            StorageError::Io { .. } | StorageError::SnapshotOutOfDate { .. } => false,
            StorageError::Durability { .. }
            | StorageError::Corrupt(_)
            | StorageError::Invalid(_)
            | StorageError::Poisoned => true,
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

/// Where the stored snapshot came from; decides how a hard state written
/// before it is repaired on open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SnapshotOrigin {
    /// Made by `compact`: the conf state in `hardstate` is at least as new.
    Compacted = 1,
    /// Received from the leader: it replaces the conf state and commit.
    Received = 2,
}

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
    /// Set when raft asked for a snapshot the stored one cannot serve (it
    /// predates the peer's membership); the owner compacts then.
    snapshot_wanted: std::sync::atomic::AtomicBool,
}

impl DiskStorage {
    /// Opens (creating if missing) the storage in `dir` and replays its files.
    pub fn open(dir: &Path) -> Result<DiskStorage> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
        for name in [LOG_FILE, HARDSTATE_FILE, SNAPSHOT_FILE] {
            // A leftover tmp file is a write that never reached its rename.
            let tmp = tmp_path(dir, name);
            match fs::remove_file(&tmp) {
                Ok(()) => tracing::debug!(path = %tmp.display(), "removed leftover tmp file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &tmp, e)),
            }
        }

        let (snapshot, origin, snapshot_bytes) = match read_sealed(dir, SNAPSHOT_FILE)? {
            Some(body) => {
                let len = body.len() as u64 + 4;
                let (snap, origin) = decode_snapshot(&body)?;
                (snap, Some(origin), len)
            }
            None => (Snapshot::default(), None, 0),
        };
        let (mut hard_state, mut conf_state, state_snapshot_index, mut hardstate_bytes) =
            match read_sealed(dir, HARDSTATE_FILE)? {
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
        let replay = replay_log(&raw)?;
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

        let log_bytes;
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
            log_bytes = write_atomic(dir, LOG_FILE, &encode_entries(&entries)?)?;
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
            snapshot_wanted: Default::default(),
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

        let buf = encode_entries(entries)?;
        self.write_log(&buf)?;
        let keep = (first_new - self.first_log_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
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
        let snap_body = encode_snapshot(&snap, SnapshotOrigin::Received)?;
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
        let snap_body = encode_snapshot(&snap, SnapshotOrigin::Compacted)?;
        let log_body = encode_entries(&self.entries[offset + 1..])?;

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

// ---- log records ----

fn encode_entries(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    for e in entries {
        let payload =
            e.write_to_bytes().map_err(|err| StorageError::Invalid(format!("encode entry {}: {err}", e.index)))?;
        let len =
            u32::try_from(payload.len()).map_err(|_| StorageError::Invalid(format!("entry {} too large", e.index)))?;
        let start = buf.len();
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&crc32(&payload).to_le_bytes());
        let header_crc = crc32(&buf[start..start + 8]);
        buf.extend_from_slice(&header_crc.to_le_bytes());
        buf.extend_from_slice(&payload);
    }
    Ok(buf)
}

struct Replay {
    entries: Vec<Entry>,
    /// Bytes up to the end of the last good record.
    valid_len: usize,
}

fn replay_log(raw: &[u8]) -> Result<Replay> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let rest = &raw[pos..];
        let (payload, used) = match decode_record(rest) {
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
        let entry = Entry::parse_from_bytes(payload)
            .map_err(|e| StorageError::Corrupt(format!("log record at byte {pos} is not an entry: {e}")))?;
        push_replayed(&mut entries, entry)
            .map_err(|msg| StorageError::Corrupt(format!("log record at byte {pos}: {msg}")))?;
        pos += used;
    }
    Ok(Replay { entries, valid_len: pos })
}

enum BadRecord {
    /// The file ends inside the record.
    Incomplete,
    /// Header checksum mismatch.
    Header,
    /// Payload checksum mismatch; the record would end at `end`.
    Payload { end: usize },
}

/// Returns the payload and the record's total length.
fn decode_record(rest: &[u8]) -> std::result::Result<(&[u8], usize), BadRecord> {
    if rest.len() < RECORD_HEADER_LEN {
        return Err(BadRecord::Incomplete);
    }
    let len = read_u32(&rest[0..4]) as usize;
    let payload_crc = read_u32(&rest[4..8]);
    if read_u32(&rest[8..12]) != crc32(&rest[0..8]) {
        return Err(BadRecord::Header);
    }
    let end = RECORD_HEADER_LEN.checked_add(len).filter(|&end| end <= rest.len()).ok_or(BadRecord::Incomplete)?;
    let payload = &rest[RECORD_HEADER_LEN..end];
    if crc32(payload) != payload_crc {
        return Err(BadRecord::Payload { end });
    }
    Ok((payload, end))
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

// ---- atomic files ----

fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

/// Replaces `dir/name` with `contents`; returns the file size. Failures
/// before the rename leave the old file in place (`Io`), later ones are
/// `Durability`.
fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<u64> {
    let tmp = tmp_path(dir, name);
    let dst = dir.join(name);
    let write_tmp = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    };
    if let Err(e) = write_tmp() {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::io("write", &tmp, e));
    }
    fs::rename(&tmp, &dst).map_err(|e| StorageError::durability("rename", &dst, e))?;
    sync_dir(dir)?;
    Ok(contents.len() as u64)
}

/// Starts the contents of a sealed file: `[u32 crc32(body)][body]`, body
/// beginning with the format version. Finish with `seal`.
fn sealed_contents(capacity: usize) -> Vec<u8> {
    let mut contents = Vec::with_capacity(capacity + 5);
    contents.extend_from_slice(&[0, 0, 0, 0, FORMAT_VERSION]);
    contents
}

fn seal(mut contents: Vec<u8>) -> Vec<u8> {
    let crc = crc32(&contents[4..]);
    contents[..4].copy_from_slice(&crc.to_le_bytes());
    contents
}

/// Reads a file made by `seal`; returns the body, `None` if there is no file.
fn read_sealed(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", &path, e)),
    };
    if raw.len() < 5 || read_u32(&raw[0..4]) != crc32(&raw[4..]) {
        return Err(StorageError::Corrupt(format!("{name} file fails its checksum")));
    }
    if raw[4] != FORMAT_VERSION {
        return Err(StorageError::Corrupt(format!("{name} file has unknown version {}", raw[4])));
    }
    Ok(Some(raw[4..].to_vec()))
}

/// Sealed body: `[version][u64 snapshot index][u32 hs len][HardState][ConfState]`.
/// The snapshot index is the one this hard state was written after.
fn encode_hardstate(hs: &HardState, cs: &ConfState, snapshot_index: u64) -> Result<Vec<u8>> {
    let hs_bytes = hs.write_to_bytes().map_err(|e| StorageError::Invalid(format!("encode hard state: {e}")))?;
    let cs_bytes = cs.write_to_bytes().map_err(|e| StorageError::Invalid(format!("encode conf state: {e}")))?;
    let mut contents = sealed_contents(12 + hs_bytes.len() + cs_bytes.len());
    contents.extend_from_slice(&snapshot_index.to_le_bytes());
    contents.extend_from_slice(&(hs_bytes.len() as u32).to_le_bytes());
    contents.extend_from_slice(&hs_bytes);
    contents.extend_from_slice(&cs_bytes);
    Ok(seal(contents))
}

fn decode_hardstate(body: &[u8]) -> Result<(HardState, ConfState, u64)> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("hardstate file: {what}"));
    let fixed = body.get(1..13).ok_or_else(|| corrupt("too short"))?;
    let snapshot_index = u64::from_le_bytes(fixed[0..8].try_into().map_err(|_| corrupt("index"))?);
    let hs_len = read_u32(&fixed[8..12]) as usize;
    let hs_bytes = body.get(13..13 + hs_len).ok_or_else(|| corrupt("truncated hard state"))?;
    let hs = HardState::parse_from_bytes(hs_bytes).map_err(|e| corrupt(&e.to_string()))?;
    let cs = ConfState::parse_from_bytes(&body[13 + hs_len..]).map_err(|e| corrupt(&e.to_string()))?;
    Ok((hs, cs, snapshot_index))
}

/// Sealed body: `[version][origin][Snapshot]`.
fn encode_snapshot(snap: &Snapshot, origin: SnapshotOrigin) -> Result<Vec<u8>> {
    let mut contents = sealed_contents(1 + snap.compute_size() as usize);
    contents.push(origin as u8);
    snap.write_to_vec(&mut contents).map_err(|e| StorageError::Invalid(format!("encode snapshot: {e}")))?;
    Ok(seal(contents))
}

fn decode_snapshot(body: &[u8]) -> Result<(Snapshot, SnapshotOrigin)> {
    let origin = match body.get(1) {
        Some(1) => SnapshotOrigin::Compacted,
        Some(2) => SnapshotOrigin::Received,
        _ => return Err(StorageError::Corrupt("snapshot file: bad origin".to_owned())),
    };
    let snap =
        Snapshot::parse_from_bytes(&body[2..]).map_err(|e| StorageError::Corrupt(format!("snapshot file: {e}")))?;
    Ok((snap, origin))
}

fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| StorageError::io("open", path, e))?;
    f.set_len(len).map_err(|e| StorageError::io("truncate", path, e))?;
    f.sync_all().map_err(|e| StorageError::io("fsync", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::durability("fsync dir", dir, e))
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// CRC-32 (IEEE, as zlib), the checksum of every record and sealed file.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::EntryType;
    use raft::{Config, RawNode, Storage as _};

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Default::default() }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term, format!("cmd-{i}").as_bytes())).collect()
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..Default::default() }
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState { voters: ids.to_vec(), ..Default::default() }
    }

    fn snapshot(index: u64, term: u64, data: &[u8], cs: ConfState) -> Snapshot {
        let mut snap = Snapshot { data: data.to_vec().into(), ..Default::default() };
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(cs);
        snap
    }

    fn all_entries(s: &DiskStorage) -> Vec<Entry> {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        s.entries(first, last + 1, None, GetEntriesContext::empty(false)).unwrap()
    }

    fn store_err(r: raft::Result<impl std::fmt::Debug>) -> raft::StorageError {
        match r {
            Err(raft::Error::Store(e)) => e,
            other => panic!("expected a storage error, got {other:?}"),
        }
    }

    fn log_path(dir: &Path) -> PathBuf {
        dir.join(LOG_FILE)
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    /// The checksum files were written with before `crc32fast`: bitwise,
    /// reflected polynomial 0xEDB88320. Existing logs must keep verifying.
    #[test]
    fn crc32_matches_the_bitwise_definition_files_were_written_with() {
        fn reference(bytes: &[u8]) -> u32 {
            let mut c = !0u32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            !c
        }
        let bytes: Vec<u8> = (0..2048u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in (0..64).chain([255, 256, 1000, 2048]) {
            assert_eq!(crc32(&bytes[..len]), reference(&bytes[..len]), "length {len}");
        }
    }

    #[test]
    fn new_storage_is_empty_and_mirrors_memstorage_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(dir.path()).unwrap();
        assert!(s.initial_state_is_empty());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!(store_err(s.term(1)), raft::StorageError::Unavailable);
        assert_eq!(store_err(s.snapshot(0, 2)), raft::StorageError::SnapshotTemporarilyUnavailable);
        assert_eq!(s.snapshot_data(), None);
    }

    #[test]
    fn append_and_reopen_returns_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let ents = entries(1..=5, 1);
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.set_conf_state(voters(&[1, 2, 3])).unwrap();
            s.append(&ents[..2]).unwrap();
            s.append(&ents[2..]).unwrap();
            s.set_hardstate(hard_state(1, 1, 3)).unwrap();
            s.set_commit(4).unwrap();
            assert!(!s.initial_state_is_empty());
        }
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(all_entries(&s), ents);
        assert_eq!(s.hard_state(), hard_state(1, 1, 4));
        assert_eq!(s.conf_state(), voters(&[1, 2, 3]));
        let state = s.initial_state().unwrap();
        assert_eq!(state.hard_state, hard_state(1, 1, 4));
        assert_eq!(state.conf_state, voters(&[1, 2, 3]));
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 5));
        assert_eq!(s.term(5).unwrap(), 1);
    }

    #[test]
    fn append_rejects_gaps_and_compacted_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path()).unwrap();
        s.append(&entries(1..=3, 1)).unwrap();
        let err = s.append(&entries(5..=6, 1)).unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err}");
        let err = s.append(&[entry(4, 1, b""), entry(6, 1, b"")]).unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err}");
        s.set_commit(3).unwrap();
        s.compact(2, b"state".to_vec(), voters(&[1])).unwrap();
        let err = s.append(&entries(2..=4, 2)).unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err}");
        // Nothing was changed by the rejected calls.
        assert_eq!(all_entries(&s), entries(3..=3, 1));
    }

    #[test]
    fn overwritten_suffix_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=5, 1)).unwrap();
            s.append(&entries(3..=4, 2)).unwrap();
            assert_eq!(s.last_index().unwrap(), 4);
        }
        let mut expected = entries(1..=2, 1);
        expected.extend(entries(3..=4, 2));
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            assert_eq!(all_entries(&s), expected);
            assert_eq!(s.term(3).unwrap(), 2);
            // Appending after an overwrite replays without a gap.
            s.append(&entries(5..=5, 2)).unwrap();
        }
        expected.extend(entries(5..=5, 2));
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(all_entries(&s), expected);
    }

    #[test]
    fn compact_drops_entries_and_bounds_disk() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 1024];
        let ents: Vec<Entry> = (1..=100).map(|i| entry(i, 1 + i / 50, &big)).collect();
        let before;
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.append(&ents).unwrap();
            s.set_hardstate(hard_state(3, 1, 80)).unwrap();
            before = s.disk_bytes();
            assert!(before > 100 * 1024);

            s.compact(80, b"state-at-80".to_vec(), voters(&[1, 2])).unwrap();
            assert_eq!(s.first_index().unwrap(), 81);
            assert_eq!(s.last_index().unwrap(), 100);
            assert_eq!(s.term(80).unwrap(), 2);
            assert_eq!(store_err(s.term(79)), raft::StorageError::Compacted);
            let err = store_err(s.entries(80, 90, None, GetEntriesContext::empty(false)));
            assert_eq!(err, raft::StorageError::Compacted);
            assert!(s.disk_bytes() < before / 3, "{} vs {before}", s.disk_bytes());
            // Same index again is a no-op; behind the snapshot or past commit is refused.
            s.compact(80, b"ignored".to_vec(), voters(&[1, 2])).unwrap();
            assert!(matches!(s.compact(70, vec![], voters(&[1])), Err(StorageError::Invalid(_))));
            assert!(matches!(s.compact(90, vec![], voters(&[1])), Err(StorageError::Invalid(_))));
        }
        let file_len = fs::metadata(log_path(dir.path())).unwrap().len();
        assert!(file_len < 21 * 1100, "log file still {file_len} bytes");
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            assert!(s.disk_bytes() < before / 3);
            assert_eq!(s.snapshot_data(), Some((80, 2, b"state-at-80".to_vec())));
            assert_eq!(all_entries(&s), ents[80..].to_vec());
            assert_eq!(s.hard_state(), hard_state(3, 1, 80));
            let snap = s.snapshot(0, 2).unwrap();
            assert_eq!(snap.get_metadata().index, 80);
            assert_eq!(snap.get_metadata().get_conf_state(), &voters(&[1, 2]));
            assert_eq!(store_err(s.snapshot(81, 2)), raft::StorageError::SnapshotTemporarilyUnavailable);
            s.append(&entries(101..=102, 3)).unwrap();
        }
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (81, 102));
    }

    #[test]
    fn compact_everything_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=4, 1)).unwrap();
            s.set_hardstate(hard_state(1, 1, 4)).unwrap();
            s.compact(4, b"all".to_vec(), voters(&[1])).unwrap();
        }
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (5, 4));
        assert_eq!(s.term(4).unwrap(), 1);
        assert!(all_entries(&s).is_empty());
    }

    #[test]
    fn apply_snapshot_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(20, 3, b"leader-state", voters(&[1, 2, 3]));
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.set_conf_state(voters(&[1])).unwrap();
            s.append(&entries(1..=10, 1)).unwrap();
            s.set_hardstate(hard_state(2, 0, 5)).unwrap();
            s.apply_snapshot(snap.clone()).unwrap();
            assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (21, 20));
            assert_eq!(s.hard_state(), hard_state(3, 0, 20));
        }
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (21, 20));
            assert_eq!(s.term(20).unwrap(), 3);
            assert_eq!(s.hard_state(), hard_state(3, 0, 20));
            assert_eq!(s.conf_state(), voters(&[1, 2, 3]));
            assert_eq!(s.snapshot_data(), Some((20, 3, b"leader-state".to_vec())));
            assert_eq!(s.snapshot(20, 2).unwrap(), snap);
            // An older snapshot is refused without changes.
            let mut old = snap.clone();
            old.mut_metadata().index = 15;
            let err = s.apply_snapshot(old).unwrap_err();
            assert!(matches!(err, StorageError::SnapshotOutOfDate { index: 15, .. }), "{err}");
            assert!(!err.is_fatal());
            s.append(&entries(21..=22, 3)).unwrap();
        }
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(all_entries(&s), entries(21..=22, 3));
    }

    #[test]
    fn crash_inside_compact_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let old_log = dir.path().join("old-log");
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=10, 1)).unwrap();
            s.set_hardstate(hard_state(1, 1, 8)).unwrap();
            fs::copy(log_path(dir.path()), &old_log).unwrap();
            s.compact(6, b"six".to_vec(), voters(&[1])).unwrap();
        }
        // As if the crash hit after the snapshot rename but before the log rename.
        fs::rename(&old_log, log_path(dir.path())).unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            assert_eq!(all_entries(&s), entries(7..=10, 1));
            assert_eq!(s.snapshot_data(), Some((6, 1, b"six".to_vec())));
            s.append(&entries(11..=11, 1)).unwrap();
        }
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(all_entries(&s), entries(7..=11, 1));
    }

    #[test]
    fn crash_inside_apply_snapshot_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (old_log, old_state) = (dir.path().join("old-log"), dir.path().join("old-state"));
        let snap = snapshot(8, 4, b"leader", voters(&[1, 2, 3]));
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.set_conf_state(voters(&[1, 2])).unwrap();
            // Diverged history: index 8 has term 2, the leader's has term 4.
            s.append(&entries(1..=12, 2)).unwrap();
            s.set_hardstate(hard_state(2, 2, 3)).unwrap();
            fs::copy(log_path(dir.path()), &old_log).unwrap();
            fs::copy(dir.path().join(HARDSTATE_FILE), &old_state).unwrap();
            s.apply_snapshot(snap).unwrap();
        }
        // As if the crash hit right after the snapshot rename.
        fs::rename(&old_log, log_path(dir.path())).unwrap();
        fs::rename(&old_state, dir.path().join(HARDSTATE_FILE)).unwrap();
        for _ in 0..2 {
            let s = DiskStorage::open(dir.path()).unwrap();
            assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (9, 8));
            assert_eq!(s.hard_state(), hard_state(4, 2, 8));
            assert_eq!(s.conf_state(), voters(&[1, 2, 3]));
        }
    }

    #[test]
    fn torn_last_record_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            for e in entries(1..=5, 1) {
                s.append(&[e]).unwrap();
            }
        }
        let path = log_path(dir.path());
        let full = fs::read(&path).unwrap();
        let record = full.len() / 5;
        // Inside the payload, inside the header, and a zero-filled tail.
        let mut zero_tail = full[..full.len() - 3].to_vec();
        zero_tail.extend([0u8; 64]);
        for bytes in [full[..full.len() - 3].to_vec(), full[..4 * record + 5].to_vec(), zero_tail] {
            fs::write(&path, &bytes).unwrap();
            {
                let mut s = DiskStorage::open(dir.path()).unwrap();
                assert_eq!(all_entries(&s), entries(1..=4, 1));
                assert_eq!(fs::metadata(&path).unwrap().len(), 4 * record as u64);
                s.append(&entries(5..=6, 1)).unwrap();
            }
            let s = DiskStorage::open(dir.path()).unwrap();
            assert_eq!(all_entries(&s), entries(1..=6, 1));
        }
    }

    #[test]
    fn flipped_bytes_in_the_middle_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=5, 1)).unwrap();
        }
        let path = log_path(dir.path());
        let full = fs::read(&path).unwrap();
        let record = full.len() / 5;
        // A payload byte, and the length field, of the second record.
        for at in [record + RECORD_HEADER_LEN + 2, record + 1] {
            let mut bytes = full.clone();
            bytes[at] ^= 0x5a;
            fs::write(&path, &bytes).unwrap();
            match DiskStorage::open(dir.path()) {
                Err(e @ StorageError::Corrupt(_)) => assert!(e.is_fatal()),
                Err(e) => panic!("expected corruption, got {e}"),
                Ok(_) => panic!("expected corruption at byte {at}"),
            }
        }

        fs::write(&path, &full).unwrap();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            s.set_hardstate(hard_state(1, 1, 2)).unwrap();
        }
        let state_path = dir.path().join(HARDSTATE_FILE);
        let mut state = fs::read(&state_path).unwrap();
        let mid = state.len() / 2;
        state[mid] ^= 0xff;
        fs::write(&state_path, &state).unwrap();
        assert!(matches!(DiskStorage::open(dir.path()), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn entries_honour_max_size_like_limit_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path()).unwrap();
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1, &[1u8; 100])).collect();
        s.append(&ents).unwrap();
        let one = u64::from(ents[0].compute_size());
        let ctx = || GetEntriesContext::empty(false);
        for max in [None, Some(0), Some(one), Some(one * 3 - 1), Some(one * 3), Some(raft::NO_LIMIT)] {
            let mut expected = ents[2..9].to_vec();
            raft::util::limit_size(&mut expected, max);
            let got = s.entries(3, 10, max, ctx()).unwrap();
            assert_eq!(got, expected, "max_size {max:?}");
        }
        assert_eq!(s.entries(3, 10, 0, ctx()).unwrap().len(), 1);
        assert_eq!(s.entries(3, 10, one * 3, ctx()).unwrap().len(), 3);
        assert_eq!(s.entries(3, 10, None, ctx()).unwrap().len(), 7);
        assert!(s.entries(4, 4, None, ctx()).unwrap().is_empty());
        assert_eq!(store_err(s.entries(3, 12, None, ctx())), raft::StorageError::Unavailable);
    }

    fn on_ready(node: &mut RawNode<DiskStorage>, applied: &mut Vec<Entry>) {
        while node.has_ready() {
            let mut rd = node.ready();
            assert!(rd.messages().is_empty(), "single voter sends nothing");
            if !rd.snapshot().is_empty() {
                node.mut_store().apply_snapshot(rd.snapshot().clone()).unwrap();
            }
            applied.extend(rd.take_committed_entries());
            node.mut_store().append(rd.entries()).unwrap();
            if let Some(hs) = rd.hs() {
                node.mut_store().set_hardstate(hs.clone()).unwrap();
            }
            assert!(rd.persisted_messages().is_empty());
            let mut light = node.advance(rd);
            if let Some(commit) = light.commit_index() {
                node.mut_store().set_commit(commit).unwrap();
            }
            applied.extend(light.take_committed_entries());
            node.advance_apply();
        }
    }

    fn config(applied: u64) -> Config {
        Config { id: 1, election_tick: 10, heartbeat_tick: 1, applied, ..Default::default() }
    }

    fn normal_data(applied: &[Entry]) -> Vec<Vec<u8>> {
        applied
            .iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
            .map(|e| e.data.to_vec())
            .collect()
    }

    #[test]
    fn raw_node_restarts_from_disk_without_reapplying() {
        let dir = tempfile::tempdir().unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());

        let mut applied = Vec::new();
        {
            let mut s = DiskStorage::open(dir.path()).unwrap();
            assert!(s.initial_state_is_empty());
            s.set_conf_state(voters(&[1])).unwrap();
            let mut node = RawNode::new(&config(0), s, &logger).unwrap();
            node.campaign().unwrap();
            on_ready(&mut node, &mut applied);
            for i in 0..3 {
                node.propose(vec![], format!("put {i}").into_bytes()).unwrap();
                on_ready(&mut node, &mut applied);
            }
        }
        let applied_index = applied.last().unwrap().index;
        assert_eq!(applied_index, 4, "leader's empty entry and three proposals");
        assert_eq!(normal_data(&applied), [b"put 0".to_vec(), b"put 1".to_vec(), b"put 2".to_vec()]);

        // Restart: the log and hard state are back, nothing is handed over again.
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(s.hard_state().commit, 4);
        assert_eq!(all_entries(&s), applied);
        let mut node = RawNode::new(&config(applied_index), s, &logger).unwrap();
        let mut reapplied = Vec::new();
        on_ready(&mut node, &mut reapplied);
        assert!(reapplied.is_empty(), "re-handed: {reapplied:?}");

        node.campaign().unwrap();
        on_ready(&mut node, &mut reapplied);
        node.propose(vec![], b"put 3".to_vec()).unwrap();
        on_ready(&mut node, &mut reapplied);
        assert!(reapplied.iter().all(|e| e.index > applied_index));
        assert_eq!(normal_data(&reapplied), [b"put 3".to_vec()]);

        // Compact what was applied, restart again from the snapshot.
        let last_applied = reapplied.last().unwrap().index;
        let cs = node.store().conf_state();
        node.mut_store().compact(last_applied, b"kv: 0..3".to_vec(), cs).unwrap();
        drop(node);
        let s = DiskStorage::open(dir.path()).unwrap();
        assert_eq!(s.snapshot_data(), Some((last_applied, 2, b"kv: 0..3".to_vec())));
        assert_eq!(s.first_index().unwrap(), last_applied + 1);
        let mut node = RawNode::new(&config(last_applied), s, &logger).unwrap();
        let mut after = Vec::new();
        on_ready(&mut node, &mut after);
        assert!(after.is_empty());
        node.campaign().unwrap();
        on_ready(&mut node, &mut after);
        node.propose(vec![], b"put 4".to_vec()).unwrap();
        on_ready(&mut node, &mut after);
        assert_eq!(normal_data(&after), [b"put 4".to_vec()]);
        assert_eq!(node.raft.term, 3);
    }
}
