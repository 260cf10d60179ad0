//! The node's copy of the gossip keys, `DATA_DIR/gossip.keys`: the ring
//! (JSON) sealed with the node's storage key (derived from its
//! private key, see `NodeIdentity::storage_key`), so that gossip starts on
//! a restart before the session with the leader sends the ring again.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::gossip_key::GossipKeyRing;
use worker::node::seal::SealKey;
use worker::node::tls::NodeIdentity;

use super::state::tls_dir;

const AAD: &[u8] = b"shoal gossip keys";

fn path(dir: &Path) -> PathBuf {
    dir.join("gossip.keys")
}

/// This node's storage key, from the identity under `DATA_DIR/tls`.
pub(crate) fn storage_key(dir: &Path) -> Result<SealKey> {
    let identity = NodeIdentity::load(&tls_dir(dir))?
        .with_context(|| format!("{} holds no node identity", tls_dir(dir).display()))?;
    Ok(identity.storage_key())
}

/// The saved ring; an empty one (no gossip until the leader sends it) if
/// there is none or it does not open, which is said in the log.
pub(crate) fn load(dir: &Path, key: &SealKey) -> GossipKeyRing {
    let p = path(dir);
    let sealed = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %p.display(), "no gossip keys saved: no gossip until the leader sends them");
            return GossipKeyRing::default();
        }
        Err(e) => {
            tracing::warn!(file = %p.display(), error = %e, "cannot read the gossip keys: no gossip until the leader sends them");
            return GossipKeyRing::default();
        }
    };
    match key
        .open(AAD, &sealed)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(ring) => ring,
        Err(e) => {
            tracing::warn!(file = %p.display(), error = %e, "damaged gossip keys: no gossip until the leader sends them");
            GossipKeyRing::default()
        }
    }
}

/// Written to a temporary file (owner only), synced, then renamed.
pub(crate) fn save(dir: &Path, key: &SealKey, ring: &GossipKeyRing) -> Result<()> {
    let p = path(dir);
    let tmp = dir.join("gossip.keys.tmp");
    let body = serde_json::to_vec(ring).context("cannot encode the gossip keys")?;
    let sealed = key.seal(AAD, &body);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&sealed).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_reads_back_and_is_not_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::generate();
        assert!(load(dir.path(), &key).is_empty(), "nothing saved yet");
        let ring = GossipKeyRing::first();
        save(dir.path(), &key, &ring).unwrap();
        assert_eq!(load(dir.path(), &key), ring);
        let on_disk = std::fs::read(path(dir.path())).unwrap();
        let secret = &ring.current.as_ref().unwrap().key;
        assert!(!on_disk.windows(secret.len()).any(|w| w == secret), "the key is sealed");
        assert!(load(dir.path(), &SealKey::generate()).is_empty(), "another node's key opens nothing");
    }
}
