//! The environment: the test image, the binary, Docker, CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::docker::docker;
use crate::process::run_with_timeout;

/// The offline test image, built by `deploy/build-image.sh`.
pub const BUSYBOX_IMAGE: &str = "shoal/busybox:latest";

/// Cluster port (TCP frames, UDP gossip) on every node's address.
pub const CLUSTER_PORT: u16 = 4242;
/// HTTP API port on every node's address.
pub const API_PORT: u16 = 4243;

/// How long `Cluster::start` waits for node1's API to answer.
pub const API_DEADLINE: Duration = Duration::from_secs(30);
/// How long `Cluster::start` waits for every node to be Ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node gets to exit after SIGTERM before it is SIGKILLed.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Default limit for one CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between two attempts of [`wait_for`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub fn busybox_image() -> &'static str {
    BUSYBOX_IMAGE
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The `shoal` binary: `$SHOAL_BIN`, else `<workspace>/target/release/shoal`.
/// Panics with directions when it is not there.
pub fn shoal_bin() -> PathBuf {
    let path = match std::env::var_os("SHOAL_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            // cargo runs tests in the crate dir: read a relative path from the
            // workspace root, where it was most likely meant.
            if p.is_relative() && !p.exists() {
                workspace_root().join(p)
            } else {
                p
            }
        }
        _ => workspace_root().join("target/release/shoal"),
    };
    if !path.is_file() {
        panic!(
            "shoal binary not found at {}: run `cargo build --release -p cli` \
             or set SHOAL_BIN to its path (./test.sh does both)",
            path.display()
        );
    }
    path
}

/// Whether this is a CI run (`CI=true`), where nothing may be skipped.
pub fn is_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Whether Docker is usable, with the test image present (built with
/// `deploy/build-image.sh` when missing). When Docker cannot be reached, CI
/// fails the test; elsewhere this prints a loud skip notice and returns false:
/// start each cluster test with `if !require_docker() { return; }`.
pub fn require_docker() -> bool {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
        if !info.success() {
            return Err(format!("`docker info` failed: {}", info.stderr.trim()));
        }
        Ok(())
    });
    if let Err(why) = state {
        if is_ci() {
            panic!("Docker is required for the cluster tests when CI=true: {why}");
        }
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! SKIPPED: Docker is not reachable ({why})");
        eprintln!("!!! (set CI=true to make this a failure)");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return false;
    }
    ensure_image();
    true
}

/// Builds the test image once per process if it is missing.
pub(crate) fn ensure_image() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built || docker(&["image", "inspect", BUSYBOX_IMAGE]).success() {
        *built = true;
        return;
    }
    let script = workspace_root().join("deploy/build-image.sh");
    let out = run_with_timeout(&mut Command::new(&script), Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    if !out.success() {
        panic!("{} could not build {BUSYBOX_IMAGE}:\n{out}", script.display());
    }
    *built = true;
}
