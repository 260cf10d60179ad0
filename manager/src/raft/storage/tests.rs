use std::fs;

use raft::eraftpb::EntryType;
use raft::{Config, RawNode, Storage as _};

use super::format::{crc32, RECORD_HEADER_LEN};
use super::*;

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
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        s.set_conf_state(voters(&[1, 2, 3])).unwrap();
        s.append(&ents[..2]).unwrap();
        s.append(&ents[2..]).unwrap();
        s.set_hardstate(hard_state(1, 1, 3)).unwrap();
        s.set_commit(4).unwrap();
        assert!(!s.initial_state_is_empty());
    }
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
    let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        s.append(&entries(1..=5, 1)).unwrap();
        s.append(&entries(3..=4, 2)).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
    }
    let mut expected = entries(1..=2, 1);
    expected.extend(entries(3..=4, 2));
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        assert_eq!(all_entries(&s), expected);
        assert_eq!(s.term(3).unwrap(), 2);
        // Appending after an overwrite replays without a gap.
        s.append(&entries(5..=5, 2)).unwrap();
    }
    expected.extend(entries(5..=5, 2));
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
    assert_eq!(all_entries(&s), expected);
}

#[test]
fn compact_drops_entries_and_bounds_disk() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![7u8; 1024];
    let ents: Vec<Entry> = (1..=100).map(|i| entry(i, 1 + i / 50, &big)).collect();
    let before;
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (81, 102));
}

#[test]
fn compact_everything_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        s.append(&entries(1..=4, 1)).unwrap();
        s.set_hardstate(hard_state(1, 1, 4)).unwrap();
        s.compact(4, b"all".to_vec(), voters(&[1])).unwrap();
    }
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (5, 4));
    assert_eq!(s.term(4).unwrap(), 1);
    assert!(all_entries(&s).is_empty());
}

#[test]
fn apply_snapshot_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot(20, 3, b"leader-state", voters(&[1, 2, 3]));
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        s.set_conf_state(voters(&[1])).unwrap();
        s.append(&entries(1..=10, 1)).unwrap();
        s.set_hardstate(hard_state(2, 0, 5)).unwrap();
        s.apply_snapshot(snap.clone()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (21, 20));
        assert_eq!(s.hard_state(), hard_state(3, 0, 20));
    }
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
    assert_eq!(all_entries(&s), entries(21..=22, 3));
}

#[test]
fn crash_inside_compact_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let old_log = dir.path().join("old-log");
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        s.append(&entries(1..=10, 1)).unwrap();
        s.set_hardstate(hard_state(1, 1, 8)).unwrap();
        fs::copy(log_path(dir.path()), &old_log).unwrap();
        s.compact(6, b"six".to_vec(), voters(&[1])).unwrap();
    }
    // As if the crash hit after the snapshot rename but before the log rename.
    fs::rename(&old_log, log_path(dir.path())).unwrap();
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        assert_eq!(all_entries(&s), entries(7..=10, 1));
        assert_eq!(s.snapshot_data(), Some((6, 1, b"six".to_vec())));
        s.append(&entries(11..=11, 1)).unwrap();
    }
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
    assert_eq!(all_entries(&s), entries(7..=11, 1));
}

#[test]
fn crash_inside_apply_snapshot_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (old_log, old_state) = (dir.path().join("old-log"), dir.path().join("old-state"));
    let snap = snapshot(8, 4, b"leader", voters(&[1, 2, 3]));
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
        let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (9, 8));
        assert_eq!(s.hard_state(), hard_state(4, 2, 8));
        assert_eq!(s.conf_state(), voters(&[1, 2, 3]));
    }
}

#[test]
fn torn_last_record_is_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
            let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
            assert_eq!(all_entries(&s), entries(1..=4, 1));
            assert_eq!(fs::metadata(&path).unwrap().len(), 4 * record as u64);
            s.append(&entries(5..=6, 1)).unwrap();
        }
        let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        assert_eq!(all_entries(&s), entries(1..=6, 1));
    }
}

