//! Memory-mapped safetensors checkpoints: `model.safetensors`, or shards
//! listed by `model.safetensors.index.json`. Each shard's header is parsed
//! and checked once, when the directory is opened, into a table of where
//! each tensor lies in the shard's memory map; reads go through that table.
//! Tensors are converted from their stored dtype (f32, f16, bf16) to f32 as
//! they are read.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::TensorSource;
use crate::error::{Error, Result};
use crate::formats::GgmlType;
use crate::formats::{Bytes, HostTensor, PackedTensor, StoredTensor};

/// The weight files of one model directory.
pub struct SafetensorsDir {
    /// Memory maps of the shard files, in file-name order.
    files: Vec<(PathBuf, Arc<Mmap>)>,
    /// Tensor name -> where it lies, from its shard's header.
    index: HashMap<String, Entry>,
}

/// One tensor as its shard's header describes it.
struct Entry {
    /// Index into `files`.
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Its bytes in the shard's memory map (checked against the file and
    /// against `dtype` and `shape` when the header was parsed).
    range: Range<usize>,
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

        let mut shards = Vec::new();
        for shard in shard_names {
            let path = dir.join(&shard);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only; ferrolm never writes checkpoint
            // files, and a file truncated underneath us is outside our contract
            // (as for every mmap-based loader).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            shards.push((path, mmap));
        }
        SafetensorsDir::from_maps(shards)
    }

    /// The shards once mapped, in order; each path only names its shard in
    /// errors. What [`SafetensorsDir::open`] does once the files are mapped
    /// (the fuzz targets map their input in memory and come in here).
    pub(crate) fn from_maps(shards: Vec<(PathBuf, Mmap)>) -> Result<SafetensorsDir> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (path, mmap) in shards {
            // Validates the whole header (offsets inside the file, sizes
            // matching dtypes and shapes) up front.
            let header =
                parse_header(&mmap).map_err(|e| Error::InvalidWeights(format!("{}: {e}", path.display())))?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in header.tensors() {
                let start = view.data().as_ptr() as usize - base;
                let entry = Entry {
                    file: files.len(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    range: start..start + view.data().len(),
                };
                if index.contains_key(&name) {
                    return Err(Error::InvalidWeights(format!("tensor `{name}` appears in two shards")));
                }
                index.insert(name, entry);
            }
            files.push((path, Arc::new(mmap)));
        }
        Ok(SafetensorsDir { files, index })
    }

    /// Tensor `name`'s entry and its shard's memory map.
    fn entry(&self, name: &str) -> Result<(&Entry, &Arc<Mmap>)> {
        let entry = self.index.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok((entry, &self.files[entry.file].1))
    }

    /// The error for tensor `name`, stored as `entry` says, that cannot be read.
    fn invalid(&self, entry: &Entry, name: &str, why: &str) -> Error {
        Error::InvalidWeights(format!("{} `{name}`: {why}", self.files[entry.file].0.display()))
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
        self.entry(name).map(|(entry, _)| entry.shape.clone())
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let (entry, map) = self.entry(name)?;
        let bytes = &map[entry.range.clone()];
        let data: Vec<f32> = match entry.dtype {
            Dtype::F32 => {
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => {
                bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => {
                let why = format!("dtype {other:?} is not supported (use f32, f16 or bf16)");
                return Err(self.invalid(entry, name, &why));
            }
        };
        HostTensor::new(entry.shape.clone(), data)
    }

    /// f16 and bf16 matrices stay packed, borrowing the memory map.
    fn read_stored(&self, name: &str) -> Result<StoredTensor> {
        let (entry, map) = self.entry(name)?;
        let ty = match entry.dtype {
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            _ => return self.read(name).map(StoredTensor::F32),
        };
        if entry.shape.len() != 2 {
            return self.read(name).map(StoredTensor::F32);
        }
        let bytes = Bytes::Mapped { map: Arc::clone(map), range: entry.range.clone() };
        PackedTensor::new(entry.shape.clone(), ty, bytes).map(StoredTensor::Packed)
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
        let (entry, map) = self.entry(name)?;
        let dtype = match entry.dtype {
            Dtype::F32 => "float32".to_string(),
            Dtype::F16 => "float16".to_string(),
            other => format!("{other:?}"),
        };
        Ok(RawTensor {
            dtype,
            shape: entry.shape.clone(),
            bytes: Bytes::Mapped { map: Arc::clone(map), range: entry.range.clone() },
        })
    }
}

#[cfg(test)]
thread_local! {
    /// Headers parsed on this thread (what the tests count).
    static HEADER_PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A shard's header, parsed and checked against the file's length.
fn parse_header(bytes: &[u8]) -> std::result::Result<SafeTensors<'_>, safetensors::SafeTensorError> {
    #[cfg(test)]
    HEADER_PARSES.with(|n| n.set(n.get() + 1));
    SafeTensors::deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of `tensors` (name, dtype, shape, little-endian bytes).
    fn write_shard(path: &Path, tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let offsets = [data.len(), data.len() + bytes.len()];
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
            );
            data.extend_from_slice(bytes);
        }
        let mut json = serde_json::to_vec(&header).unwrap();
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend(json);
        file.extend(data);
        std::fs::write(path, file).unwrap();
    }

    /// Tensor `i`: its dtype cycles through f32, f16 and bf16, its shape
    /// through a vector and two matrices; element `j` holds `i + j / 4`.
    fn tensor(i: usize) -> (String, &'static str, Vec<usize>, Vec<u8>) {
        let shape = [vec![3], vec![2, 2], vec![1, 3]][i % 3].clone();
        let values = (0..shape.iter().product::<usize>()).map(|j| i as f32 + j as f32 / 4.0);
        let (dtype, bytes): (&str, Vec<u8>) = match i % 3 {
            0 => ("F32", values.flat_map(f32::to_le_bytes).collect()),
            1 => ("F16", values.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect()),
            _ => ("BF16", values.flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect()),
        };
        (format!("layers.{i}.weight"), dtype, shape, bytes)
    }

    #[test]
    fn each_shards_header_is_parsed_once_however_many_tensors_are_read() {
        let dir = std::env::temp_dir().join(format!("ferrolm-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors: Vec<_> = (0..60).map(tensor).collect();
        let (first, second) = tensors.split_at(25);
        write_shard(&dir.join("model-00001-of-00002.safetensors"), first);
        write_shard(&dir.join("model-00002-of-00002.safetensors"), second);
        let weight_map: serde_json::Map<String, serde_json::Value> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (t.0.clone(), format!("model-0000{}-of-00002.safetensors", 1 + usize::from(i >= 25)).into())
            })
            .collect();
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

        HEADER_PARSES.with(|n| n.set(0));
        let st = SafetensorsDir::open(&dir).unwrap();
        for _ in 0..3 {
            for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
                let read = st.read(name).unwrap();
                assert_eq!(read.shape, *shape, "{name}");
                let want: Vec<f32> = (0..read.data.len()).map(|j| i as f32 + j as f32 / 4.0).collect();
                assert_eq!(read.data, want, "{name}");
                let raw = st.raw(name).unwrap();
                let numpy = [("F32", "float32"), ("F16", "float16"), ("BF16", "BF16")];
                assert_eq!(raw.dtype, numpy.iter().find(|d| d.0 == *dtype).unwrap().1);
                assert_eq!((&raw.shape, &*raw.bytes), (shape, &bytes[..]), "{name}");
                let packed = matches!(st.read_stored(name).unwrap(), StoredTensor::Packed(_));
                assert_eq!(packed, *dtype != "F32" && shape.len() == 2, "{name}");
                assert_eq!(st.shape(name).unwrap(), *shape);
            }
        }
        assert!(matches!(st.read("absent"), Err(Error::MissingTensor(_))));
        assert_eq!(HEADER_PARSES.with(|n| n.get()), 2, "one parse per shard, at open");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_shard_fails_at_open_and_an_unreadable_tensor_at_its_read() {
        let dir = std::env::temp_dir().join(format!("ferrolm-st-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let ints = ("ids".to_string(), "I32", vec![2], vec![1, 0, 0, 0, 2, 0, 0, 0]);
        write_shard(&path, &[tensor(0), tensor(1), ints]);
        // A dtype it cannot convert: the directory opens, the read names the tensor.
        let st = SafetensorsDir::open(&dir).unwrap();
        let err = st.read("ids").unwrap_err().to_string();
        assert!(err.contains("`ids`") && err.contains("I32"), "{err}");
        assert_eq!(st.raw("ids").unwrap().dtype, "I32");
        assert_eq!(st.read("layers.0.weight").unwrap().data, [0.0, 0.25, 0.5]);
        drop(st);
        // Cut short, or a header that is not one: refused at open, naming the file.
        let whole = std::fs::read(&path).unwrap();
        for damaged in [whole[..whole.len() - 3].to_vec(), vec![0xff; 64]] {
            std::fs::write(&path, damaged).unwrap();
            let err = SafetensorsDir::open(&dir).err().expect("a damaged file is refused");
            assert!(
                matches!(err, Error::InvalidWeights(_)) && err.to_string().contains("model.safetensors"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
