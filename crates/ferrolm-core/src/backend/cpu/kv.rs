//! Contiguous per-slot key/value storage for the CPU backend.
//!
//! Each (slot, layer) holds keys and values as `[positions, kv_dim]` rows
//! that grow as the sequence does, so memory follows actual use rather than
//! `max_seq_len`.

use crate::backend::SeqSpan;
use crate::error::{Error, Result};

pub struct CpuKv {
    kv_dim: usize,
    /// `[slot][layer]` -> (keys, values), each `[positions * kv_dim]`.
    slots: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
}

impl CpuKv {
    pub(super) fn new(slots: usize, layers: usize, kv_dim: usize) -> CpuKv {
        CpuKv { kv_dim, slots: vec![vec![(Vec::new(), Vec::new()); layers]; slots] }
    }

    /// Keys and values of `slot` in `layer`, positions `0..len`.
    pub(super) fn get(&self, slot: usize, layer: usize, len: usize) -> (&[f32], &[f32]) {
        let (k, v) = &self.slots[slot][layer];
        (&k[..len * self.kv_dim], &v[..len * self.kv_dim])
    }

    /// Stores each span's rows at positions `start_pos..start_pos + len`,
    /// dropping anything cached after them (as a rewrite from `start_pos` must).
    pub(super) fn write(&mut self, layer: usize, spans: &[SeqSpan], k: &[f32], v: &[f32]) -> Result<()> {
        let d = self.kv_dim;
        for span in spans {
            let (keys, values) = &mut self.slots[span.slot][layer];
            let rows = span.row * d..(span.row + span.len) * d;
            for (store, src) in [(keys, &k[rows.clone()]), (values, &v[rows])] {
                store.truncate(span.start_pos * d);
                store
                    .try_reserve(src.len())
                    .map_err(|_| Error::OutOfMemory { what: "KV cache".into(), bytes: src.len() * 4 })?;
                store.extend_from_slice(src);
            }
        }
        Ok(())
    }
}
