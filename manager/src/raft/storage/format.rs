//! The on-disk format of the storage files.
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
//! Encryption at rest: a log record whose length has its top bit set holds
//! an entry encrypted with the data key ([`DataKey`], aad [`ENTRY_AAD`]).
//! With the next bit set as well it holds a batch: the entries of one
//! append (up to [`BATCH_PLAINTEXT`] bytes of them), each as
//! `[u32 len][Entry]`, encrypted together (aad [`BATCH_AAD`]), so one
//! append costs one nonce, one tag and one pass of the cipher however many
//! entries it carries. That is what appends write; single-entry encrypted
//! records are read as before. A
//! snapshot of version 2 holds its `Snapshot` encrypted the same way (aad
//! [`SNAPSHOT_AAD`] and the origin byte). Records without the bit and
//! version-1 snapshots are plaintext from before: they are read, and
//! rewritten encrypted when the storage opens. The hard state (term, vote,
//! commit index, voter ids) stays plaintext: it holds nothing secret.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use super::keys::DataKey;
use super::{Result, StorageError};

pub(super) const FORMAT_VERSION: u8 = 1;
/// The snapshot's version when its contents are encrypted.
pub(super) const ENCRYPTED_SNAPSHOT_VERSION: u8 = 2;
/// Set in a log record's length when its payload is encrypted.
const ENCRYPTED_BIT: u32 = 1 << 31;
/// Set with [`ENCRYPTED_BIT`] when the payload is a sealed batch of entries.
const BATCH_BIT: u32 = 1 << 30;
/// Record payload lengths are below this (the two flag bits above it).
const MAX_PAYLOAD: u32 = 1 << 30;
/// A batch record holds at most this many plaintext bytes of entries (an
/// entry larger than that is alone in its record), so that reading one
/// record never needs more than about this much beside the entries.
pub(super) const BATCH_PLAINTEXT: usize = 1 << 20;
pub(super) const ENTRY_AAD: &[u8] = b"shoal raft entry";
pub(super) const BATCH_AAD: &[u8] = b"shoal raft entry batch";
pub(super) const SNAPSHOT_AAD: &[u8] = b"shoal raft snapshot";
pub(super) const RECORD_HEADER_LEN: usize = 12;

/// Where the stored snapshot came from; decides how a hard state written
/// before it is repaired on open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SnapshotOrigin {
    /// Made by `compact`: the conf state in `hardstate` is at least as new.
    Compacted = 1,
    /// Received from the leader: it replaces the conf state and commit.
    Received = 2,
}

// ---- log records ----

/// Records of `entries`: sealed batches of consecutive entries, each batch
/// up to [`BATCH_PLAINTEXT`] bytes (one record for a typical append).
pub(super) fn encode_entries(entries: &[Entry], key: &DataKey) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut batch = Vec::new();
    for e in entries {
        let size = e.compute_size() as usize;
        if !batch.is_empty() && batch.len() + 4 + size > BATCH_PLAINTEXT {
            push_batch(&mut buf, &batch, key, e.index)?;
            batch.clear();
        }
        let len = u32::try_from(size)
            .ok()
            .filter(|&len| len < MAX_PAYLOAD - 1024)
            .ok_or_else(|| StorageError::Invalid(format!("entry {} too large", e.index)))?;
        batch.extend_from_slice(&len.to_le_bytes());
        e.write_to_vec(&mut batch).map_err(|err| StorageError::Invalid(format!("encode entry {}: {err}", e.index)))?;
    }
    if !batch.is_empty() {
        push_batch(&mut buf, &batch, key, entries.last().map_or(0, |e| e.index))?;
    }
    Ok(buf)
}

fn push_batch(buf: &mut Vec<u8>, batch: &[u8], key: &DataKey, index: u64) -> Result<()> {
    let payload = key.seal(BATCH_AAD, batch);
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len < MAX_PAYLOAD)
        .ok_or_else(|| StorageError::Invalid(format!("entry {index} too large")))?;
    push_record(buf, len | ENCRYPTED_BIT | BATCH_BIT, &payload);
    Ok(())
}

