//! The paged KV pool in device memory (f32, laid out as on the CPU:
//! `[page][layer][key | value][offset][kv_dim]`), plus the per-batch row
//! metadata the attention kernels read, uploaded once per forward pass and
//! reused by every layer.

use cudarc::driver::CudaSlice;

use crate::backend::SeqSpan;

pub struct CudaKv {
    pub(super) pool: CudaSlice<f32>,
    pub(super) page_size: usize,
    pub(super) layers: usize,
    pub(super) kv_dim: usize,
    pub(super) meta: Option<RowMeta>,
}

impl CudaKv {
    /// f32 values in one page (all layers, keys and values).
    pub(super) fn page_len(&self) -> usize {
        2 * self.layers * self.page_size * self.kv_dim
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
}

impl RowHost {
    pub fn new(spans: &[SeqSpan], page_size: usize) -> RowHost {
        let mut rows =
            RowHost { slots: Vec::new(), positions: Vec::new(), table_start: Vec::new(), tables: Vec::new() };
        for span in spans {
            let start = rows.tables.len() as u32;
            rows.tables.extend_from_slice(span.pages);
            for pos in span.start_pos..span.start_pos + span.len {
                rows.slots.push(span.pages[pos / page_size] * page_size as u32 + (pos % page_size) as u32);
                rows.positions.push(pos as u32);
                rows.table_start.push(start);
            }
        }
        rows
    }
}

pub(super) struct RowMeta {
    pub host: RowHost,
    pub slots: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    pub table_start: CudaSlice<u32>,
    pub tables: CudaSlice<u32>,
}
