//! Paged key/value storage for the CPU backend.
//!
//! Each page holds `page_size` positions of every layer, laid out
//! `[layer][key | value][kv head][offset][head_dim]`, in f32 or f16 ([`DType`]; f16
//! halves the memory and the bytes attention reads). A page's memory is
//! allocated the first time it is written, and the list of pages grows to
//! the highest page written, so a large pool costs only what is used.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::backend::{check_page, check_page_access, rows_of, KvGeometry, KvPart, SeqSpan};
use crate::error::{Error, Result};
use crate::formats::DType;

/// The CPU keeps keys and values in f16 or f32 only.
pub(super) fn unsupported_kv_dtype(dtype: DType) -> Error {
    Error::Unsupported(format!(
        "the CPU's KV cache holds float16 or float32 values, not {}; use kv_dtype=\"f16\" or \"f32\"",
        dtype.name()
    ))
}

/// Page storage in one of the two precisions.
enum Pages {
    F32(Vec<Vec<f32>>),
    F16(Vec<Vec<f16>>),
}

/// `dst[i] = src[i]` widened to f32 (exact): F16C eight at a time where
/// the CPU has it (inlined, unlike `half`'s run-time dispatched slices).
fn widen(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::quant::x86_simd() {
        // SAFETY: AVX2/FMA/F16C were detected.
        return unsafe { widen_f16c(src, dst) };
    }
    src.convert_to_f32_slice(dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, both slices hold n values.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = s.to_f32();
    }
}

pub struct CpuKv {
    num_pages: usize,
    page_size: usize,
    layers: usize,
    kv_dim: usize,
    /// Pages up to the highest one written; each is empty until first written.
    pages: Pages,
}

impl CpuKv {
    pub(super) fn new(geometry: KvGeometry, dtype: DType) -> Result<CpuKv> {
        let KvGeometry { pages, page_size, layers, kv_dim } = geometry;
        let store = match dtype {
            DType::F32 => Pages::F32(Vec::new()),
            DType::F16 => Pages::F16(Vec::new()),
            DType::BF16 => return Err(unsupported_kv_dtype(dtype)),
        };
        Ok(CpuKv { num_pages: pages, page_size, layers, kv_dim, pages: store })
    }

    pub fn dtype(&self) -> DType {
        match self.pages {
            Pages::F32(_) => DType::F32,
            Pages::F16(_) => DType::F16,
        }
    }

    fn page_len(&self) -> usize {
        2 * self.layers * self.page_size * self.kv_dim
    }

    /// Offset of head `head`'s key (value: `value = true`) at position
    /// `offset` of `layer` within a page. A page is laid out
    /// `[layer][key | value][head][offset][head_dim]`: one head's positions
    /// are contiguous, so attention reads them in one run per page.
    fn at(&self, layer: usize, value: bool, head_dim: usize, head: usize, offset: usize) -> usize {
        let heads = self.kv_dim / head_dim;
        (((2 * layer + usize::from(value)) * heads + head) * self.page_size + offset) * head_dim
    }