/// Records of `entries` in plaintext, as written before encryption at rest
/// (only [`super::DiskStorage::write_plaintext_for_bench`] asks for them).
pub(super) fn encode_plain_entries(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    for e in entries {
        let payload =
            e.write_to_bytes().map_err(|err| StorageError::Invalid(format!("encode entry {}: {err}", e.index)))?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len < MAX_PAYLOAD)
            .ok_or_else(|| StorageError::Invalid(format!("entry {} too large", e.index)))?;
        push_record(&mut buf, len, &payload);
    }
    Ok(buf)
}

fn push_record(buf: &mut Vec<u8>, raw_len: u32, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&raw_len.to_le_bytes());
    buf.extend_from_slice(&crc32(payload).to_le_bytes());
    let header_crc = crc32(&buf[start..start + 8]);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(payload);
}

pub(super) enum BadRecord {
    /// The file ends inside the record.
    Incomplete,
    /// Header checksum mismatch.
    Header,
    /// Payload checksum mismatch; the record would end at `end`.
    Payload { end: usize },
}

/// A record that passed its checksums.
pub(super) struct Record<'a> {
    pub payload: &'a [u8],
    /// The payload is encrypted (else it is a plaintext entry from before).
    pub encrypted: bool,
    /// The encrypted payload is a batch of entries (else one entry).
    pub batch: bool,
    /// The record's total length.
    pub len: usize,
}

pub(super) fn decode_record(rest: &[u8]) -> std::result::Result<Record<'_>, BadRecord> {
    if rest.len() < RECORD_HEADER_LEN {
        return Err(BadRecord::Incomplete);
    }
    let raw_len = read_u32(&rest[0..4]);
    let encrypted = raw_len & ENCRYPTED_BIT != 0;
    let batch = raw_len & BATCH_BIT != 0;
    let len = (raw_len & (MAX_PAYLOAD - 1)) as usize;
    let payload_crc = read_u32(&rest[4..8]);
    // A batch is always encrypted: the bit alone is a damaged header.
    if read_u32(&rest[8..12]) != crc32(&rest[0..8]) || (batch && !encrypted) {
        return Err(BadRecord::Header);
    }
    let end = RECORD_HEADER_LEN.checked_add(len).filter(|&end| end <= rest.len()).ok_or(BadRecord::Incomplete)?;
    let payload = &rest[RECORD_HEADER_LEN..end];
    if crc32(payload) != payload_crc {
        return Err(BadRecord::Payload { end });
    }
    Ok(Record { payload, encrypted, batch, len: end })
}

/// The entries in a record's payload (one, or a batch), decrypted if
/// encrypted.
pub(super) fn decode_entries(record: &Record<'_>, key: &DataKey) -> std::result::Result<Vec<Entry>, String> {
    let unseal =
        |aad| key.open(aad, record.payload).map_err(|e| format!("{e} (is this the data key it was written with?)"));
    let parse = |bytes: &[u8]| Entry::parse_from_bytes(bytes).map_err(|e| format!("not an entry: {e}"));
    if !record.encrypted {
        return Ok(vec![parse(record.payload)?]);
    }
    if !record.batch {
        return Ok(vec![parse(&unseal(ENTRY_AAD)?)?]);
    }
    let plain = unseal(BATCH_AAD)?;
    let mut rest = &plain[..];
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let len = rest.get(..4).map(|b| read_u32(b) as usize).ok_or("batch cut inside a length")?;
        let bytes = rest.get(4..).and_then(|r| r.get(..len)).ok_or("batch cut inside an entry")?;
        entries.push(parse(bytes)?);
        rest = &rest[4 + len..];
    }
    if entries.is_empty() {
        return Err("empty batch".to_owned());
    }
    Ok(entries)
}

