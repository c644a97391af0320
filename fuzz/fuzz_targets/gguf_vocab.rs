//! Fuzz target: A GGUF file's tokenizer (`tokenizer.ggml.*`): built, then encode/decode (`ferrolm_core::fuzzing::gguf_vocab`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolm_core::fuzzing::gguf_vocab(data));
