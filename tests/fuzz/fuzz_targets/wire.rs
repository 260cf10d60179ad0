#![no_main]
//! Frames and hellos on the cluster port, join tokens, CA fingerprints, peer certificates.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| worker::fuzzing::wire(data));
