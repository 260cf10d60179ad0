//! The data key that seals the raft log and snapshot, and how it is kept
//! beside them:
//!
//! - `dek`: the data key, sealed with a key-encrypting key (KEK):
//!   `[magic "SHDEK"][version 1][mode][seal(KEK, aad = magic..mode, data key)]`.
//!   `mode` 0: the KEK is in `kek` beside it; 1 (autolock): only the
//!   operator has the KEK, and the manager stays locked until it is given
//!   (`shoal unlock`).
//! - `kek`: the KEK as text (`SHKEY-1-…`, mode 0600), absent under autolock.
//!
//! A wrong KEK fails the AEAD check, so it is told apart from the right one
//! without storing anything about it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use worker::node::seal::{SealError, SealKey, KEY_LEN};

use super::files::write_atomic;

pub const DEK_FILE: &str = "dek";
pub const KEK_FILE: &str = "kek";
const MAGIC: &[u8; 5] = b"SHDEK";
const VERSION: u8 = 1;

/// The key the raft files are sealed with.
#[derive(Clone, Debug)]
pub struct DataKey(SealKey);

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(SealKey::generate())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(SealKey::from_bytes(bytes))
    }

    /// A fixed key, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> DataKey {
        DataKey::from_bytes([7; KEY_LEN])
    }

    pub(super) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.0.seal(aad, plaintext)
    }

    pub(super) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        self.0.open(aad, sealed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "this manager is locked (autolock): its raft data is encrypted with a key only the operator holds; \
         run `shoal unlock` and enter the unlock key printed when the cluster was created"
    )]
    Locked,
    #[error("wrong unlock key: it does not open the data key in {}", .0.display())]
    WrongKey(PathBuf),
    #[error("{} is damaged: {what}", path.display())]
    Damaged { path: PathBuf, what: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl KeyError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> KeyError {
        KeyError::Io { op, path: path.to_owned(), source }
    }
}

/// What [`open_data_key`] found or made.
#[derive(Debug)]
pub struct Opened {
    pub key: DataKey,
    /// The unlock key of a directory made just now with autolock: shown
    /// to the operator once, kept nowhere.
    pub new_unlock_key: Option<SealKey>,
}

/// Whether `dir` holds a data key sealed with a KEK only the operator has.
pub fn is_autolocked(dir: &Path) -> Result<bool, KeyError> {
    Ok(matches!(read_dek(dir)?, Some((1, _))))
}

/// The data key of the raft files in `dir`. A directory without one gets a
/// new data key and KEK (the KEK kept in `kek`, or with `autolock` handed
/// back in [`Opened::new_unlock_key`] and kept nowhere). An autolocked
/// directory needs `unlock`, and refuses a wrong one.
pub fn open_data_key(dir: &Path, unlock: Option<&SealKey>, autolock: bool) -> Result<Opened, KeyError> {
    fs::create_dir_all(dir).map_err(|e| KeyError::io("create dir", dir, e))?;
    let dek_path = dir.join(DEK_FILE);
    let Some((mode, sealed)) = read_dek(dir)? else {
        return create(dir, autolock);
    };
    let kek = match mode {
        1 => unlock.cloned().ok_or(KeyError::Locked)?,
        _ => read_kek(dir)?,
    };
    let raw = kek.open(&header(mode), &sealed).map_err(|_| match mode {
        1 => KeyError::WrongKey(dek_path.clone()),
        _ => KeyError::Damaged {
            path: dek_path.clone(),
            what: format!("the key in {} does not open it", dir.join(KEK_FILE).display()),
        },
    })?;
    let bytes: [u8; KEY_LEN] = raw
        .try_into()
        .map_err(|_| KeyError::Damaged { path: dek_path.clone(), what: "the data key has the wrong length".into() })?;
    Ok(Opened { key: DataKey::from_bytes(bytes), new_unlock_key: None })
}

fn header(mode: u8) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&[VERSION, mode]);
    h
}

/// `(mode, sealed data key)`, `None` without a `dek` file.
fn read_dek(dir: &Path) -> Result<Option<(u8, Vec<u8>)>, KeyError> {
    let path = dir.join(DEK_FILE);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeyError::io("read", &path, e)),
    };
    let damaged = |what: &str| KeyError::Damaged { path: path.clone(), what: what.to_owned() };
    if raw.len() < MAGIC.len() + 2 || &raw[..MAGIC.len()] != MAGIC {
        return Err(damaged("not a shoal data key file"));
    }
    if raw[MAGIC.len()] != VERSION {
        return Err(damaged(&format!("unknown version {}", raw[MAGIC.len()])));
    }
    let mode = raw[MAGIC.len() + 1];
    if mode > 1 {
        return Err(damaged(&format!("unknown mode {mode}")));
    }
    Ok(Some((mode, raw[MAGIC.len() + 2..].to_vec())))
}