    /// Copies the keys (`value = false`) or values of `head` at positions
    /// `positions` of a sequence into `out` (`head_dim` f32 per position).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gather(
        &self,
        pages: &[u32],
        layer: usize,
        value: bool,
        head_dim: usize,
        head: usize,
        positions: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let mut pos = positions.start;
        let mut out = out;
        while pos < positions.end {
            let (page, offset) = (pages[pos / self.page_size] as usize, pos % self.page_size);
            let n = (self.page_size - offset).min(positions.end - pos);
            let at = self.at(layer, value, head_dim, head, offset);
            let (dst, rest) = out.split_at_mut(n * head_dim);
            match &self.pages {
                Pages::F32(p) => dst.copy_from_slice(&p[page][at..at + n * head_dim]),
                Pages::F16(p) => widen(&p[page][at..at + n * head_dim], dst),
            }
            out = rest;
            pos += n;
        }
    }

    /// Stores each span's key/value rows (heads of `head_dim`) at its
    /// positions in `layer`.
    pub(super) fn write(
        &mut self,
        layer: usize,
        spans: &[SeqSpan],
        k: &[f32],
        v: &[f32],
        head_dim: usize,
    ) -> Result<()> {
        let d = self.kv_dim;
        for span in spans {
            for i in 0..span.len {
                let pos = span.start_pos + i;
                let (page, offset) = (span.pages[pos / self.page_size] as usize, pos % self.page_size);
                self.materialize(page)?;
                let row = (span.row + i) * d;
                for h in 0..d / head_dim {
                    let src = row + h * head_dim..row + (h + 1) * head_dim;
                    let (ko, vo) = (
                        self.at(layer, false, head_dim, h, offset),
                        self.at(layer, true, head_dim, h, offset),
                    );
                    match &mut self.pages {
                        Pages::F32(p) => {
                            p[page][ko..ko + head_dim].copy_from_slice(&k[src.clone()]);
                            p[page][vo..vo + head_dim].copy_from_slice(&v[src]);
                        }
                        Pages::F16(p) => {
                            p[page][ko..ko + head_dim].convert_from_f32_slice(&k[src.clone()]);
                            p[page][vo..vo + head_dim].convert_from_f32_slice(&v[src]);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn geometry(&self) -> KvGeometry {
        KvGeometry {
            pages: self.num_pages,
            page_size: self.page_size,
            layers: self.layers,
            kv_dim: self.kv_dim,
        }
    }

    /// `part` of `page` as `[offset][head][head_dim]` f32: the page stores
    /// each head's positions together, so this transposes head and offset.
    pub(super) fn read_page(&self, page: u32, part: KvPart) -> Result<Vec<f32>> {
        check_page_access(self.geometry(), page, part, 0, self.page_size)?;
        let (hd, value) = (part.head_dim, part.kind.is_value());
        let mut out = vec![0.0; self.page_size * self.kv_dim];
        for (offset, row) in out.chunks_exact_mut(self.kv_dim).enumerate() {
            for (h, dst) in row.chunks_exact_mut(hd).enumerate() {
                let at = self.at(part.layer, value, hd, h, offset);
                match &self.pages {
                    Pages::F32(p) => {
                        if let Some(src) = written(p, page as usize) {
                            dst.copy_from_slice(&src[at..at + hd])
                        }
                    }
                    Pages::F16(p) => {
                        if let Some(src) = written(p, page as usize) {
                            src[at..at + hd].convert_to_f32_slice(dst)
                        }
                    }
                } // a page never written reads as zeros
            }
        }
        Ok(out)
    }

    /// Stores `data` (`[rows][head][head_dim]` f32) at positions
    /// `offset..offset + rows` of `part` of `page`; an f16 pool rounds to
    /// nearest f16, as [`CpuKv::write`] does for attention.
    pub(super) fn write_page(&mut self, page: u32, part: KvPart, offset: usize, data: &[f32]) -> Result<()> {
        let rows = rows_of(data, part)?;
        check_page_access(self.geometry(), page, part, offset, rows)?;
        self.materialize(page as usize)?;
        let (hd, value) = (part.head_dim, part.kind.is_value());
        for (i, row) in data.chunks_exact(self.kv_dim).enumerate() {
            for (h, src) in row.chunks_exact(hd).enumerate() {
                let at = self.at(part.layer, value, hd, h, offset + i);
                match &mut self.pages {
                    Pages::F32(p) => p[page as usize][at..at + hd].copy_from_slice(src),
                    Pages::F16(p) => p[page as usize][at..at + hd].convert_from_f32_slice(src),
                }
            }
        }
        Ok(())
    }

    pub(super) fn copy_page(&mut self, src: u32, dst: u32) -> Result<()> {
        check_page(self.geometry(), src)?;
        check_page(self.geometry(), dst)?;
        self.materialize(dst as usize)?;
        match &mut self.pages {
            Pages::F32(p) => copy_within(p, src as usize, dst as usize),
            Pages::F16(p) => copy_within(p, src as usize, dst as usize),
        }
        Ok(())
    }

    fn materialize(&mut self, page: usize) -> Result<()> {
        let len = self.page_len();
        match &mut self.pages {
            Pages::F32(p) => materialize(p, page, len),
            Pages::F16(p) => materialize(p, page, len),
        }
    }
}

/// Gives `pages[page]` its `len` zeros if it has none yet, growing the list
/// of pages to reach it.
fn materialize<T: Clone + Default>(pages: &mut Vec<Vec<T>>, page: usize, len: usize) -> Result<()> {
    let oom = |bytes| Error::OutOfMemory { what: "KV cache page".into(), bytes };
    if page >= pages.len() {
        let more = page + 1 - pages.len();
        pages.try_reserve(more).map_err(|_| oom(more * std::mem::size_of::<Vec<T>>()))?;
        pages.resize_with(page + 1, Vec::new);
    }
    if pages[page].is_empty() {
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| oom(len * std::mem::size_of::<T>()))?;
        v.resize(len, T::default());
        pages[page] = v;
    }
    Ok(())
}

/// A page's values if it has been written.
fn written<T>(pages: &[Vec<T>], page: usize) -> Option<&[T]> {
    pages.get(page).map(Vec::as_slice).filter(|p| !p.is_empty())
}

/// Copies page `src` over page `dst` (materialized): an unwritten source
/// reads as zeros, so `dst` becomes zeros too, as on the GPU.
fn copy_within<T: Copy + Default>(pages: &mut [Vec<T>], src: usize, dst: usize) {
    if src == dst {
        return;
    }
    if written(pages, src).is_none() {
        pages[dst].fill(T::default());
        return;
    }
    let (a, b) = if src < dst {
        let (lo, hi) = pages.split_at_mut(dst);
        (&lo[src], &mut hi[0])
    } else {
        let (lo, hi) = pages.split_at_mut(src);
        (&hi[0], &mut lo[dst])
    };
    b.copy_from_slice(a);
}
