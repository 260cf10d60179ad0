//! The fuzz targets' way to lay out raft files (see `raft::fuzzing`); not
//! an API.
//!
//! A fuzzer cannot fix up a CRC or forge a seal, so the input says, for
//! each file, either its bytes as they are or a body that is sealed here
//! (checksums, and encryption where asked) in the files' own format:
//!
//! `[flags][u16 LE len][hardstate][u16 LE len][snapshot][u16 LE len][log record]…`
//!
//! - flags bit 0: `hardstate` and `snapshot` are bodies after the version
//!   byte, given their checksum here (else written as they are);
//! - bit 1: each log part is one record's payload, given its header here
//!   (else the parts are the log file's bytes, one after the other);
//! - bit 2: those payloads are encrypted with the key first;
//! - bit 3: the snapshot body (origin byte, then a `Snapshot`) is encrypted;
//! - bit 4 (with bit 2): each encrypted payload is a batch of entries
//!   (`[u32 len][Entry]…`, as appends write them).
//!
//! A part cut short by the end of the input ends it; a missing part is a
//! missing file.

use std::fs;
use std::path::Path;

use super::format::{crc32, BATCH_AAD, ENCRYPTED_SNAPSHOT_VERSION, ENTRY_AAD, FORMAT_VERSION, SNAPSHOT_AAD};
use super::keys::DataKey;
use super::{HARDSTATE_FILE, LOG_FILE, SNAPSHOT_FILE};

const ENCRYPTED_BIT: u32 = 1 << 31;
const BATCH_BIT: u32 = 1 << 30;

/// Writes the files `data` describes into the empty directory `dir`.
pub fn write_files(dir: &Path, data: &[u8], key: &DataKey) -> std::io::Result<()> {
    let Some((&flags, mut rest)) = data.split_first() else { return Ok(()) };
    let mut parts = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let Some(part) = rest.get(2..2 + len) else { break };
        parts.push(part);
        rest = &rest[2 + len..];
    }
    let fixed = flags & 1 != 0;
    if let Some(hs) = parts.first() {
        let contents = if fixed { sealed(FORMAT_VERSION, hs) } else { hs.to_vec() };
        fs::write(dir.join(HARDSTATE_FILE), contents)?;
    }
    if let Some(snap) = parts.get(1) {
        let contents = match (fixed, flags & 8 != 0, snap.split_first()) {
            (true, true, Some((&origin, body))) => {
                let mut aad = SNAPSHOT_AAD.to_vec();
                aad.push(origin);
                let mut b = vec![origin];
                b.extend_from_slice(&key.seal(&aad, body));
                sealed(ENCRYPTED_SNAPSHOT_VERSION, &b)
            }
            (true, _, _) => sealed(FORMAT_VERSION, snap),
            (false, _, _) => snap.to_vec(),
        };
        fs::write(dir.join(SNAPSHOT_FILE), contents)?;
    }
    if parts.len() > 2 {
        let mut log = Vec::new();
        for part in &parts[2..] {
            if flags & 2 == 0 {
                log.extend_from_slice(part);
                continue;
            }
            let (payload, bit) = match (flags & 4 != 0, flags & 16 != 0) {
                (true, true) => (key.seal(BATCH_AAD, part), ENCRYPTED_BIT | BATCH_BIT),
                (true, false) => (key.seal(ENTRY_AAD, part), ENCRYPTED_BIT),
                (false, _) => (part.to_vec(), 0),
            };
            let start = log.len();
            log.extend_from_slice(&(payload.len() as u32 | bit).to_le_bytes());
            log.extend_from_slice(&crc32(&payload).to_le_bytes());
            let header_crc = crc32(&log[start..start + 8]);
            log.extend_from_slice(&header_crc.to_le_bytes());
            log.extend_from_slice(&payload);
        }
        fs::write(dir.join(LOG_FILE), log)?;
    }
    Ok(())
}

/// `[crc32(body)][version][body]`.
fn sealed(version: u8, body: &[u8]) -> Vec<u8> {
    let mut contents = vec![0, 0, 0, 0, version];
    contents.extend_from_slice(body);
    let crc = crc32(&contents[4..]);
    contents[..4].copy_from_slice(&crc.to_le_bytes());
    contents
}

/// The input [`write_files`] reads for these parts.
pub fn layout(flags: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![flags];
    for p in parts {
        out.extend_from_slice(&(p.len() as u16).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}
