//! GGUF files (llama.cpp's checkpoint format, versions 2 and 3): metadata,
//! tensors and the model config.
//!
//! [`GgufFile::open`] memory-maps the file and parses and validates the
//! header, the metadata and the tensor table up front, so that a truncated
//! or corrupted file is refused with [`Error::InvalidWeights`] before any
//! tensor is read (and never panics). The file is then a
//! [`TensorSource`](crate::weights::TensorSource) in HF naming and shapes
//! (`model.layers.0.self_attn.q_proj.weight`, `[out, in]`), its tensors
//! dequantized to f32 as they are read; [`config_from_gguf`] builds the
//! [`Config`](crate::Config) from the metadata.
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

use std::path::Path;

use crate::backend::Backend;
use crate::error::Result;
use crate::model::Transformer;

impl<B: Backend + Default> Transformer<B> {
    /// Loads a model from one GGUF file: the config from its metadata
    /// ([`config_from_gguf`]), the weights dequantized to f32. Every tensor
    /// type is checked before anything is read. `max_seq_len` (default:
    /// `{arch}.context_length`) sets the cache capacity per sequence.
    /// [`Transformer::from_pretrained`] calls this for a path ending in `.gguf`.
    pub fn from_gguf(path: impl AsRef<Path>, max_seq_len: Option<usize>) -> Result<Self> {
        Self::from_gguf_on(path, max_seq_len, B::default())
    }
}

impl<B: Backend> Transformer<B> {
    /// [`Transformer::from_gguf`] onto a given backend.
    pub fn from_gguf_on(path: impl AsRef<Path>, max_seq_len: Option<usize>, backend: B) -> Result<Self> {
        let file = GgufFile::open(path.as_ref())?;
        file.check_supported_types()?;
        let mut config = config_from_gguf(&file)?;
        if let Some(n) = max_seq_len {
            config.max_seq_len = n;
        }
        Self::from_source(config, backend, &file)
    }
}
