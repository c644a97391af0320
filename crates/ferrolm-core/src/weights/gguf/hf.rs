//! A GGUF file seen as an HF checkpoint: a [`TensorSource`] whose tensors
//! have HF names and shapes (`model.layers.0.self_attn.q_proj.weight`,
//! `[out, in]`), with llama.cpp's q/k row permutation undone, dequantized
//! to f32 as they are read or handed over packed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::names;
use super::reader::{GgufFile, GgufTensorInfo};
use crate::error::{Error, Result};
use crate::formats::{Bytes, GgmlType, HostTensor, PackedTensor, StoredTensor};
use crate::weights::TensorSource;

/// A GGUF file with its tensors indexed by HF name.
pub struct GgufSource {
    file: GgufFile,
    /// HF tensor name -> index into the file's tensor table (see [`names::hf_name`]).
    by_hf_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.file.fmt(f)
    }
}

impl GgufSource {
    /// Opens `path` (see [`GgufFile::open`]); two tensors mapping to one HF
    /// name make the file invalid.
    pub fn open(path: &Path) -> Result<GgufSource> {
        GgufSource::new(GgufFile::open(path)?)
    }

    pub fn new(file: GgufFile) -> Result<GgufSource> {
        let mut by_hf_name = BTreeMap::new();
        for (i, t) in file.tensor_infos().iter().enumerate() {
            if names::is_consumed_by_config(&t.name) {
                continue;
            }
            let hf = names::hf_name(&t.name).unwrap_or_else(|| t.name.clone());
            if let Some(j) = by_hf_name.insert(hf.clone(), i) {
                return Err(Error::InvalidWeights(format!(
                    "{}: tensors `{}` and `{}` both map to `{hf}`",
                    file.path().display(),
                    file.tensor_infos()[j].name,
                    t.name
                )));
            }
        }
        Ok(GgufSource { file, by_hf_name })
    }

    /// The file itself (metadata, tensors by GGUF name).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn info_by_hf_name(&self, name: &str) -> Result<&GgufTensorInfo> {
        let &i = self.by_hf_name.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok(&self.file.tensor_infos()[i])
    }

    /// `data` (rows of `row_len` elements) with llama's q/k row permutation
    /// undone when the tensor has one.
    fn unpermuted<T: Copy + Default>(
        &self,
        info: &GgufTensorInfo,
        data: Vec<T>,
        row_len: usize,
    ) -> Result<Vec<T>> {
        let arch = self.file.architecture().unwrap_or("");
        let Some(which) = names::permuted_projection(arch, &info.name) else {
            return Ok(data);
        };
        let (heads, kv_heads) = self.head_counts(arch)?;
        let heads = match which {
            names::Projection::Q => heads,
            names::Projection::K => kv_heads,
        };
        let rows = data.len() / row_len.max(1);
        names::unpermute_rows(&data, &[rows, row_len], heads).map_err(|why| {
            Error::InvalidWeights(format!("{}: tensor `{}`: {why}", self.file.path().display(), info.name))
        })
    }

    fn head_counts(&self, arch: &str) -> Result<(usize, usize)> {
        let count = |key: String| -> Result<Option<usize>> {
            match self.file.get(&key) {
                None => Ok(None),
                Some(v) => names::uniform_count(v)
                    .map(Some)
                    .ok_or_else(|| Error::config(key, format!("expected a positive integer, got {v:?}"))),
            }
        };
        let heads = count(format!("{arch}.attention.head_count"))?.ok_or_else(|| {
            Error::InvalidWeights(format!(
                "{}: `{arch}.attention.head_count` is missing; it is needed to undo llama.cpp's q/k permutation",
                self.file.path().display()
            ))
        })?;
        let kv_heads = count(format!("{arch}.attention.head_count_kv"))?.unwrap_or(heads);
        Ok((heads, kv_heads))
    }
}

impl TensorSource for GgufSource {
    /// HF names of every tensor (unknown GGUF names are passed through as
    /// they are, so a loader reports them as unexpected). `rope_freqs.weight`
    /// is not listed: [`config_from_gguf`](super::config_from_gguf) reads it
    /// into the config's RoPE scaling.
    fn names(&self) -> Vec<String> {
        self.by_hf_name.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info_by_hf_name(name)?.hf_shape())
    }

    /// Dequantizes to f32; for the `llama` architecture, q/k projection rows
    /// are put back in HF's order (see [`names::unpermute_rows`]).
    fn read(&self, name: &str) -> Result<HostTensor> {
        let info = self.info_by_hf_name(name)?;
        let mut tensor = self.file.dequantize(info)?;
        let cols = tensor.shape[1..].iter().product();
        tensor.data = self.unpermuted(info, tensor.data, cols)?;
        Ok(tensor)
    }

    /// Matrices of half or quantized types stay packed, borrowing the memory
    /// map (q/k rows of `llama` files are reordered into an owned copy);
    /// everything else is read as f32.
    fn read_stored(&self, name: &str) -> Result<StoredTensor> {
        let info = self.info_by_hf_name(name)?;
        if info.dims.len() != 2 || info.ggml_type == GgmlType::F32 || !info.ggml_type.is_supported() {
            return self.read(name).map(StoredTensor::F32);
        }
        let start = (self.file.data_start() + info.offset) as usize;
        let bytes = self.file.data_of(info)?;
        let shape = info.hf_shape();
        // A matrix may have no rows (ggml allows zero dimensions): then none has bytes.
        let row_bytes = bytes.len().checked_div(shape[0]).unwrap_or(0);
        let data = if names::permuted_projection(self.file.architecture().unwrap_or(""), &info.name).is_some()
        {
            let owned = self.unpermuted(info, bytes.to_vec(), row_bytes)?;
            crate::formats::release_pages(self.file.mmap(), 0..start + bytes.len());
            Bytes::Owned(owned)
        } else {
            Bytes::Mapped { map: Arc::clone(self.file.mmap()), range: start..start + bytes.len() }
        };
        PackedTensor::new(shape, info.ggml_type, data).map(StoredTensor::Packed)
    }
}