#[test]
fn flipped_bytes_in_the_middle_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        for e in entries(1..=5, 1) {
            s.append(&[e]).unwrap();
        }
    }
    let path = log_path(dir.path());
    let full = fs::read(&path).unwrap();
    let record = full.len() / 5;
    // A payload byte, and the length field, of the second record.
    for at in [record + RECORD_HEADER_LEN + 2, record + 1] {
        let mut bytes = full.clone();
        bytes[at] ^= 0x5a;
        fs::write(&path, &bytes).unwrap();
        match DiskStorage::open(dir.path(), DataKey::for_tests()) {
            Err(e @ StorageError::Corrupt(_)) => assert!(e.is_fatal()),
            Err(e) => panic!("expected corruption, got {e}"),
            Ok(_) => panic!("expected corruption at byte {at}"),
        }
    }

    fs::write(&path, &full).unwrap();
    {
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        s.set_hardstate(hard_state(1, 1, 2)).unwrap();
    }
    let state_path = dir.path().join(HARDSTATE_FILE);
    let mut state = fs::read(&state_path).unwrap();
    let mid = state.len() / 2;
    state[mid] ^= 0xff;
    fs::write(&state_path, &state).unwrap();
    assert!(matches!(DiskStorage::open(dir.path(), DataKey::for_tests()), Err(StorageError::Corrupt(_))));
}

#[test]
fn entries_honour_max_size_like_limit_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
        let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
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

#[test]
fn errors_are_classified_space_fsync_corruption_or_other() {
    use super::Failure::*;
    let os = |errno| io::Error::from_raw_os_error(errno);
    let path = PathBuf::from("/d/raft/log");
    let io_err = |op, errno| StorageError::Io { op, path: path.clone(), source: os(errno) };
    let durable = |op, errno| StorageError::Durability { op, path: path.clone(), source: os(errno) };
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    const EIO: i32 = 5;
    let cases = [
        (io_err("write", ENOSPC), Space),
        (io_err("write", EDQUOT), Space),
        // A step after the first durable one: the files are still a state open recovers.
        (durable("write", ENOSPC), Space),
        (durable("rename", ENOSPC), Space),
        (StorageError::QuotaReached { dir: path.clone(), used: 10, wanted: 5, quota: 12 }, Space),
        // A failed fsync is fatal whatever its errno.
        (durable("fsync", ENOSPC), Fsync),
        (durable("fsync", EIO), Fsync),
        (durable("fsync dir", EIO), Fsync),
        (io_err("fsync", EIO), Fsync),
        (StorageError::Corrupt("log record at byte 9 fails its checksum".into()), Corrupt),
        (io_err("write", EIO), Other),
        (durable("rename", EIO), Other),
        (StorageError::Poisoned, Other),
        (StorageError::Invalid("gap".into()), Other),
    ];
    for (err, want) in cases {
        assert_eq!(err.failure(), want, "{err}");
    }
}

#[test]
fn a_write_past_the_quota_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
    s.append(&entries(1..=3, 1)).unwrap();
    s.set_hardstate(hard_state(1, 1, 2)).unwrap();
    let used = s.disk_bytes();
    s.set_quota(Some(used + 10));
    let err = s.append(&entries(4..=6, 1)).unwrap_err();
    assert!(
        matches!(err, StorageError::QuotaReached { used: u, quota: q, .. } if u == used && q == used + 10),
        "{err}"
    );
    assert_eq!(err.failure(), super::Failure::Space);
    assert!(s.probe_space().is_err(), "no room under the quota");
    assert_eq!(s.disk_bytes(), used);
    // Nothing changed: still usable, and a reopen reads the same.
    assert_eq!(s.last_index().unwrap(), 3);
    s.set_quota(None);
    s.probe_space().unwrap();
    assert!(!dir.path().join("space-probe").exists(), "the probe cleans up");
    s.append(&entries(4..=4, 1)).unwrap();
    drop(s);
    let s = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
    assert_eq!(all_entries(&s).len(), 4);
}

#[test]
fn the_default_quota_is_half_the_free_space_capped() {
    assert_eq!(super::quota_for(1000, 24 << 20), 1000 + (12 << 20));
    assert_eq!(super::quota_for(0, 1 << 40), super::DEFAULT_QUOTA_CAP);
    let dir = tempfile::tempdir().unwrap();
    assert!(super::default_quota(dir.path()).is_some_and(|q| q > 0));
}
