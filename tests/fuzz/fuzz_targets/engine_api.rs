#![no_main]
//! Engine API request bodies and the filters parameter.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| manager::api::docker::fuzzing::engine_input(data));
