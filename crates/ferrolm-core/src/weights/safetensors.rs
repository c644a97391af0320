//! Memory-mapped safetensors checkpoints: `model.safetensors`, or shards
//! listed by `model.safetensors.index.json`. Tensors are converted from
//! their stored dtype (f32, f16, bf16) to f32 as they are read.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::TensorSource;
use crate::error::{Error, Result};
use crate::formats::GgmlType;
use crate::formats::{Bytes, HostTensor, PackedTensor, StoredTensor};

/// The weight files of one model directory.
pub struct SafetensorsDir {
    /// Memory maps of the shard files, in file-name order.
    files: Vec<(PathBuf, Arc<Mmap>)>,
    /// Tensor name -> (index into `files`, shape).
    index: HashMap<String, (usize, Vec<usize>)>,
}

impl SafetensorsDir {
    /// Opens `dir/model.safetensors`, or the shards named by
    /// `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<SafetensorsDir> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.is_file() {
            vec!["model.safetensors".to_string()]
        } else if index_path.is_file() {
            read_shard_names(&index_path)?
        } else {
            return Err(Error::NotFound {
                what: "weights (model.safetensors or model.safetensors.index.json)",
                path: dir.to_path_buf(),
            });
        };

        let mut files = Vec::new();
        let mut index = HashMap::new();
        for shard in shard_names {
            let path = dir.join(&shard);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only; ferrolm never writes checkpoint
            // files, and a file truncated underneath us is outside our contract
            // (as for every mmap-based loader).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            // Validates the whole header (offsets inside the file) up front.
            let tensors = SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::InvalidWeights(format!("{}: {e}", path.display())))?
                .tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect::<Vec<_>>();
            for (name, shape) in tensors {
                if index.insert(name.clone(), (files.len(), shape)).is_some() {
                    return Err(Error::InvalidWeights(format!("tensor `{name}` appears in two shards")));
                }
            }
            files.push((path, Arc::new(mmap)));
        }
        Ok(SafetensorsDir { files, index })
    }
}

fn read_shard_names(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let bad = |why: &str| Error::InvalidWeights(format!("{}: {why}", index_path.display()));
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let map =
        value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map` object"))?;
    let mut shards = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| bad("weight_map values must be file names"))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad("shard names must be plain file names"));
        }
        shards.push(file.to_string());
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

impl TensorSource for SafetensorsDir {
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.index
            .get(name)
            .map(|(_, shape)| shape.clone())
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        self.with_view(name, |view, bad| {
            let bytes = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => {
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
                Dtype::F16 => {
                    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                Dtype::BF16 => {
                    bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                other => return Err(bad(format!("dtype {other:?} is not supported (use f32, f16 or bf16)"))),
            };
            HostTensor::new(view.shape().to_vec(), data)
        })
    }

    /// f16 and bf16 matrices stay packed, borrowing the memory map.
    fn read_stored(&self, name: &str) -> Result<StoredTensor> {
        let packed = self.with_view(name, |view, _| {
            let ty = match view.dtype() {
                Dtype::F16 => GgmlType::F16,
                Dtype::BF16 => GgmlType::BF16,
                _ => return Ok(None),
            };
            Ok((view.shape().len() == 2).then(|| (ty, view.shape().to_vec(), view.data().as_ptr())))
        })?;
        let Some((ty, shape, ptr)) = packed else { return self.read(name).map(StoredTensor::F32) };
        let map = &self.files[self.index[name].0].1;
        let start = ptr as usize - map.as_ptr() as usize;
        let range = start..start + shape.iter().product::<usize>() * 2;
        PackedTensor::new(shape, ty, Bytes::Mapped { map: Arc::clone(map), range }).map(StoredTensor::Packed)
    }
}

/// One tensor exactly as stored, its bytes borrowing the memory map: what a
/// caller needs to view a checkpoint without copying it.
pub struct RawTensor {
    /// The stored element type, by numpy's name where it has one
    /// ("float32", "float16"; otherwise safetensors' name, e.g. "BF16").
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl SafetensorsDir {
    /// Tensor `name` as stored, without conversion or copy.
    pub fn raw(&self, name: &str) -> Result<RawTensor> {
        let (dtype, shape, ptr, len) = self.with_view(name, |view, _| {
            let dtype = match view.dtype() {
                Dtype::F32 => "float32".to_string(),
                Dtype::F16 => "float16".to_string(),
                other => format!("{other:?}"),
            };
            Ok((dtype, view.shape().to_vec(), view.data().as_ptr(), view.data().len()))
        })?;
        let map = &self.files[self.index[name].0].1;
        let start = ptr as usize - map.as_ptr() as usize;
        Ok(RawTensor {
            dtype,
            shape,
            bytes: Bytes::Mapped { map: Arc::clone(map), range: start..start + len },
        })
    }

    /// Runs `f` on the view of tensor `name` (with an error maker naming it).
    fn with_view<T>(
        &self,
        name: &str,
        f: impl FnOnce(&TensorView<'_>, &dyn Fn(String) -> Error) -> Result<T>,
    ) -> Result<T> {
        let &(file, _) = self.index.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let (path, mmap) = &self.files[file];
        let bad = |why: String| Error::InvalidWeights(format!("{} `{name}`: {why}", path.display()));
        let st = SafeTensors::deserialize(mmap).map_err(|e| bad(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        f(&view, &bad)
    }
}
