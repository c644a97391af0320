//! Named tensors from checkpoints, before they reach a backend.
//!
//! A [`TensorSource`] lists tensor names and reads one tensor at a time, so
//! a loader never holds two copies of the model. Sources: safetensors files
//! (single or sharded, memory-mapped), GGUF files and in-memory maps (Python
//! state dicts). Tensors come as f32 ([`HostTensor`]) or as stored
//! ([`StoredTensor`]: half and quantized data kept packed).

pub mod gguf;
pub mod names;
mod safetensors;

use std::collections::HashMap;

pub use self::safetensors::{RawTensor, SafetensorsDir};
use crate::error::{Error, Result};
use crate::formats::{HostTensor, StoredTensor};

/// Something that holds named tensors: a checkpoint on disk or a state dict.
pub trait TensorSource {
    /// All tensor names the source holds.
    fn names(&self) -> Vec<String>;
    /// The shape of one tensor, without reading its data.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// Reads one tensor, converted to f32.
    fn read(&self, name: &str) -> Result<HostTensor>;
    /// Reads one tensor as stored: sources of half or quantized data
    /// return it packed (see [`StoredTensor`]); the default is [`TensorSource::read`].
    fn read_stored(&self, name: &str) -> Result<StoredTensor> {
        self.read(name).map(StoredTensor::F32)
    }
}

impl TensorSource for HashMap<String, HostTensor> {
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.get(name).map(|t| t.shape.clone()).ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        self.get(name).cloned().ok_or_else(|| Error::MissingTensor(name.to_string()))
    }
}
