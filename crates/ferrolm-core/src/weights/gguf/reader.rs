//! The GGUF container format, versions 2 and 3 (little-endian).
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count x (key: string, value_type u32, value)
//! tensor_count x (name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset (offset a multiple of the alignment)
//! string = len u64 + UTF-8 bytes; array = elem_type u32 + count u64 + elements
//! ```
//!
//! Everything is parsed and validated when the file is opened: every read is
//! bounds-checked, lengths and counts are capped by the bytes left in the
//! file before anything is allocated, nesting depth is limited, and every
//! tensor's bytes must lie inside the file. A malformed file gives
//! [`Error::InvalidWeights`] saying what is wrong and where; nothing here
//! panics on hostile input.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::formats::HostTensor;
use crate::formats::{dequantize, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is refused (no real
/// file nests at all) so hostile input cannot exhaust the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// A float, or an integer converted to one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64).or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// One entry of the tensor table, as the file states it.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml's `ne`: innermost (contiguous) dimension first, so a linear
    /// weight `[out, in]` in HF order is `[in, out]` here.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes; `None` for a type ggml does not define.
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at open: the product does not overflow.
        self.dims.iter().product()
    }

    /// The shape in HF (row-major, outermost first) order.
    pub fn hf_shape(&self) -> Vec<usize> {
        // Checked at open: every dimension fits usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A memory-mapped GGUF file with its metadata and tensor table parsed.
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    /// GGUF tensor name -> index into `tensors`.
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps `path` and parses the header, metadata and tensor table.
    /// A missing file is [`Error::NotFound`]; a malformed or truncated one
    /// [`Error::InvalidWeights`]; a GGUF version other than 2 or 3, or a
    /// big-endian file, [`Error::Unsupported`].
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        if file.metadata().map_err(|e| Error::io(path, e))?.is_dir() {
            return Err(Error::InvalidInput(format!("{} is a directory, not a GGUF file", path.display())));
        }
        // SAFETY: the map is read-only; ferrolm never writes checkpoint
        // files, and a file truncated underneath us is outside our contract
        // (as for every mmap-based loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        GgufFile::from_map(path, mmap)
    }

    /// Parses an already mapped file; `path` only names it in errors. What
    /// [`GgufFile::open`] does once the file is mapped (the fuzz targets map
    /// their input in memory and come in here).
    pub(crate) fn from_map(path: &Path, mmap: Mmap) -> Result<GgufFile> {
        let parsed = parse(&mmap).map_err(|e| match e {
            Error::InvalidWeights(why) => Error::InvalidWeights(format!("{}: {why}", path.display())),
            Error::Unsupported(why) => Error::Unsupported(format!("{}: {why}", path.display())),
            other => other,
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            version: parsed.version,
            metadata: parsed.metadata,
            by_name: parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect(),
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(GgufValue::as_str)
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the tensor data section (tensor offsets are relative to it).
    /// The whole file's memory map (tensors handed over packed borrow it).
    pub(super) fn mmap(&self) -> &Arc<Mmap> {
        &self.mmap
    }

    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The tensor table in file order, with GGUF names and ggml dims.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// A tensor's entry by GGUF name.
    pub fn tensor_info(&self, gguf_name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(gguf_name).map(|&i| &self.tensors[i])
    }

    /// The raw (still quantized) bytes of a tensor, by GGUF name.
    pub fn tensor_data(&self, gguf_name: &str) -> Result<&[u8]> {
        let info = self.tensor_info(gguf_name).ok_or_else(|| Error::MissingTensor(gguf_name.to_string()))?;
        self.data_of(info)
    }

    pub(super) fn data_of(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let n_bytes = info.n_bytes.ok_or_else(|| unsupported_type(info))?;
        // Checked at open: the range lies inside the file.
        let start = (self.data_start + info.offset) as usize;
        Ok(&self.mmap[start..start + n_bytes as usize])
    }

    /// Dequantizes a tensor to f32 by GGUF name, in ggml's layout (shape in
    /// HF order, data exactly as stored, no llama q/k un-permutation).
    pub fn read_gguf(&self, gguf_name: &str) -> Result<HostTensor> {
        let info = self.tensor_info(gguf_name).ok_or_else(|| Error::MissingTensor(gguf_name.to_string()))?;
        self.dequantize(info)
    }

    pub(super) fn dequantize(&self, info: &GgufTensorInfo) -> Result<HostTensor> {
        if !info.ggml_type.is_supported() {
            return Err(unsupported_type(info));
        }
        let bytes = self.data_of(info)?;
        let len = info.n_elements() as usize;
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
            what: format!("tensor `{}`", info.name),
            bytes: len.saturating_mul(4),
        })?;
        out.resize(len, 0.0);
        dequantize::dequantize(info.ggml_type, bytes, &mut out)?;
        HostTensor::new(info.hf_shape(), out)
    }

    /// Every tensor type in the file that ferrolm cannot dequantize, as an
    /// [`Error::Unsupported`] naming the first one (checked before loading a
    /// model, so that a file is refused before any work is done).
    pub fn check_supported_types(&self) -> Result<()> {
        match self.tensors.iter().find(|t| !t.ggml_type.is_supported()) {
            Some(t) => Err(unsupported_type(t)),
            None => Ok(()),
        }
    }
}

fn unsupported_type(info: &GgufTensorInfo) -> Error {
    let supported: Vec<String> = GgmlType::SUPPORTED.iter().map(|t| t.to_string()).collect();
    let ty = info.ggml_type;
    let stored = match ty.name() {
        Some(name) => format!("{name} (ggml type {})", ty.0),
        None => format!("unknown ggml type {}", ty.0),
    };
    Error::Unsupported(format!(
        "tensor `{}` is stored as {stored}, which ferrolm cannot dequantize; supported types: {}",
        info.name,
        supported.join(", ")
    ))
}

// ---------------------------------------------------------------------------
// Parsing

struct Parsed {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_start: u64,
}

/// Parses and validates everything but the tensor data itself.
fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "the magic number")?;
    if magic != MAGIC {
        return Err(Error::InvalidWeights(format!(
            "not a GGUF file (it starts with {magic:02x?}, a GGUF file with \"GGUF\")"
        )));
    }
    let version = c.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::Unsupported(
                "GGUF version 1 is not supported (ferrolm reads versions 2 and 3); re-convert the model with a recent llama.cpp".into(),
            ))
        }
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(Error::Unsupported(
                "big-endian GGUF files are not supported; use the little-endian file".into(),
            ))
        }
        v => {
            return Err(Error::Unsupported(format!(
                "GGUF version {v} is not supported (ferrolm reads versions 2 and 3)"
            )))
        }
    }
    let tensor_count = c.u64("the tensor count")?;
    let kv_count = c.u64("the metadata count")?;
    // Each key/value takes at least 13 bytes (key length, type, a 1-byte
    // value) and each tensor entry at least 32, so larger counts cannot fit.
    if kv_count > c.remaining() as u64 / 13 {
        return Err(Error::InvalidWeights(format!(
            "header claims {kv_count} metadata entries, more than the {} bytes left can hold",
            c.remaining()
        )));
    }
    if tensor_count > c.remaining() as u64 / 32 {
        return Err(Error::InvalidWeights(format!(
            "header claims {tensor_count} tensors, more than the {} bytes left can hold",
            c.remaining()
        )));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = c.string_strict(|| format!("the key of metadata entry {i}"))?;
        let ty = c.u32(&format!("the type of metadata `{key}`"))?;
        let value = c.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Error::InvalidWeights(format!("metadata key `{key}` appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(Error::InvalidWeights(format!(
                    "general.alignment must be a power of two, got {v:?}"
                )))
            }
        },
    };

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut seen = HashMap::new();
    for i in 0..tensor_count {
        let name = c.string_strict(|| format!("the name of tensor {i}"))?;
        let n_dims = c.u32(&format!("the rank of tensor `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::InvalidWeights(format!(
                "tensor `{name}` has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&format!("the dimensions of tensor `{name}`"))?);
        }
        let ggml_type = GgmlType(c.u32(&format!("the type of tensor `{name}`"))?);
        let offset = c.u64(&format!("the data offset of tensor `{name}`"))?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok() && dims.iter().all(|&d| usize::try_from(d).is_ok()))
            .ok_or_else(|| {
                Error::InvalidWeights(format!("tensor `{name}` has absurd dimensions {dims:?}"))
            })?;
        let n_bytes = match ggml_type.block_layout() {
            None => None,
            Some((block, _)) => {
                if dims[0] % block as u64 != 0 {
                    return Err(Error::InvalidWeights(format!(
                        "tensor `{name}` is {ggml_type} (blocks of {block}) but its rows have {} elements",
                        dims[0]
                    )));
                }
                Some(ggml_type.bytes_for(n_elements).ok_or_else(|| {
                    Error::InvalidWeights(format!("tensor `{name}` has absurd dimensions {dims:?}"))
                })?)
            }
        };
        if seen.insert(name.clone(), i).is_some() {
            return Err(Error::InvalidWeights(format!("tensor `{name}` appears twice")));
        }
        tensors.push(GgufTensorInfo { name, dims, ggml_type, offset, n_bytes });
    }

    let file_len = buf.len() as u64;
    let data_start = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| Error::InvalidWeights("data section offset overflows".into()))?;
    if !tensors.is_empty() && data_start > file_len {
        return Err(Error::InvalidWeights(format!(
            "truncated: the tensor data should start at byte {data_start} but the file has {file_len} bytes"
        )));
    }
    let data_len = file_len.saturating_sub(data_start);
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(Error::InvalidWeights(format!(
                "tensor `{}` has data offset {}, not a multiple of the alignment {alignment}",
                t.name, t.offset
            )));
        }
        let end = t.offset.checked_add(t.n_bytes.unwrap_or(0));
        if t.offset > data_len || end.is_none_or(|end| end > data_len) {
            return Err(Error::InvalidWeights(format!(
                "truncated: tensor `{}` ({}, {} bytes at data offset {}) extends past the end of the file (data section holds {data_len} bytes)",
                t.name,
                t.ggml_type,
                t.n_bytes.map_or("?".to_string(), |n| n.to_string()),
                t.offset
            )));
        }
    }
    Ok(Parsed { version, metadata, tensors, alignment, data_start })
}

