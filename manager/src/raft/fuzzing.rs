//! Entry points for the fuzz targets in `tests/fuzz` and their corpus
//! replay test; not an API. Each runs the code a manager runs on bytes from
//! a peer or from its disk, and says what it found as a value: a panic in
//! here is the bug being looked for.

use std::path::Path;
use std::time::Instant;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message as RaftMessage};

use super::core::{parse_context, CoreOptions, RaftCore};
use super::storage::keys::DataKey;
use super::TICK;
use crate::store::{decode_command, encode_command, Store};

/// The data key the storage target's files are sealed with.
pub const FUZZ_KEY: [u8; 32] = [7; 32];

/// The raft target: by the first byte, the rest as a raft message (`0`),
/// as one entry's command bytes (`1`) or as a snapshot's store (`2`).
pub fn raft_input(data: &[u8]) {
    match data.split_first() {
        Some((0, rest)) => raft_message(rest),
        Some((1, rest)) => command(&mut Store::default(), rest),
        Some((2, rest)) => snapshot_data(rest),
        _ => {}
    }
}

/// What comes off the cluster port into raft: a `Frame::Raft`'s bytes,
/// read as the `Step` handler reads them, and what the message carries
/// decoded as the core decodes it once committed (commands applied to a
/// store, conf changes, proposal contexts, a snapshot's store). A message
/// that reads back must write the same message again.
pub fn raft_message(bytes: &[u8]) {
    let mut m = RaftMessage::default();
    if m.merge_from_bytes(bytes).is_err() {
        return;
    }
    let again = m.write_to_bytes().expect("a decoded message encodes");
    assert_eq!(RaftMessage::parse_from_bytes(&again).ok().as_ref(), Some(&m), "raft message round trip");
    let mut store = Store::default();
    for e in m.get_entries() {
        entry(&mut store, e);
    }
    if m.has_snapshot() {
        snapshot_data(m.get_snapshot().get_data());
    }
    let _ = parse_context(m.get_context());
}

/// One log entry's contents, as [`RaftCore`] applies it.
fn entry(store: &mut Store, e: &Entry) {
    let _ = parse_context(&e.context);
    match e.get_entry_type() {
        EntryType::EntryNormal => command(store, &e.data),
        EntryType::EntryConfChange => {
            let _ = ConfChange::parse_from_bytes(&e.data);
        }
        EntryType::EntryConfChangeV2 => {
            let _ = ConfChangeV2::parse_from_bytes(&e.data);
        }
    }
}

/// An entry's command: decoded, re-encoded to the same command, and applied.
pub fn command(store: &mut Store, data: &[u8]) {
    let Ok(cmd) = decode_command(data) else { return };
    let bytes = encode_command(&cmd);
    let back = decode_command(&bytes).expect("an encoded command decodes");
    assert_eq!(encode_command(&back), bytes, "command round trip");
    let _ = store.apply(cmd);
}

/// A snapshot's store (from a peer's `MsgSnapshot` or the snapshot file).
pub fn snapshot_data(data: &[u8]) {
    if let Ok(store) = Store::from_snapshot(data) {
        let bytes = store.to_snapshot();
        let back = Store::from_snapshot(&bytes).expect("a written snapshot reads back");
        assert_eq!(back.to_snapshot(), bytes, "snapshot round trip");
    }
}

/// A manager starting on the raft files in `dir` (`log`, `hardstate`,
/// `snapshot`, as a crash or a damaged disk left them), sealed with
/// [`FUZZ_KEY`]: opened as `shoal daemon` opens them, then run for a few
/// rounds so that what was committed is applied. Damage must be an error.
pub fn raft_dir(dir: &Path) -> Result<(), String> {
    let opts = CoreOptions {
        raft_id: 1,
        bootstrap: false,
        compact_every: 1000,
        boot: 1,
        quota: None,
        key: DataKey::from_bytes(FUZZ_KEY),
    };
    let mut now = Instant::now();
    let mut core = RaftCore::open(dir, opts, now).map_err(|e| e.to_string())?;
    for _ in 0..3 {
        core.handle_ready(now, &mut |_| true).map_err(|e| e.to_string())?;
        now += TICK;
        core.tick(now);
    }
    Ok(())
}

