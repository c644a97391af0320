//! The KV cache a model writes to and attends over, passed explicitly to
//! every forward call (never hidden model state).
//!
//! It has a fixed number of slots (sequences that can be in flight at once,
//! Meta's `max_batch_size`) and a per-sequence capacity (`max_seq_len`).
//! The bookkeeping (how many positions each slot holds) lives here; the
//! storage itself belongs to the backend.

use crate::backend::Backend;
use crate::error::{Error, Result};

pub struct KvCache<B: Backend> {
    pub(crate) store: B::Kv,
    /// Positions cached per slot.
    pub(crate) lens: Vec<usize>,
    max_seq_len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(backend: &B, slots: usize, layers: usize, kv_dim: usize, max_seq_len: usize) -> Result<Self> {
        if slots == 0 {
            return Err(Error::InvalidInput(
                "a KV cache needs at least one slot (max_batch_size >= 1)".into(),
            ));
        }
        Ok(KvCache { store: backend.new_kv(slots, layers, kv_dim)?, lens: vec![0; slots], max_seq_len })
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Number of positions cached for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    pub fn is_empty(&self, slot: usize) -> bool {
        self.lens[slot] == 0
    }

    /// Forgets everything cached in `slot` (its storage is reused).
    pub fn clear(&mut self, slot: usize) {
        self.lens[slot] = 0;
    }
}
