//! `ferrolm._core`: the thin PyO3 layer over `ferrolm-core`.
//!
//! Each function converts its arguments, runs the core with the GIL
//! released (panics caught and turned into RuntimeError), and maps core
//! errors to Python exceptions. No algorithms live here.

mod checkpoint;
mod config;
mod device;
mod engine;
mod errors;
mod eval;
mod fp8;
mod kv;
mod model;
mod sampling;
mod scheduler;
mod session;
mod tokenizer;
mod tokens;
mod tools;
mod values;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FP8_GROUP_SIZE", fp8::model_group_size())?;
    m.add("MAX_SCHEMA_DEPTH", ferrolm_core::sampling::constraint::MAX_SCHEMA_DEPTH)?;
    m.add("KVCacheFullError", errors::kv_cache_full_type(m.py())?)?;
    m.add("EngineOverloadedError", m.py().get_type::<errors::EngineOverloadedError>())?;
    m.add("EngineFailedError", m.py().get_type::<errors::EngineFailedError>())?;
    m.add_function(wrap_pyfunction!(config::config_from_file, m)?)?;
    m.add_function(wrap_pyfunction!(config::canonical_config, m)?)?;
    m.add_function(wrap_pyfunction!(config::config_from_pretrained, m)?)?;
    m.add_function(wrap_pyfunction!(config::inference_config, m)?)?;
    m.add_function(wrap_pyfunction!(config::parameter_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(config::is_layer_linear, m)?)?;
    m.add_function(wrap_pyfunction!(device::cuda_unavailable_reason, m)?)?;
    m.add_function(wrap_pyfunction!(device::cuda_device_name, m)?)?;
    m.add_function(wrap_pyfunction!(compile_cuda_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(eval::perplexity, m)?)?;
    m.add_function(wrap_pyfunction!(fp8::quantize_fp8, m)?)?;
    m.add_function(wrap_pyfunction!(fp8::dequantize_fp8, m)?)?;
    m.add_function(wrap_pyfunction!(sampling::validate_sampling, m)?)?;
    m.add_function(wrap_pyfunction!(sampling::sample_rows, m)?)?;
    m.add_class::<checkpoint::Checkpoint>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::PyOutput>()?;
    m.add_class::<kv::PagedKVCache>()?;
    m.add_class::<session::Session>()?;
    m.add_class::<scheduler::SteppedScheduler>()?;
    tokenizer::register(m)?;
    tools::register(m)?;
    Ok(())
}

/// Compiles every CUDA kernel to PTX for `arch` (e.g. "compute_90") through
/// NVRTC, without a GPU; returns `[(file, ptx)]`. CI runs it to prove the
/// kernels compile.
#[pyfunction]
fn compile_cuda_kernels(py: Python<'_>, arch: String) -> PyResult<Vec<(String, String)>> {
    errors::run(py, || ferrolm_core::backend::cuda::kernels::compile_all(&arch))
}