fn read_kek(dir: &Path) -> Result<SealKey, KeyError> {
    let path = dir.join(KEK_FILE);
    let text = fs::read_to_string(&path).map_err(|e| KeyError::io("read", &path, e))?;
    text.parse().map_err(|e: SealError| KeyError::Damaged { path, what: e.to_string() })
}

/// A new data key and KEK. The KEK file is written before the data key it
/// opens: a crash in between leaves no `dek`, and the next start makes both
/// again (there is no sealed data yet).
fn create(dir: &Path, autolock: bool) -> Result<Opened, KeyError> {
    let data = SealKey::generate();
    let kek = SealKey::generate();
    let mode = u8::from(autolock);
    if !autolock {
        let text = format!("{}\n", kek.to_text());
        write_private(dir, KEK_FILE, text.as_bytes())?;
    }
    let mut contents = header(mode);
    contents.extend_from_slice(&kek.seal(&header(mode), data.as_bytes()));
    write_private(dir, DEK_FILE, &contents)?;
    tracing::info!(dir = %dir.display(), autolock, "made the data key of the raft files");
    Ok(Opened { key: DataKey(data), new_unlock_key: autolock.then_some(kek) })
}

fn write_private(dir: &Path, name: &str, contents: &[u8]) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    write_atomic(dir, name, contents).map_err(|e| KeyError::Damaged { path: path.clone(), what: e.to_string() })?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| KeyError::io("chmod", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_a_key_that_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let made = open_data_key(dir.path(), None, false).unwrap();
        assert!(made.new_unlock_key.is_none());
        assert!(!is_autolocked(dir.path()).unwrap());
        let again = open_data_key(dir.path(), None, false).unwrap();
        let sealed = made.key.seal(b"x", b"value");
        assert_eq!(again.key.open(b"x", &sealed).unwrap(), b"value");
        // The data key itself is nowhere in the clear.
        let dek = fs::read(dir.path().join(DEK_FILE)).unwrap();
        assert!(!dek.windows(KEY_LEN).any(|w| w == made.key.0.as_bytes()));
    }

    #[test]
    fn autolock_keeps_no_kek_and_needs_the_right_unlock_key() {
        let dir = tempfile::tempdir().unwrap();
        let made = open_data_key(dir.path(), None, true).unwrap();
        let unlock = made.new_unlock_key.clone().expect("an unlock key to show");
        assert!(!dir.path().join(KEK_FILE).exists());
        assert!(is_autolocked(dir.path()).unwrap());
        assert!(matches!(open_data_key(dir.path(), None, false), Err(KeyError::Locked)));
        let wrong = SealKey::generate();
        let err = open_data_key(dir.path(), Some(&wrong), false).unwrap_err();
        assert!(err.to_string().starts_with("wrong unlock key: it does not open the data key in"), "{err}");
        let opened = open_data_key(dir.path(), Some(&unlock), false).unwrap();
        assert_eq!(opened.key.open(b"a", &made.key.seal(b"a", b"v")).unwrap(), b"v");
    }

    #[test]
    fn damaged_key_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        open_data_key(dir.path(), None, false).unwrap();
        let dek = dir.path().join(DEK_FILE);
        let good = fs::read(&dek).unwrap();
        for bad in [vec![], b"SHDEK".to_vec(), b"SHDEK\x09\x00".to_vec(), good[..good.len() - 1].to_vec()] {
            fs::write(&dek, &bad).unwrap();
            assert!(matches!(open_data_key(dir.path(), None, false), Err(KeyError::Damaged { .. })), "{bad:?}");
        }
        fs::write(&dek, &good).unwrap();
        fs::write(dir.path().join(KEK_FILE), "SHKEY-1-nope").unwrap();
        let err = open_data_key(dir.path(), None, false).unwrap_err();
        assert!(matches!(err, KeyError::Damaged { .. }), "{err}");
        fs::write(dir.path().join(KEK_FILE), SealKey::generate().to_text()).unwrap();
        let err = open_data_key(dir.path(), None, false).unwrap_err();
        assert!(err.to_string().contains("does not open it"), "{err}");
    }
}
