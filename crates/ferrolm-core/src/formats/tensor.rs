//! Tensors as checkpoints store them: f32, or packed (f16/bf16 halves and
//! ggml quantization blocks) still in their stored bytes.
//!
//! Loaders hand [`StoredTensor`]s to a backend, which decides what to keep:
//! the CPU keeps packed matrices packed (its kernels multiply them as they
//! are), a GPU dequantizes them. Packed data may borrow the checkpoint's
//! memory map, so a GGUF model is never copied in RAM.

use std::ops::{Deref, Range};
use std::sync::Arc;

use memmap2::Mmap;

use super::{dequantize, GgmlType};
use crate::error::{Error, Result};

/// A dense tensor in host memory, upcast to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<HostTensor> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::InvalidWeights(format!(
                "shape {shape:?} needs {expected} elements but {} were given",
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }
}

/// Bytes owned, or a range of a shared memory map.
#[derive(Clone)]
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped { map: Arc<Mmap>, range: Range<usize> },
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, range } => &map[range.clone()],
        }
    }
}

impl Bytes {
    /// Tells the kernel that `range` (relative to these bytes) will not be
    /// read again through the memory map, so its pages stop counting in the
    /// process's resident memory. Used once the bytes have been copied
    /// (reordered or unpermuted); a no-op for owned bytes.
    pub fn release(&self, range: Range<usize>) {
        if let Bytes::Mapped { map, range: whole } = self {
            release_pages(map, whole.start + range.start..whole.start + range.end);
        }
    }

    /// [`Bytes::release`] of every page of the map up to the end of these
    /// bytes. Loaders copy tensors in file order, and a page fault maps a
    /// whole (possibly large) page-cache folio, which can bring back pages
    /// of tensors released before; this releases them again.
    pub fn release_map_to_end(&self) {
        if let Bytes::Mapped { map, range } = self {
            release_pages(map, 0..range.end);
        }
    }
}

/// See [`Bytes::release`].
pub(crate) fn release_pages(map: &Mmap, range: Range<usize>) {
    // SAFETY: DONTNEED on a read-only file mapping only drops resident
    // pages; a later read faults them back in from the file unchanged. The
    // result is ignored: failing to release costs memory, not correctness.
    let _ =
        unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len()) };
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, Bytes::Owned(_)) { "owned" } else { "mapped" };
        write!(f, "Bytes({} {kind})", self.len())
    }
}

/// A row-major tensor whose elements are packed: `ty` is a ggml type
/// (F16, BF16, Q4_0, ...); each row of the last dimension is a whole number
/// of `ty`'s blocks.
#[derive(Debug, Clone)]
pub struct PackedTensor {
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub data: Bytes,
}

impl PackedTensor {
    /// Checks that `data` holds exactly `shape` in whole blocks of `ty` per row.
    pub fn new(shape: Vec<usize>, ty: GgmlType, data: Bytes) -> Result<PackedTensor> {
        let cols = *shape.last().unwrap_or(&1) as u64;
        let rows: usize = shape.iter().rev().skip(1).product();
        let row_bytes = ty.bytes_for(cols).ok_or_else(|| {
            Error::InvalidWeights(format!(
                "rows of {cols} values are not whole {ty} blocks (shape {shape:?})"
            ))
        })?;
        if row_bytes as usize * rows != data.len() {
            return Err(Error::InvalidWeights(format!(
                "shape {shape:?} of {ty} needs {} bytes but {} were given",
                row_bytes as usize * rows,
                data.len()
            )));
        }
        Ok(PackedTensor { shape, ty, data })
    }

    /// Values per row (the last dimension).
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }

    pub fn rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows().max(1)
    }

    /// The stored bytes of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[i * n..(i + 1) * n]
    }

    /// The tensor upcast to f32.
    pub fn dequantize(&self) -> Result<HostTensor> {
        let len: usize = self.shape.iter().product();
        let mut out = crate::error::try_zeroed(len, "dequantized tensor")?;
        dequantize::dequantize(self.ty, &self.data, &mut out)?;
        HostTensor::new(self.shape.clone(), out)
    }
}

/// A tensor as read from a checkpoint.
#[derive(Debug, Clone)]
pub enum StoredTensor {
    F32(HostTensor),
    Packed(PackedTensor),
}

impl StoredTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            StoredTensor::F32(t) => &t.shape,
            StoredTensor::Packed(p) => &p.shape,
        }
    }

    /// Whether the data are ggml blocks (Q8_0, Q4_K, ...) rather than floats.
    pub fn is_block_quantized(&self) -> bool {
        matches!(self, StoredTensor::Packed(p) if p.ty.block_layout().is_some_and(|(block, _)| block > 1))
    }

    /// The tensor as f32 (dequantizing packed data).
    pub fn into_host(self) -> Result<HostTensor> {
        match self {
            StoredTensor::F32(t) => Ok(t),
            StoredTensor::Packed(p) => p.dequantize(),
        }
    }
}

impl From<HostTensor> for StoredTensor {
    fn from(t: HostTensor) -> Self {
        StoredTensor::F32(t)
    }
}
