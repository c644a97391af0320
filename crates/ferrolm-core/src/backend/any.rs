//! The backend picked at run time, in one place: [`AnyBackend`] is the CPU
//! or a GPU, opened from a device and a weight precision, and
//! [`OnDevice`] holds any value built on one of them (a model, an engine,
//! a session), the way candle's `Storage` is an enum over devices. Code
//! stays generic over [`Backend`](super::Backend) and is matched once, with
//! [`on_device!`](crate::on_device).

use super::cpu::{Cpu, CpuOptions};
use super::cuda::{self, Cuda};
use super::Device;
use crate::error::{Error, Result};
use crate::formats::DType;

/// A value built on the CPU backend or on the CUDA one.
#[derive(Debug)]
pub enum OnDevice<C, G> {
    Cpu(C),
    Cuda(G),
}

/// The backend itself.
pub type AnyBackend = OnDevice<Cpu, Cuda>;

/// `on_device!(value, |x| expr)`: runs `expr` on whichever backend's value
/// an [`OnDevice`] holds (`expr` is compiled once per backend).
#[macro_export]
macro_rules! on_device {
    ($value:expr, |$x:pat_param| $body:expr) => {
        match $value {
            $crate::backend::OnDevice::Cpu($x) => $body,
            $crate::backend::OnDevice::Cuda($x) => $body,
        }
    };
}

impl AnyBackend {
    /// Opens the backend for `device` with weights in `dtype`.
    /// - CPU: `None` keeps weights as stored (ggml blocks and halves are
    ///   multiplied as they are, with 8-bit activations); `F32` is the exact
    ///   path (every weight widened to f32). `threads`: `FERROLM_NUM_THREADS`,
    ///   else the physical core count.
    /// - GPU: `BF16` by default, `F16` (GPUs without bf16: T4, V100) or `F32`.
    pub fn open(device: Device, dtype: Option<DType>, threads: Option<usize>) -> Result<AnyBackend> {
        match device {
            Device::Cpu => {
                let exact = match dtype {
                    None => false,
                    Some(DType::F32) => true,
                    Some(other) => {
                        return Err(Error::InvalidInput(format!(
                            "dtype `{}` is not available on the CPU; leave dtype unset (weights as \
                             stored) or use dtype=\"float32\" (exact f32 path), or device=\"cuda\"",
                            other.name()
                        )))
                    }
                };
                Ok(OnDevice::Cpu(Cpu::new(CpuOptions { exact, threads, ..Default::default() })?))
            }
            Device::Cuda(ordinal) => Ok(OnDevice::Cuda(Cuda::new(ordinal, dtype.unwrap_or(DType::BF16))?)),
        }
    }
}

impl Device {
    /// Fails with a clear message for devices this build cannot drive.
    pub fn ensure_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(ordinal) => cuda::probe(ordinal),
        }
    }
}