/// A bounds-checked little-endian reader over the mapped file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::InvalidWeights(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos,
                self.buf.len()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed string's bytes, its length capped by the file.
    fn string_bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(Error::InvalidWeights(format!(
                "truncated or corrupt: {what} claims {len} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        self.take(len as usize, what)
    }

    /// Keys and tensor names: must be UTF-8.
    fn string_strict(&mut self, what: impl Fn() -> String) -> Result<String> {
        let bytes = self.string_bytes(&what())?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| Error::InvalidWeights(format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let what = || format!("the value of `{key}`");
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(&what())?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what())?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&what())?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => match self.array::<1>(&what())?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(Error::InvalidWeights(format!("`{key}` is a bool with byte value {b}"))),
            },
            // Values are decoded leniently: a token that is not valid UTF-8
            // (some converters write raw bytes) must not make the file unreadable.
            8 => GgufValue::String(String::from_utf8_lossy(self.string_bytes(&what())?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::InvalidWeights(format!(
                        "`{key}` nests arrays more than {MAX_ARRAY_DEPTH} deep"
                    )));
                }
                let elem = self.u32(&format!("the element type of `{key}`"))?;
                let count = self.u64(&format!("the length of `{key}`"))?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(Error::InvalidWeights(format!(
                            "`{key}` is an array of unknown value type {other}"
                        )))
                    }
                };
                if count > (self.remaining() / min_size) as u64 {
                    return Err(Error::InvalidWeights(format!(
                        "truncated or corrupt: `{key}` claims {count} elements at offset {} but only {} bytes remain",
                        self.pos,
                        self.remaining()
                    )));
                }
                let mut items = Vec::new();
                items.try_reserve_exact(count as usize).map_err(|_| Error::OutOfMemory {
                    what: format!("metadata `{key}`"),
                    bytes: (count as usize).saturating_mul(std::mem::size_of::<GgufValue>()),
                })?;
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&what())?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what())?)),
            other => {
                return Err(Error::InvalidWeights(format!("metadata `{key}` has unknown value type {other}")))
            }
        })
    }
}
