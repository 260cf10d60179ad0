//! The node side of the `shoal` binary as a library: [`daemon`] brings a
//! node up (bootstrap, join or resume) and runs it. `shoal daemon` calls
//! [`daemon::run`]; an in-process test calls [`daemon::run_with`] with a
//! test double for the container runtime and a shutdown future of its own.
//! [`sim`] (`shoal sim`) runs a whole cluster of such nodes in one process.
//!
//! The client commands (`service …`, `node …`) stay in the binary
//! (`src/main.rs` and its modules): they only talk to the HTTP API.

pub mod daemon;
pub mod sim;
