//! The web view in a real browser: `tests/ui/ui-e2e.mjs` drives headless
//! Chromium (Debian's `chromium`, through playwright-core) against a 3-node
//! cluster: node columns, cards appearing for a new service, cards moving off
//! a drained node, update latency, 50 × 500 made-up tasks, screenshots in
//! `target/ui-artifacts/`. Real `shoal` processes, real Docker.
//!
//! Needs `node`/`npm` and `/usr/bin/chromium` (`deploy/install-deps.sh`
//! installs them); `npm ci` runs in `tests/ui` when its `node_modules` is
//! missing. Without them the test skips loudly, or fails when `CI=true`.
//! `cargo test --release -p tests --test ui -- --nocapture` shows the figures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::{busybox_image, is_ci, require_docker, run_with_timeout, shoal_bin, workspace_root, Cluster};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether node, npm and Chromium are there; like `require_docker`, a
/// missing one fails under CI and is a loud skip elsewhere.
fn require_browser() -> bool {
    let has = |cmd: &str, arg: &str| Command::new(cmd).arg(arg).output().map(|o| o.status.success()).unwrap_or(false);
    let mut missing = Vec::new();
    if !has("node", "--version") {
        missing.push("node");
    }
    if !has("npm", "--version") {
        missing.push("npm");
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push(CHROMIUM);
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("{} not found (deploy/install-deps.sh installs nodejs, npm and chromium)", missing.join(", "));
    if is_ci() {
        panic!("the browser test needs them when CI=true: {why}");
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED: the web view's browser test: {why}");
    eprintln!("!!! (set CI=true to make this a failure)");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    false
}

/// `npm ci` in tests/ui unless playwright-core is installed there.
fn npm_ci(dir: &Path) {
    if dir.join("node_modules/playwright-core/package.json").is_file() {
        return;
    }
    let out = run_with_timeout(
        Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.success(), "npm ci in {} failed: {out}", dir.display());
}

#[test]
fn web_view_follows_the_cluster_live() {
    if !require_docker() || !require_browser() {
        return;
    }
    let ui = workspace_root().join("tests/ui");
    npm_ci(&ui);
    let artifacts: PathBuf = workspace_root().join("target/ui-artifacts");
    let c = Cluster::new(3);
    let api = c.api_addr(1);
    let out = run_with_timeout(
        Command::new("node")
            .arg(ui.join("ui-e2e.mjs"))
            .current_dir(&ui)
            .env("SHOAL_UI_URL", format!("http://{api}/ui"))
            .env("SHOAL_HOST", &api)
            .env("SHOAL_UI_WORKER_URL", format!("http://{}/ui", c.api_addr(2)))
            .env("SHOAL_BIN", shoal_bin())
            .env("SHOAL_UI_DRAIN", c.hostname(3))
            .env("SHOAL_UI_IMAGE", busybox_image())
            .env("SHOAL_UI_ARTIFACTS", &artifacts)
            .env("CHROMIUM", CHROMIUM),
        Duration::from_secs(360),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{}", out.stdout.trim_end());
    if !out.stderr.trim().is_empty() {
        eprintln!("{}", out.stderr.trim_end());
    }
    assert!(out.success(), "the browser test failed: {out}");
    assert!(out.stdout.contains("ui update latency"), "no latency figures printed: {out}");
    assert!(artifacts.join("ui.png").is_file(), "no screenshot in {}", artifacts.display());
}