/// A scratch directory of this process (on tmpfs when there is one),
/// emptied for each input.
fn scratch(name: &str) -> std::path::PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let dir = base.join(format!("shoal-fuzz-{name}-{}-{thread}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// The raft files laid out by [`super::storage::fuzzing::write_files`]
/// from `data`, opened by [`raft_dir`].
pub fn storage(data: &[u8]) {
    let dir = scratch("raft");
    super::storage::fuzzing::write_files(&dir, data, &DataKey::from_bytes(FUZZ_KEY)).expect("scratch files");
    let _ = raft_dir(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The KEK the key-files target seals its data keys with.
pub const FUZZ_KEK: [u8; 32] = [5; 32];

/// The key files beside the raft files: `[flags][u16 LE len][dek][kek]`.
/// With flags bit 0 the `dek` part is the plaintext data key, sealed here
/// under [`FUZZ_KEK`] in mode 0 and the `kek` file is that KEK (a fuzzer
/// cannot forge the seal); else both files are written as they are. Then
/// opened as a manager opens them, and with the `kek` part as the unlock
/// key an operator types (`shoal unlock`).
pub fn keyfiles(data: &[u8]) {
    use super::storage::keys::{is_autolocked, open_data_key, DEK_FILE, KEK_FILE};
    use worker::node::seal::SealKey;
    let Some((&flags, rest)) = data.split_first() else { return };
    let (dek, kek) = match rest {
        [a, b, tail @ ..] => {
            let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
            tail.split_at(len)
        }
        _ => (rest, &[][..]),
    };
    let dir = scratch("keys");
    if flags & 1 != 0 {
        let header = b"SHDEK\x01\x00";
        let kek_key = SealKey::from_bytes(FUZZ_KEK);
        let mut contents = header.to_vec();
        contents.extend_from_slice(&kek_key.seal(header, dek));
        std::fs::write(dir.join(DEK_FILE), contents).expect("scratch file");
        std::fs::write(dir.join(KEK_FILE), kek_key.to_text()).expect("scratch file");
    } else {
        std::fs::write(dir.join(DEK_FILE), dek).expect("scratch file");
        std::fs::write(dir.join(KEK_FILE), kek).expect("scratch file");
    }
    let _ = is_autolocked(&dir);
    let _ = open_data_key(&dir, None, false);
    if let Ok(unlock) = String::from_utf8_lossy(kek).parse::<SealKey>() {
        assert_eq!(unlock.to_text().parse::<SealKey>().ok().as_ref().map(SealKey::as_bytes), Some(unlock.as_bytes()));
        let _ = open_data_key(&dir, Some(&unlock), false);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The committed corpus of a fuzz target (`tests/fuzz/corpus/NAME`).
#[cfg(test)]
pub(crate) fn corpus_dir(target: &str) -> std::path::PathBuf {
    fuzz_dir().join("corpus").join(target)
}

#[cfg(test)]
fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz")
}

/// Every committed input of every target: the seeds (`corpus/*/`) and the
/// crash inputs (`regressions/`, a folder per target or files).
#[cfg(test)]
pub(crate) fn all_inputs() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let bytes = std::fs::read(&path).expect("a corpus file");
                out.push((path, bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(&fuzz_dir().join("corpus"), &mut out);
    walk(&fuzz_dir().join("regressions"), &mut out);
    out.sort();
    out
}

/// Runs `f` on every committed input of every target (a target's entry must
/// not panic on another's inputs either); `target`'s own seeds must exist.
/// How many inputs there were.
#[cfg(test)]
pub(crate) fn replay(target: &str, f: fn(&[u8])) -> usize {
    let own = corpus_dir(target);
    let inputs = all_inputs();
    assert!(inputs.iter().any(|(p, _)| p.starts_with(&own)), "{} is empty", own.display());
    for (path, bytes) in &inputs {
        if let Err(e) = std::panic::catch_unwind(|| f(bytes)) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("the {target} entry panicked on {}: {}", path.display(), msg.unwrap_or_default());
        }
    }
    inputs.len()
}

/// Writes `inputs` into a target's corpus, named by content (as libFuzzer does).
#[cfg(test)]
pub(crate) fn write_seeds(target: &str, inputs: &[Vec<u8>]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for input in inputs {
        let name = format!("seed-{:08x}", crc32fast::hash(input));
        std::fs::write(dir.join(name), input).expect("a seed");
    }
}

#[cfg(test)]
mod tests {
    use super::super::core::Proposal;
    use super::super::storage::fuzzing::layout;
    use super::*;
    use crate::store::tests::{entries_v0, SNAPSHOT_V0};
    use crate::store::{Command, Service};
    use common::spec::{ServiceSpec, TaskTemplate};
    use raft::eraftpb::{MessageType, Snapshot};

    #[test]
    fn the_raft_storage_and_key_corpora_replay_without_a_panic() {
        replay("raft", raft_input);
        replay("storage", storage);
        replay("keyfiles", keyfiles);
    }

    fn create(name: &str) -> Vec<u8> {
        let spec = ServiceSpec::new(name, 1, TaskTemplate::new("img"));
        encode_command(&Command::CreateService(Service::new(name.into(), spec, 0)))
    }

    /// A bootstrapped lone manager's raft files after a few commands.
    fn real_files() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let opts = |bootstrap| CoreOptions {
            raft_id: 1,
            bootstrap,
            compact_every: 1000,
            boot: 1,
            quota: None,
            key: DataKey::from_bytes(FUZZ_KEY),
        };
        let mut core = RaftCore::open(dir.path(), opts(true), Instant::now()).unwrap();
        let mut now = Instant::now();
        let mut proposed = 0;
        for _ in 0..200 {
            core.handle_ready(now, &mut |_| true).unwrap();
            if core.status().is_leader && proposed < 2 {
                core.propose(Proposal::Command(create(&format!("s{proposed}"))), now).unwrap();
                proposed += 1;
            }
            if proposed == 2 && core.store().read().services.len() == 2 {
                break;
            }
            now += TICK;
            core.tick(now);
        }
        assert_eq!(core.store().read().services.len(), 2);
        drop(core);
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap_or_default();
        (read("hardstate"), read("snapshot"), read("log"))
    }

    /// Regenerates the seed corpora of the raft, storage and keyfiles
    /// targets: `cargo test --release -p manager write_raft_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_raft_seeds() {
        let entries = entries_v0();
        let mut raft = Vec::new();
        let mut append = RaftMessage::default();
        append.set_msg_type(MessageType::MsgAppend);
        append.from = 2;
        append.to = 1;
        append.term = 3;
        append.index = 4;
        append.log_term = 3;
        append.commit = 5;
        for (i, data) in entries.iter().take(3).enumerate() {
            append.mut_entries().push(Entry {
                index: 5 + i as u64,
                term: 3,
                data: data.clone().into(),
                ..Default::default()
            });
        }
        let cc = ConfChange { node_id: 3, ..Default::default() };
        let mut e = Entry { index: 8, term: 3, data: cc.write_to_bytes().unwrap().into(), ..Default::default() };
        e.set_entry_type(EntryType::EntryConfChange);
        append.mut_entries().push(e);
        raft.push([&[0u8][..], &append.write_to_bytes().unwrap()].concat());
        let mut snap = RaftMessage::default();
        snap.set_msg_type(MessageType::MsgSnapshot);
        snap.set_snapshot(Snapshot { data: SNAPSHOT_V0.to_vec().into(), ..Default::default() });
        snap.mut_snapshot().mut_metadata().index = 9;
        raft.push([&[0u8][..], &snap.write_to_bytes().unwrap()].concat());
        for data in entries.iter().take(6) {
            raft.push([&[1u8][..], data].concat());
        }
        raft.push([&[1u8][..], &create("web")].concat());
        raft.push([&[2u8][..], SNAPSHOT_V0].concat());
        write_seeds("raft", &raft);

        let (hs, snap, log) = real_files();
        let mut storage = vec![layout(0, &[&hs, &snap, &log])];
        // The same, as bodies for the harness to seal: the hard state after
        // its version byte, the snapshot plaintext, entries as records.
        let plain_snap = {
            let mut s = Snapshot { data: SNAPSHOT_V0.to_vec().into(), ..Default::default() };
            s.mut_metadata().index = 1;
            s.mut_metadata().term = 1;
            s.mut_metadata().mut_conf_state().voters = vec![1];
            [&[1u8][..], &s.write_to_bytes().unwrap()].concat()
        };
        let records: Vec<Vec<u8>> = entries
            .iter()
            .take(4)
            .enumerate()
            .map(|(i, data)| {
                Entry { index: 2 + i as u64, term: 1, data: data.clone().into(), ..Default::default() }
                    .write_to_bytes()
                    .unwrap()
            })
            .collect();
        let hs_body = hs.get(5..).unwrap_or_default().to_vec();
        let mut parts: Vec<&[u8]> = vec![&hs_body, &plain_snap];
        parts.extend(records.iter().map(Vec::as_slice));
        for flags in [1 | 2, 1 | 2 | 4, 1 | 2 | 4 | 8] {
            storage.push(layout(flags, &parts));
        }
        // Entries as batches (`[u32 len][Entry]…`), as appends write them.
        let batches: Vec<Vec<u8>> = records
            .chunks(2)
            .map(|pair| pair.iter().flat_map(|r| [&(r.len() as u32).to_le_bytes()[..], r].concat()).collect())
            .collect();
        let mut batch_parts: Vec<&[u8]> = vec![&hs_body, &plain_snap];
        batch_parts.extend(batches.iter().map(Vec::as_slice));
        storage.push(layout(1 | 2 | 4 | 8 | 16, &batch_parts));
        write_seeds("storage", &storage);

        let kek = worker::node::seal::SealKey::from_bytes(FUZZ_KEK).to_text();
        let mut keys = vec![[&[1u8, 32, 0][..], &[3u8; 32]].concat()];
        let dir = tempfile::tempdir().unwrap();
        super::super::storage::keys::open_data_key(dir.path(), None, false).unwrap();
        let dek = std::fs::read(dir.path().join("dek")).unwrap();
        let kek_file = std::fs::read(dir.path().join("kek")).unwrap();
        keys.push([&[0u8][..], &(dek.len() as u16).to_le_bytes(), &dek, &kek_file].concat());
        keys.push([&[0u8, 0, 0][..], kek.as_bytes()].concat());
        write_seeds("keyfiles", &keys);
    }
}
