//! Encryption at rest: what the files hold, the migration of plaintext
//! files from before, and wrong keys or damaged ciphertext.

use std::fs;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage as _};

use super::format::crc32;
use super::keys::DataKey;
use super::{DiskStorage, StorageError, LOG_FILE, SNAPSHOT_FILE};

const SECRET: &[u8] = b"-----BEGIN PRIVATE KEY----- the CA key";

fn entry(index: u64, data: &[u8]) -> Entry {
    Entry { index, term: 1, data: data.to_vec().into(), ..Default::default() }
}

fn snapshot(index: u64, data: &[u8]) -> Snapshot {
    let mut snap = Snapshot { data: data.to_vec().into(), ..Default::default() };
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = 1;
    snap.mut_metadata().set_conf_state(ConfState { voters: vec![1], ..Default::default() });
    snap
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file of the directory, as raw bytes.
fn raw_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

fn entries_of(s: &DiskStorage) -> Vec<Entry> {
    let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
    s.entries(first, last + 1, None, GetEntriesContext::empty(false)).unwrap()
}

/// The log record and snapshot layout of the version before encryption.
fn plaintext_record(e: &Entry) -> Vec<u8> {
    let payload = e.write_to_bytes().unwrap();
    let mut rec = (payload.len() as u32).to_le_bytes().to_vec();
    rec.extend_from_slice(&crc32(&payload).to_le_bytes());
    let header_crc = crc32(&rec);
    rec.extend_from_slice(&header_crc.to_le_bytes());
    rec.extend_from_slice(&payload);
    rec
}

fn plaintext_snapshot_file(snap: &Snapshot) -> Vec<u8> {
    let mut body = vec![1u8, 1]; // version 1, made by compaction
    body.extend_from_slice(&snap.write_to_bytes().unwrap());
    let mut file = crc32(&body).to_le_bytes().to_vec();
    file.extend_from_slice(&body);
    file
}

#[test]
fn no_entry_or_snapshot_byte_is_on_disk_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let mut s = DiskStorage::open(dir.path(), key.clone()).unwrap();
    let mut data = Vec::from(SECRET);
    let list: Vec<Entry> = (2..=5).map(|i| entry(i, &data)).collect();
    s.apply_snapshot(snapshot(1, SECRET)).unwrap();
    s.append(&list).unwrap();
    s.set_commit(4).unwrap();
    data.extend_from_slice(b" in the snapshot");
    s.compact(3, data.clone(), ConfState { voters: vec![1], ..Default::default() }).unwrap();
    for (name, bytes) in raw_files(dir.path()) {
        assert!(!contains(&bytes, SECRET), "{name} holds the secret in the clear");
    }
    drop(s);
    let s = DiskStorage::open(dir.path(), key).unwrap();
    assert_eq!(s.snapshot_data().unwrap().2, data);
    assert_eq!(entries_of(&s), list[2..].to_vec());
}

#[test]
fn plaintext_files_from_before_are_read_and_encrypted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let list: Vec<Entry> = (3..=5).map(|i| entry(i, SECRET)).collect();
    let log: Vec<u8> = list.iter().flat_map(plaintext_record).collect();
    fs::write(dir.path().join(LOG_FILE), &log).unwrap();
    fs::write(dir.path().join(SNAPSHOT_FILE), plaintext_snapshot_file(&snapshot(2, SECRET))).unwrap();
    let key = DataKey::generate();
    let s = DiskStorage::open(dir.path(), key.clone()).unwrap();
    assert_eq!(entries_of(&s), list);
    assert_eq!(s.snapshot_data().unwrap().2, SECRET);
    for (name, bytes) in raw_files(dir.path()) {
        assert!(!contains(&bytes, SECRET), "{name} still holds plaintext after the migration");
    }
    // Appends after the migration go on from there, and all reads back.
    let mut s = s;
    s.append(&[entry(6, b"six")]).unwrap();
    drop(s);
    let s = DiskStorage::open(dir.path(), key).unwrap();
    assert_eq!(entries_of(&s).len(), 4);
    assert_eq!(s.hard_state(), HardState { term: 1, commit: 2, ..Default::default() });
}

