//! Fuzz target: A chat template: compiled and rendered over a fixed conversation (`ferrolm_core::fuzzing::chat_template`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolm_core::fuzzing::chat_template(data));
