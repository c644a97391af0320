//! Fuzz target: A `.safetensors` file's bytes: header parsed and checked, tensors read (`ferrolm_core::fuzzing::safetensors`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolm_core::fuzzing::safetensors(data));
