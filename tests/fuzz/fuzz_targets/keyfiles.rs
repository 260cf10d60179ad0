#![no_main]
//! The data key and KEK files of the raft directory, and unlock keys.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| manager::raft::fuzzing::keyfiles(data));
