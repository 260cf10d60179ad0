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