// ---- sealed files ----

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

/// Sealed body: `[version][u64 snapshot index][u32 hs len][HardState][ConfState]`.
/// The snapshot index is the one this hard state was written after.
pub(super) fn encode_hardstate(hs: &HardState, cs: &ConfState, snapshot_index: u64) -> Result<Vec<u8>> {
    let hs_bytes = hs.write_to_bytes().map_err(|e| StorageError::Invalid(format!("encode hard state: {e}")))?;
    let cs_bytes = cs.write_to_bytes().map_err(|e| StorageError::Invalid(format!("encode conf state: {e}")))?;
    let mut contents = sealed_contents(12 + hs_bytes.len() + cs_bytes.len());
    contents.extend_from_slice(&snapshot_index.to_le_bytes());
    contents.extend_from_slice(&(hs_bytes.len() as u32).to_le_bytes());
    contents.extend_from_slice(&hs_bytes);
    contents.extend_from_slice(&cs_bytes);
    Ok(seal(contents))
}

pub(super) fn decode_hardstate(body: &[u8]) -> Result<(HardState, ConfState, u64)> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("hardstate file: {what}"));
    let fixed = body.get(1..13).ok_or_else(|| corrupt("too short"))?;
    let snapshot_index = u64::from_le_bytes(fixed[0..8].try_into().map_err(|_| corrupt("index"))?);
    let hs_len = read_u32(&fixed[8..12]) as usize;
    let hs_bytes = body.get(13..13 + hs_len).ok_or_else(|| corrupt("truncated hard state"))?;
    let hs = HardState::parse_from_bytes(hs_bytes).map_err(|e| corrupt(&e.to_string()))?;
    let cs = ConfState::parse_from_bytes(&body[13 + hs_len..]).map_err(|e| corrupt(&e.to_string()))?;
    Ok((hs, cs, snapshot_index))
}

/// Sealed body: `[version 2][origin][Snapshot encrypted with key]`.
pub(super) fn encode_snapshot(snap: &Snapshot, origin: SnapshotOrigin, key: &DataKey) -> Result<Vec<u8>> {
    let plain = snap.write_to_bytes().map_err(|e| StorageError::Invalid(format!("encode snapshot: {e}")))?;
    let encrypted = key.seal(&snapshot_aad(origin as u8), &plain);
    let mut contents = sealed_contents(1 + encrypted.len());
    contents[4] = ENCRYPTED_SNAPSHOT_VERSION;
    contents.push(origin as u8);
    contents.extend_from_slice(&encrypted);
    Ok(seal(contents))
}

fn snapshot_aad(origin: u8) -> Vec<u8> {
    let mut aad = SNAPSHOT_AAD.to_vec();
    aad.push(origin);
    aad
}

/// The snapshot, its origin, and whether it was encrypted (version 2) or is
/// plaintext from before (version 1).
pub(super) fn decode_snapshot(body: &[u8], key: &DataKey) -> Result<(Snapshot, SnapshotOrigin, bool)> {
    let corrupt = |what: String| StorageError::Corrupt(format!("snapshot file: {what}"));
    let origin = match body.get(1) {
        Some(1) => SnapshotOrigin::Compacted,
        Some(2) => SnapshotOrigin::Received,
        _ => return Err(corrupt("bad origin".to_owned())),
    };
    let encrypted = body[0] == ENCRYPTED_SNAPSHOT_VERSION;
    let plain;
    let bytes = if encrypted {
        plain = key
            .open(&snapshot_aad(body[1]), &body[2..])
            .map_err(|e| corrupt(format!("{e} (is this the data key it was written with?)")))?;
        &plain[..]
    } else {
        &body[2..]
    };
    let snap = Snapshot::parse_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok((snap, origin, encrypted))
}

pub(super) fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// CRC-32 (IEEE, as zlib), the checksum of every record and sealed file.
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}
