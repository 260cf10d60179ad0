//! Files replaced atomically (write `NAME.tmp`, fsync, rename, fsync the
//! directory) and sealed files read back.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::format::{crc32, read_u32};
use super::{Result, StorageError};

pub(super) fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

/// Replaces `dir/name` with `contents`; returns the file size. Failures
/// before the rename leave the old file in place (`Io`), later ones are
/// `Durability`.
pub(super) fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<u64> {
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

/// Reads a file made by `seal` in one of the `versions`; returns the body,
/// `None` if there is no file.
pub(super) fn read_sealed(dir: &Path, name: &str, versions: &[u8]) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", &path, e)),
    };
    if raw.len() < 5 || read_u32(&raw[0..4]) != crc32(&raw[4..]) {
        return Err(StorageError::Corrupt(format!("{name} file fails its checksum")));
    }
    if !versions.contains(&raw[4]) {
        return Err(StorageError::Corrupt(format!("{name} file has unknown version {}", raw[4])));
    }
    Ok(Some(raw[4..].to_vec()))
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::durability("fsync dir", dir, e))
}

/// The file [`probe_space`] writes (and removes again).
pub(super) const PROBE_FILE: &str = "space-probe";

/// Whether `bytes` more fit in `dir`: writes a file that size, fsyncs it
/// and removes it. The error is what that write met (ENOSPC when full).
pub(super) fn probe_space(dir: &Path, bytes: usize) -> Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; bytes])?;
        Ok(f)
    });
    let result = match written {
        Ok(f) => f.sync_all().map_err(|e| StorageError::io("fsync", &path, e)),
        Err(e) => Err(StorageError::io("write", &path, e)),
    };
    // Removing gives the space back whatever happened.
    let _ = fs::remove_file(&path);
    result
}
