//! GGUF files (llama.cpp's checkpoint format, versions 2 and 3): metadata,
//! tensors and the model config.
//!
//! [`GgufFile::open`] memory-maps the file and parses and validates the
//! header, the metadata and the tensor table up front, so that a truncated
//! or corrupted file is refused with [`Error::InvalidWeights`] before any
//! tensor is read (and never panics). [`GgufSource`] then serves its tensors
//! in HF naming and shapes (`model.layers.0.self_attn.q_proj.weight`,
//! `[out, in]`), dequantized to f32 as they are read or handed over packed;
//! [`config_from_gguf`] builds the [`Config`](crate::Config) from the metadata.
//!
//! - [`reader`]: the container format (header, metadata values, tensor table).
//! - [`hf`]: the file as a [`TensorSource`](crate::weights::TensorSource) in HF naming.
//! - [`names`]: GGUF -> HF tensor names, and the undoing of the q/k row
//!   permutation llama.cpp applies to the `llama` architecture.
//! - [`config`]: `{arch}.*` metadata -> `Config`.
//!
//! [`Error::InvalidWeights`]: crate::Error::InvalidWeights

mod config;
mod hf;
pub mod names;
mod reader;

pub use self::config::config_from_gguf;
pub use self::hf::GgufSource;
pub use self::reader::{GgufFile, GgufTensorInfo, GgufValue};
