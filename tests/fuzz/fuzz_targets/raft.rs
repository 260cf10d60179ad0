#![no_main]
//! Raft messages off the cluster port and what they carry (commands, conf changes, snapshots).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| manager::raft::fuzzing::raft_input(data));
