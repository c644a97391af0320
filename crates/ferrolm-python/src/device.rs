//! Python's `device` and `dtype` arguments to a core backend, and a macro
//! that runs the same code on whichever backend a value was built for.

use ferrolm_core::backend::cpu::{Cpu, CpuOptions, KvDtype};
use ferrolm_core::backend::cuda::{Cuda, GpuDtype};
use ferrolm_core::formats::Quantize;
use ferrolm_core::{Device, Error, Result};

/// The backend a Python call asked for.
pub enum Target {
    Cpu(Cpu),
    Cuda(Cuda),
}

/// Opens the backend for `device` ("cpu", "cuda", "cuda:N") and `dtype`.
/// GPU: "bfloat16" by default, "float16" or "float32". CPU: by default weights stay as
/// stored (quantized or half) and multiply 8-bit activations; "float32" is
/// the exact path (weights widened to f32, f32 KV cache). Threads come from
/// `FERROLM_NUM_THREADS` or the physical core count.
/// `quantize` ("q8_0", "q4_k": CPU only; "fp8": CPU and GPU) quantizes
/// matrices at load and `kv_dtype` picks the KV cache precision (CPU: "f16",
/// "f32"; GPU: "bf16", "f16", "f32", by default the weights').
pub fn open(
    device: &str,
    dtype: Option<&str>,
    quantize: Option<&str>,
    kv_dtype: Option<&str>,
) -> Result<Target> {
    let quantize = quantize.map(Quantize::parse).transpose()?;
    match Device::parse(device)? {
        Device::Cpu => {
            let exact = match dtype.map(str::to_ascii_lowercase).as_deref() {
                None => false,
                Some("float32" | "f32" | "fp32") => true,
                Some(other) => {
                    return Err(Error::InvalidInput(format!(
                        "dtype `{other}` is not available on the CPU; leave dtype unset (weights as \
                         stored) or use dtype=\"float32\" (exact f32 path), or device=\"cuda\""
                    )))
                }
            };
            let kv_dtype = kv_dtype.map(KvDtype::parse).transpose()?;
            Ok(Target::Cpu(Cpu::new(CpuOptions { exact, quantize, kv_dtype, ..Default::default() })?))
        }
        Device::Cuda(_) if matches!(quantize, Some(Quantize::Ggml(_))) => Err(Error::Unsupported(
            "quantize=\"q8_0\"/\"q4_k\" apply to the CPU only; on a GPU use \
             dtype=\"bfloat16\", \"float16\" or \"float32\", or quantize=\"fp8\""
                .into(),
        )),
        Device::Cuda(ordinal) => {
            let dtype = dtype.map(GpuDtype::parse).transpose()?.unwrap_or(GpuDtype::Bf16);
            let kv_dtype = kv_dtype.map(GpuDtype::parse).transpose()?.unwrap_or(dtype);
            let cuda = Cuda::new(ordinal, dtype)?.with_kv_dtype(kv_dtype);
            Ok(Target::Cuda(if quantize == Some(Quantize::Fp8) { cuda.with_fp8_weights() } else { cuda }))
        }
    }
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

/// `on_backend!(value, |x| expr)`: `value` is an enum with `Cpu(..)` and
/// `Cuda(..)` variants holding the same generic type; runs `expr` on it.
macro_rules! on_backend {
    ($value:expr, |$x:pat_param| $body:expr) => {
        match $value {
            $crate::device::OnCpu($x) => $body,
            $crate::device::OnCuda($x) => $body,
        }
    };
}
pub(crate) use on_backend;

/// A value built for one of the two backends (model, session, ...).
pub enum Either<C, G> {
    OnCpu(C),
    OnCuda(G),
}
pub use Either::{OnCpu, OnCuda};
