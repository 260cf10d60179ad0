//! The data key of a manager's raft files (see
//! `manager::raft::storage::keys`): made at the first start, read from
//! beside the files, or, when the manager is autolocked, waited for: the
//! node serves only the locked API until `shoal unlock` gives the key.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use manager::raft::storage::keys::{is_autolocked, open_data_key, DataKey};
use worker::node::seal::SealKey;

use super::state::raft_dir;

/// This manager's data key; `autolock` applies to a directory made now
/// (`--init --autolock`), whose unlock key is printed once.
pub(crate) async fn data_key(data_dir: &Path, api_addr: SocketAddr, autolock: bool) -> Result<DataKey> {
    let dir = raft_dir(data_dir);
    if is_autolocked(&dir)? {
        return manager::api::locked::serve_until_unlocked(api_addr, dir)
            .await
            .with_context(|| format!("cannot serve the locked API on {api_addr}"));
    }
    let opened = open_data_key(&dir, None, autolock)?;
    if let Some(unlock) = opened.new_unlock_key {
        print_unlock_key(&unlock);
    }
    Ok(opened.key)
}

fn print_unlock_key(key: &SealKey) {
    use std::io::Write;
    println!("Autolock is on: this manager's raft data is encrypted with a key that is stored nowhere.");
    println!("To unlock this manager after it restarts, run `shoal unlock` and enter the following key:\n");
    println!("    {}\n", key.to_text());
    println!("Keep it in a password manager: without it this manager cannot start again.\n");
    let _ = std::io::stdout().flush();
}
