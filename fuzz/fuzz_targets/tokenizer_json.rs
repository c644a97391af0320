//! Fuzz target: A `tokenizer.json`: loaded as a `Tokenizer`, then encode/decode (`ferrolm_core::fuzzing::tokenizer_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolm_core::fuzzing::tokenizer_json(data));
