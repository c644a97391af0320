//! The paged KV pool in device memory (f32, bf16 or f16 values, laid out as
//! on the CPU: `[page][layer][key | value][offset][kv_dim]`), plus the per-batch row
//! metadata the attention kernels read, uploaded once per forward pass and
//! reused by every layer.

use cudarc::driver::CudaSlice;

use crate::backend::{KvGeometry, KvPart, SeqSpan};
use crate::formats::DType;

/// The pool's values: f32, or 16-bit bf16/f16 bits.
pub(super) enum KvPool {
    F32(CudaSlice<f32>),
    Half { bits: CudaSlice<u16>, dtype: DType },
}

impl KvPool {
    pub(super) fn len(&self) -> usize {
        match self {
            KvPool::F32(p) => p.len(),
            KvPool::Half { bits, .. } => bits.len(),
        }
    }

    pub(super) fn dtype(&self) -> DType {
        match self {
            KvPool::F32(_) => DType::F32,
            KvPool::Half { dtype, .. } => *dtype,
        }
    }
}

pub struct CudaKv {
    pub(super) pool: KvPool,
    pub(super) page_size: usize,
    pub(super) layers: usize,
    pub(super) kv_dim: usize,
    pub(super) meta: Option<RowMeta>,
}

impl CudaKv {
    /// Values in one page (all layers, keys and values).
    pub(super) fn page_len(&self) -> usize {
        2 * self.layers * self.page_size * self.kv_dim
    }

    pub(super) fn geometry(&self) -> KvGeometry {
        let pages = if self.page_len() == 0 { 0 } else { self.pool.len() / self.page_len() };
        KvGeometry { pages, page_size: self.page_size, layers: self.layers, kv_dim: self.kv_dim }
    }

    /// Where position `offset` of `part` of `page` starts in the pool. The
    /// positions of one layer's keys (or values) in a page are contiguous
    /// rows of `kv_dim`, already MILI's `[page_size, kv_heads, head_dim]`.
    pub(super) fn region(&self, page: u32, part: KvPart, offset: usize) -> usize {
        let kind = usize::from(part.kind.is_value());
        (((page as usize * self.layers + part.layer) * 2 + kind) * self.page_size + offset) * self.kv_dim
    }
}

/// Where each row of a batch lives: its pool slot (page * page_size +
/// offset), its position, and where its sequence's block table starts in
/// the concatenated tables.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RowHost {
    pub slots: Vec<u32>,
    pub positions: Vec<u32>,
    pub table_start: Vec<u32>,
    pub tables: Vec<u32>,
    /// Prefill tiles: up to `PREFILL_ROWS` consecutive rows of one sequence.
    pub tile_first: Vec<u32>,
    pub tile_rows: Vec<u32>,
    /// Whether every sequence brings one row (a pure decode step).
    pub decode_only: bool,
}

/// Rows per prefill tile (`PREFILL_ROWS` in attention.cu).
pub(super) const PREFILL_ROWS: usize = 16;

impl RowHost {
    /// Row metadata for `spans`, indexed by batch row: a span's rows are
    /// `span.row..span.row + span.len` wherever it sits in the slice.
    pub fn new(spans: &[SeqSpan], page_size: usize) -> RowHost {
        let total = spans.iter().map(|s| s.row + s.len).max().unwrap_or(0);
        let mut rows = RowHost {
            slots: vec![0; total],
            positions: vec![0; total],
            table_start: vec![0; total],
            tables: Vec::new(),
            tile_first: Vec::new(),
            tile_rows: Vec::new(),
            decode_only: spans.iter().all(|s| s.len == 1),
        };
        for span in spans {
            for first in (span.row..span.row + span.len).step_by(PREFILL_ROWS) {
                rows.tile_first.push(first as u32);
                rows.tile_rows.push((span.row + span.len - first).min(PREFILL_ROWS) as u32);
            }
            let start = rows.tables.len() as u32;
            rows.tables.extend_from_slice(span.pages);
            for i in 0..span.len {
                let pos = span.start_pos + i;
                let row = span.row + i;
                rows.slots[row] = span.pages[pos / page_size] * page_size as u32 + (pos % page_size) as u32;
                rows.positions[row] = pos as u32;
                rows.table_start[row] = start;
            }
        }
        rows
    }
}

pub(super) struct RowMeta {
    pub host: RowHost,
    pub tile_first: CudaSlice<u32>,
    pub tile_rows: CudaSlice<u32>,
    pub slots: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    pub table_start: CudaSlice<u32>,
    pub tables: CudaSlice<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_map_to_pool_slots_and_prefill_tiles() {
        let (a, b) = ([7u32], [2u32, 5]);
        let spans = [
            SeqSpan { pages: &a, start_pos: 3, row: 0, len: 1 },
            SeqSpan { pages: &b, start_pos: 0, row: 1, len: 20 },
        ];
        let rows = RowHost::new(&spans, 16);
        assert!(!rows.decode_only);
        assert_eq!(rows.slots[0], 7 * 16 + 3);
        assert_eq!((rows.slots[1], rows.slots[17], rows.slots[20]), (2 * 16, 5 * 16, 5 * 16 + 3));
        assert_eq!(rows.positions[20], 19);
        assert_eq!(rows.tables, vec![7, 2, 5]);
        assert_eq!((rows.table_start[0], rows.table_start[1]), (0, 1));
        assert_eq!(rows.tile_first, vec![0, 1, 17]);
        assert_eq!(rows.tile_rows, vec![1, 16, 4]);
        assert!(RowHost::new(&spans[..1], 16).decode_only);
    }

    #[test]
    fn rows_follow_span_row_not_span_order() {
        let (a, b) = ([7u32], [2u32, 5]);
        let in_order = [
            SeqSpan { pages: &a, start_pos: 3, row: 0, len: 1 },
            SeqSpan { pages: &b, start_pos: 14, row: 1, len: 4 },
        ];
        let reversed = [in_order[1], in_order[0]];
        let (x, y) = (RowHost::new(&in_order, 16), RowHost::new(&reversed, 16));
        assert_eq!(x.slots, y.slots);
        assert_eq!(x.positions, y.positions);
        assert_eq!(y.slots, vec![7 * 16 + 3, 2 * 16 + 14, 2 * 16 + 15, 5 * 16, 5 * 16 + 1]);
        assert_eq!(y.positions, vec![3, 14, 15, 16, 17]);
        // Each row points at its own sequence's block table.
        assert_eq!(y.tables, vec![2, 5, 7]);
        assert_eq!(y.table_start, vec![2, 0, 0, 0, 0]);
    }
}