#[test]
fn a_wrong_key_or_a_changed_ciphertext_is_corruption_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let mut s = DiskStorage::open(dir.path(), key.clone()).unwrap();
    s.apply_snapshot(snapshot(1, b"state")).unwrap();
    s.append(&[entry(2, b"two")]).unwrap();
    drop(s);

    let err = DiskStorage::open(dir.path(), DataKey::generate()).err().expect("another key opens nothing");
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("wrong key or damaged data"), "{err}");

    // A flipped ciphertext bit with checksums made to match: only the AEAD
    // tag can tell.
    let path = dir.path().join(LOG_FILE);
    let mut log = fs::read(&path).unwrap();
    let last = log.len() - 1;
    log[last] ^= 1;
    let payload_crc = crc32(&log[12..]);
    log[4..8].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32(&log[0..8]);
    log[8..12].copy_from_slice(&header_crc.to_le_bytes());
    fs::write(&path, &log).unwrap();
    let err = DiskStorage::open(dir.path(), key).err().expect("a changed record opens nothing");
    assert_eq!(
        err.to_string(),
        "raft storage corrupt: log record at byte 0: cannot unseal: wrong key or damaged data \
         (is this the data key it was written with?)"
    );
}

/// The benchmark's plaintext switch writes exactly the records of before:
/// the log holds the value in clear, and opening it reads them back and
/// encrypts them.
#[test]
fn the_benchmarks_plaintext_appends_are_the_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let mut s = DiskStorage::open(dir.path(), key.clone()).unwrap();
    s.write_plaintext_for_bench();
    let list: Vec<Entry> = (1..=3).map(|i| entry(i, SECRET)).collect();
    s.append(&list).unwrap();
    drop(s);
    let log = fs::read(dir.path().join(LOG_FILE)).unwrap();
    assert_eq!(log, list.iter().flat_map(plaintext_record).collect::<Vec<u8>>());
    let s = DiskStorage::open(dir.path(), key).unwrap();
    assert_eq!(entries_of(&s), list);
    for (name, bytes) in raw_files(dir.path()) {
        assert!(!contains(&bytes, SECRET), "{name} still holds plaintext after opening");
    }
}

/// The record header of `payload` with `flags` in the length's top bits.
fn record_with(flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut rec = (payload.len() as u32 | flags).to_le_bytes().to_vec();
    rec.extend_from_slice(&crc32(payload).to_le_bytes());
    let header_crc = crc32(&rec);
    rec.extend_from_slice(&header_crc.to_le_bytes());
    rec.extend_from_slice(payload);
    rec
}

/// The batch plaintext: `[u32 len][Entry]…`.
fn batch_body(list: &[Entry]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in list {
        let bytes = e.write_to_bytes().unwrap();
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(&bytes);
    }
    body
}

/// One append of many entries is one sealed record (one nonce and tag),
/// and reads back entry by entry.
#[test]
fn an_append_of_many_entries_is_one_sealed_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let list: Vec<Entry> = (1..=32).map(|i| entry(i, &[b'x'; 200])).collect();
    let mut s = DiskStorage::open(dir.path(), key.clone()).unwrap();
    s.append(&list).unwrap();
    drop(s);
    let log = fs::read(dir.path().join(LOG_FILE)).unwrap();
    let plain_len = batch_body(&list).len();
    assert_eq!(log.len(), 12 + plain_len + worker::node::seal::OVERHEAD, "one header, one seal");
    assert_eq!(u32::from_le_bytes(log[0..4].try_into().unwrap()) >> 30, 0b11, "encrypted batch");
    let s = DiskStorage::open(dir.path(), key).unwrap();
    assert_eq!(entries_of(&s), list);
}

