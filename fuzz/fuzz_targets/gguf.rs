//! Fuzz target: A GGUF file's bytes: parsed, its config built, its tensors read (`ferrolm_core::fuzzing::gguf`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolm_core::fuzzing::gguf(data));
