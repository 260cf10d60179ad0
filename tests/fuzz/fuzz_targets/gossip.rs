#![no_main]
//! Gossip datagrams (sealed and forged), their contents, the gossip key ring file.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| worker::fuzzing::gossip(data));
