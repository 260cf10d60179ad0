#![no_main]
//! DNS queries to a task network's resolver, and resolv.conf.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| worker::fuzzing::dns(data));
