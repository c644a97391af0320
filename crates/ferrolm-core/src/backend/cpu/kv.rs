//! Paged key/value storage for the CPU backend.
//!
//! Each page holds `page_size` positions of every layer, laid out
//! `[layer][key | value][offset][kv_dim]`. A page's memory is allocated the
//! first time it is written, so a large pool costs only what is used.

use crate::backend::SeqSpan;
use crate::error::{Error, Result};

pub struct CpuKv {
    page_size: usize,
    layers: usize,
    kv_dim: usize,
    /// Empty until first written.
    pages: Vec<Vec<f32>>,
}

impl CpuKv {
    pub(super) fn new(pages: usize, page_size: usize, layers: usize, kv_dim: usize) -> CpuKv {
        CpuKv { page_size, layers, kv_dim, pages: vec![Vec::new(); pages] }
    }

    fn page_len(&self) -> usize {
        2 * self.layers * self.page_size * self.kv_dim
    }

    /// Offset of position `offset`'s key (value: `value = true`) in `layer` within a page.
    fn at(&self, layer: usize, value: bool, offset: usize) -> usize {
        ((2 * layer + usize::from(value)) * self.page_size + offset) * self.kv_dim
    }

    /// The key and value rows (`kv_dim` each) of position `pos` of a sequence.
    pub(super) fn row(&self, pages: &[u32], layer: usize, pos: usize) -> (&[f32], &[f32]) {
        let page = &self.pages[pages[pos / self.page_size] as usize];
        let off = pos % self.page_size;
        let (k, v) = (self.at(layer, false, off), self.at(layer, true, off));
        (&page[k..k + self.kv_dim], &page[v..v + self.kv_dim])
    }

    /// Stores each span's key/value rows at its positions in `layer`.
    pub(super) fn write(&mut self, layer: usize, spans: &[SeqSpan], k: &[f32], v: &[f32]) -> Result<()> {
        let d = self.kv_dim;
        for span in spans {
            for i in 0..span.len {
                let pos = span.start_pos + i;
                let page = span.pages[pos / self.page_size] as usize;
                self.materialize(page)?;
                let (ko, vo) =
                    (self.at(layer, false, pos % self.page_size), self.at(layer, true, pos % self.page_size));
                let row = (span.row + i) * d..(span.row + i + 1) * d;
                self.pages[page][ko..ko + d].copy_from_slice(&k[row.clone()]);
                self.pages[page][vo..vo + d].copy_from_slice(&v[row]);
            }
        }
        Ok(())
    }

    pub(super) fn copy_page(&mut self, src: u32, dst: u32) -> Result<()> {
        let (src, dst) = (src as usize, dst as usize);
        self.materialize(dst)?;
        if self.pages[src].is_empty() {
            return Ok(());
        }
        let (a, b) = if src < dst {
            let (lo, hi) = self.pages.split_at_mut(dst);
            (&lo[src], &mut hi[0])
        } else {
            let (lo, hi) = self.pages.split_at_mut(src);
            (&hi[0], &mut lo[dst])
        };
        b.copy_from_slice(a);
        Ok(())
    }

    fn materialize(&mut self, page: usize) -> Result<()> {
        if self.pages[page].is_empty() {
            let len = self.page_len();
            self.pages[page] = crate::error::try_zeroed(len, "KV cache page")
                .map_err(|_| Error::OutOfMemory { what: "KV cache page".into(), bytes: len * 4 })?;
        }
        Ok(())
    }
}
