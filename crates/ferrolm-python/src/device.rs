//! Python's loading arguments (`device`, `dtype`, `quantize`, `kv_dtype`,
//! strings as users write them) as the core's `LoadOptions`.

use ferrolm_core::formats::Quantize;
use ferrolm_core::{DType, Device, LoadOptions, Result};

/// The options `device` ("cpu", "cuda", "cuda:N"), `dtype`, `quantize`
/// ("q8_0", "q4_k", "fp8") and `kv_dtype` name; see `LoadOptions` for what
/// each means on each device.
pub fn load_options(
    device: &str,
    dtype: Option<&str>,
    quantize: Option<&str>,
    kv_dtype: Option<&str>,
    max_seq_len: Option<usize>,
) -> Result<LoadOptions> {
    Ok(LoadOptions {
        device: Device::parse(device)?,
        dtype: dtype.map(DType::parse).transpose()?,
        quantize: quantize.map(Quantize::parse).transpose()?,
        kv_dtype: kv_dtype.map(|s| DType::parse_arg("kv_dtype", s)).transpose()?,
        max_seq_len,
        threads: None,
    })
}

/// Whether GPU `ordinal` is usable, and if not, why.
#[pyo3::pyfunction]
#[pyo3(signature = (ordinal=0))]
pub fn cuda_unavailable_reason(ordinal: usize) -> Option<String> {
    Device::Cuda(ordinal).ensure_available().err().map(|e| e.to_string())
}

/// The name of GPU `ordinal`, or None when it is unusable.
#[pyo3::pyfunction]
#[pyo3(signature = (ordinal=0))]
pub fn cuda_device_name(ordinal: usize) -> Option<String> {
    ferrolm_core::backend::cuda::device_name(ordinal).ok()
}
