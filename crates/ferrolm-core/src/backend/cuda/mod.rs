//! The CUDA backend: kernels from `kernels/` (NVRTC, see [`kernels`]),
//! GEMMs through cuBLAS, the paged KV pool in device memory.
//!
//! Activations are f32 everywhere; weights are stored in bf16 (the default,
//! GEMMs on tensor cores with f32 accumulation: activations are cast to bf16
//! just before each GEMM), in f16 (`GpuDtype::F16`, the same with IEEE half:
//! GPUs without bf16 such as T4 and V100) or in f32 (`GpuDtype::F32`, the
//! exact mode for parity). Norm weights and biases always stay f32. The KV
//! pool is in the weights' precision unless [`Cuda::with_kv_dtype`] says
//! otherwise (`kv_dtype=`); attention reads it as f32. With
//! [`Cuda::with_fp8_weights`] (`quantize="fp8"`) the layers' linear weights
//! are rounded to FP8 E4M3 at load and stored back in `dtype`, so an FP8
//! model computes the same values on any GPU (FP8 GEMMs are not used yet). Every launch is
//! asynchronous on one stream; `to_host` synchronises.

pub mod emulator;
pub mod kernels;
mod kv;
mod ops;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};
use cudarc::nvrtc::Ptx;

pub use self::kv::CudaKv;
use super::Device;
use crate::error::{Error, Result};

/// How the GPU stores 2-D weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuDtype {
    Bf16,
    F16,
    F32,
}

impl GpuDtype {
    pub fn parse(s: &str) -> Result<GpuDtype> {
        match s.to_ascii_lowercase().as_str() {
            "bfloat16" | "bf16" => Ok(GpuDtype::Bf16),
            "float16" | "f16" | "fp16" | "half" => Ok(GpuDtype::F16),
            "float32" | "f32" | "fp32" => Ok(GpuDtype::F32),
            _ => Err(Error::InvalidInput(format!(
                "unknown dtype `{s}` for the GPU; use \"bfloat16\" (default), \"float16\" (GPUs without bf16) \
                 or \"float32\" (exact)"
            ))),
        }
    }

    /// The suffix of this dtype's kernels (`embedding_f16`, `cast_f32_bf16`).
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            GpuDtype::Bf16 => "bf16",
            GpuDtype::F16 => "f16",
            GpuDtype::F32 => "f32",
        }
    }

    /// Bytes one value of this dtype takes.
    pub fn bytes(self) -> usize {
        match self {
            GpuDtype::Bf16 | GpuDtype::F16 => 2,
            GpuDtype::F32 => 4,
        }
    }
}

/// A parameter in device memory.
pub struct GpuTensor {
    pub shape: Vec<usize>,
    pub data: GpuData,
}

pub enum GpuData {
    F32(CudaSlice<f32>),
    /// Raw 16-bit values: bf16 or IEEE f16 bits, as `dtype` says.
    Half {
        bits: CudaSlice<u16>,
        dtype: GpuDtype,
    },
}

pub struct Cuda {
    ordinal: usize,
    dtype: GpuDtype,
    /// Round the layers' linear weights to FP8 at load (see [`Cuda::with_fp8_weights`]).
    fp8_weights: bool,
    /// The KV pool's precision (see [`Cuda::with_kv_dtype`]).
    kv_dtype: GpuDtype,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    /// Streaming multiprocessors: how many blocks keep the GPU busy.
    sms: usize,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda(cuda:{}, {:?})", self.ordinal, self.dtype)
    }
}

fn gpu_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Gpu(format!("{what}: {e}"))
}

impl Cuda {
    /// Opens GPU `ordinal`, compiling (or loading cached) kernels for it.
    pub fn new(ordinal: usize, dtype: GpuDtype) -> Result<Cuda> {
        probe(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(gpu_err("opening the GPU"))?;
        let (major, minor) = ctx.compute_capability().map_err(gpu_err("reading the compute capability"))?;
        let arch = format!("compute_{major}{minor}");
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(gpu_err("reading the GPU's size"))? as usize;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Gpu(format!("starting cuBLAS: {e}")))?;
        let mut functions = HashMap::new();
        for (name, source, entries) in kernels::SOURCES {
            let ptx = kernels::cached_ptx(name, source, &arch)?;
            let module = ctx.load_module(Ptx::from_src(ptx)).map_err(gpu_err("loading kernels"))?;
            for entry in *entries {
                functions.insert(*entry, module.load_function(entry).map_err(gpu_err("loading a kernel"))?);
            }
        }
        Ok(Cuda { ordinal, dtype, fp8_weights: false, kv_dtype: dtype, stream, blas, functions, sms })
    }

    pub fn dtype(&self) -> GpuDtype {
        self.dtype
    }

    /// `quantize="fp8"`: the layers' linear projections are quantized to
    /// FP8 E4M3 (a scale per 32 weights of a row, as on the CPU) as they are uploaded and
    /// dequantized to the GPU dtype, so the model runs with FP8's values on
    /// any GPU.
    pub fn with_fp8_weights(mut self) -> Cuda {
        self.fp8_weights = true;
        self
    }

    /// The KV pool's precision; by default the weights' (bf16 weights, bf16
    /// KV: attention reads half the bytes of f32). f32 KV with half weights
    /// keeps the cache exact.
    pub fn with_kv_dtype(mut self, kv_dtype: GpuDtype) -> Cuda {
        self.kv_dtype = kv_dtype;
        self
    }

    fn function(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).unwrap_or_else(|| panic!("kernel {name} is listed in kernels::SOURCES"))
    }

    pub(crate) fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
}

/// The name of GPU `ordinal` ("ferrolm CUDA emulator (CPU)" on the emulator).
pub fn device_name(ordinal: usize) -> Result<String> {
    probe(ordinal)?;
    let ctx = CudaContext::new(ordinal).map_err(gpu_err("opening the GPU"))?;
    ctx.name().map_err(gpu_err("reading the GPU's name"))
}

/// Checks that GPU `ordinal` can be used: the driver, NVRTC and cuBLAS
/// libraries load and the GPU exists. The error says what is missing.
pub fn probe(ordinal: usize) -> Result<()> {
    emulator::install_if_enabled()?;
    let device = Device::Cuda(ordinal).to_string();
    let missing = |what: &str| Error::DeviceUnavailable { device: device.clone(), reason: what.to_string() };
    // SAFETY: these only try to dlopen the libraries by their usual names.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(missing(
            "libcuda (the NVIDIA driver) was not found; install the driver or use device=\"cpu\"",
        ));
    }
    if !nvrtc {
        return Err(missing(kernels::NVRTC_MISSING));
    }
    if !cublas {
        return Err(missing(
            "libcublas was not found; install the CUDA toolkit or `pip install nvidia-cublas-cu12`, \
             and put its lib folder on LD_LIBRARY_PATH",
        ));
    }
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| missing("the CUDA driver could not be initialised"))?
        .map_err(|e| missing(&format!("the CUDA driver could not be initialised: {e}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(missing(&format!("this machine has {count} NVIDIA GPU(s)")));
    }
    Ok(())
}