/// An append bigger than a batch is cut into several records, and an entry
/// bigger than a batch is alone in its own.
#[test]
fn a_large_append_is_cut_into_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let big = vec![b'y'; super::format::BATCH_PLAINTEXT + 10];
    let mut list: Vec<Entry> = (1..=3).map(|i| entry(i, &vec![b'z'; 400 * 1024])).collect();
    list.push(entry(4, &big));
    list.push(entry(5, b"small"));
    let mut s = DiskStorage::open(dir.path(), key.clone()).unwrap();
    s.append(&list).unwrap();
    drop(s);
    let log = fs::read(dir.path().join(LOG_FILE)).unwrap();
    let mut records = 0;
    let mut pos = 0;
    while pos < log.len() {
        let len = (u32::from_le_bytes(log[pos..pos + 4].try_into().unwrap()) & ((1 << 30) - 1)) as usize;
        assert!(len <= super::format::BATCH_PLAINTEXT + 1024 || records == 1, "record {records}: {len} bytes");
        pos += 12 + len;
        records += 1;
    }
    // [1, 2] (two of 400 KiB fit in 1 MiB), [3], [4: alone, too big], [5].
    assert_eq!(records, 4);
    let s = DiskStorage::open(dir.path(), key).unwrap();
    assert_eq!(entries_of(&s), list);
}

/// Logs written one sealed entry per record (before batches) are read as
/// they were, also mixed with batches after them.
#[test]
fn single_entry_records_of_before_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let old: Vec<Entry> = (1..=3).map(|i| entry(i, b"old")).collect();
    let mut log: Vec<u8> = Vec::new();
    for e in &old {
        let sealed = key.seal(super::format::ENTRY_AAD, &e.write_to_bytes().unwrap());
        log.extend(record_with(1 << 31, &sealed));
    }
    fs::write(dir.path().join(LOG_FILE), &log).unwrap();
    let mut s = DiskStorage::open(dir.path(), key.clone()).unwrap();
    assert_eq!(entries_of(&s), old);
    let new: Vec<Entry> = (3..=5).map(|i| entry(i, b"new")).collect();
    s.append(&new).unwrap();
    drop(s);
    let s = DiskStorage::open(dir.path(), key).unwrap();
    assert_eq!(entries_of(&s), [&old[..2], &new[..]].concat());
}

/// A batch whose sealed body does not hold whole entries, or holds none,
/// is corruption (only someone with the key could write one).
#[test]
fn a_malformed_batch_is_corruption() {
    let key = DataKey::generate();
    let seal = |body: &[u8]| key.seal(super::format::BATCH_AAD, body);
    let whole = batch_body(&[entry(1, b"a"), entry(2, b"b")]);
    for (body, why) in [
        (whole[..whole.len() - 1].to_vec(), "batch cut inside an entry"),
        (whole[..2].to_vec(), "batch cut inside a length"),
        (Vec::new(), "empty batch"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // A second record after it, so that the damage is not a torn tail.
        let mut log = record_with(3 << 30, &seal(&body));
        log.extend(record_with(3 << 30, &seal(&batch_body(&[entry(3, b"c")]))));
        fs::write(dir.path().join(LOG_FILE), &log).unwrap();
        let err = DiskStorage::open(dir.path(), key.clone()).err().expect("opens nothing");
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains(why), "{err}");
    }
    // The batch bit without the encrypted bit is a damaged header.
    let dir = tempfile::tempdir().unwrap();
    let mut log = record_with(1 << 30, &entry(1, b"a").write_to_bytes().unwrap());
    log.extend(record_with(3 << 30, &seal(&batch_body(&[entry(2, b"b")]))));
    fs::write(dir.path().join(LOG_FILE), &log).unwrap();
    let err = DiskStorage::open(dir.path(), key).err().expect("opens nothing");
    assert!(err.to_string().contains("fails its checksum"), "{err}");
}
