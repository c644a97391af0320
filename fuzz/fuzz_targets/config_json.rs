//! Fuzz target: A `config.json`: parsed into `Config` and validated (`ferrolm_core::fuzzing::config_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolm_core::fuzzing::config_json(data));
