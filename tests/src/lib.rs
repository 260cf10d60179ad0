//! Harness for the cluster tests in `tests/tests/`: they spawn real
//! `shoal daemon` processes, talk to them with the real CLI and look at the
//! containers they run in the machine's real Docker engine.
//!
//! - [`Cluster`] starts node1 with `--init` and the other nodes joining it,
//!   each node on its own loopback address `127.0.S.(10+i)` (cluster port
//!   4242, API port 4243) where the subnet `S` is claimed per cluster so that
//!   tests run in parallel; hostnames are `node1..nodeN`, data dirs and logs
//!   live in a temp dir. Dropping it stops the nodes it started and removes
//!   their containers; when the test is failing it prints their logs first.
//! - [`wait_for`] polls a condition until a deadline and fails with what it
//!   last saw.
//! - [`containers_with_label`], [`docker_kill`]: Docker through its CLI.
//! - [`EngineCli`], [`http`], [`require_python_sdk`]: the Docker Engine
//!   API's clients (docker CLIs, raw HTTP, the Python SDK) against a manager.
//! - [`shoal_bin`], [`require_docker`], [`busybox_image`]: the environment.
//! - [`Hosts`]: a cluster on real hosts (`deploy/hosts.sh`: a network
//!   namespace and a Docker engine per node), for data-plane and partition
//!   tests; [`require_hosts`] says whether this machine can run it.
//!
//! Layout: [`cluster`] (the cluster and its nodes), [`hosts`] (the host
//! harness), [`process`] (commands with a time limit, daemons that die with
//! the test process), [`docker`], [`engine`],
//! [`wait`], [`json`] (reading the CLI's JSON), [`env`] (binary, image, CI);
//! everything is re-exported here, so tests `use tests::…`.
//!
//! Nodes are numbered from 1, as their hostnames are. Tests are plain
//! synchronous `#[test]`s:
//!
//! ```no_run
//! use std::time::Duration;
//! use tests::{busybox_image, Cluster};
//!
//! if !tests::require_docker() {
//!     return;
//! }
//! let c = Cluster::new(3);
//! c.shoal_ok(&["service", "create", "-d", "--name", "web", "--replicas", "3",
//!              busybox_image(), "sleep", "100000"]);
//! let tasks = c.wait_running("web", 3, Duration::from_secs(60));
//! assert_eq!(tasks.len(), 3);
//! ```
//!
//! Environment: `SHOAL_BIN` (the binary; default `<workspace>/target/release/shoal`),
//! `CI=true` (a missing Docker fails instead of skipping), `SHOAL_TEST_LOG_LINES`
//! (lines of each node log printed on failure, default 200, 0 for all),
//! `SHOAL_TEST_KEEP=1` (keep the temp dir of a failed test and print its path).

pub mod cluster;
pub mod docker;
pub mod engine;
pub mod env;
pub mod hosts;
pub mod json;
pub mod process;
pub mod wait;

pub use cluster::*;
pub use docker::*;
pub use engine::*;
pub use env::*;
pub use hosts::*;
pub use json::*;
pub use process::*;
pub use wait::*;
