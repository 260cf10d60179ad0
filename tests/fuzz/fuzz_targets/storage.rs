#![no_main]
//! Raft log, hard state and snapshot files, opened as a manager starts.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| manager::raft::fuzzing::storage(data));
