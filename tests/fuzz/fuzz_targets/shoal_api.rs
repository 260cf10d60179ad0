#![no_main]
//! shoal's /v1 request bodies.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| manager::api::fuzzing::shoal_body(data));
