//! GGUF files (llama.cpp's checkpoint format, versions 2 and 3): metadata,
//! tensors and the model config.
//!
//! [`GgufFile::open`] memory-maps the file and parses and validates the
//! header, the metadata and the tensor table up front, so that a truncated
//! or corrupted file is refused with [`Error::InvalidWeights`] before any
//! tensor is read (and never panics). The file is then a
//! [`TensorSource`](crate::weights::TensorSource) in HF naming and shapes
//! (`model.layers.0.self_attn.q_proj.weight`, `[out, in]`), its tensors
//! dequantized to f32 as they are read (or handed over packed); [`config_from_gguf`]
//! builds the [`Config`](crate::Config) from the metadata.
//!
//! - [`reader`]: the file format (header, metadata values, tensor table).
//! - [`quants`]: block dequantizers (F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
//!   Q6_K), standalone functions over raw blocks.
//! - [`names`]: GGUF -> HF tensor names, and the undoing of the q/k row
//!   permutation llama.cpp applies to the `llama` architecture.
//! - [`config`]: `{arch}.*` metadata -> `Config`.
//!
//! [`Error::InvalidWeights`]: crate::Error::InvalidWeights

mod config;
pub mod names;
mod reader;

pub use self::config::config_from_gguf;
pub use self::reader::{GgufFile, GgufTensorInfo, GgufValue};
