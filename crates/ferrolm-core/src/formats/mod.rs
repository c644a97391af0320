//! Tensor formats: how tensor data is laid out in memory, shared by the
//! checkpoint readers that produce it and the backends that consume it.
//!
//! - [`tensor`]: [`HostTensor`] (dense f32), [`PackedTensor`] (f16/bf16
//!   halves or ggml blocks, still in their stored bytes, possibly borrowing a
//!   memory map) and [`StoredTensor`] (either, as a checkpoint stores it).
//! - [`DType`]: f32/f16/bf16, with the one parser of their names.
//! - [`ggml`]: ggml's tensor type ids and block layouts ([`GgmlType`]).
//! - [`dequantize`] and [`quantize`]: ggml's block dequantizers and
//!   reference quantizers, bit for bit.
//! - [`fp8`]: FP8 E4M3 codes with f32 scales.
//! - [`target`]: [`Quantize`], the format matrices are converted to at load.
//!
//! Nothing here knows about models or files; everything above uses it.

pub mod dequantize;
mod dtype;
pub mod fp8;
mod ggml;
pub mod quantize;
mod target;
mod tensor;

pub use self::dtype::DType;
pub use self::ggml::GgmlType;
pub use self::target::Quantize;
pub(crate) use self::tensor::release_pages;
pub use self::tensor::{Bytes, HostTensor, PackedTensor, StoredTensor};
