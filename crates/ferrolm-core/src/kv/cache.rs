//! [`KvCache`]: the backend storage of a page pool plus its bookkeeping
//! ([`BlockTables`]: pages, block tables, prefix hashes). Passed explicitly
//! to every forward call (never hidden model state); the scheduler creates,
//! forks and removes sequences through the bookkeeping alone.

use std::ops::{Deref, DerefMut};

use super::layout::{KvLayout, KvShape};
use super::tables::BlockTables;
pub use super::tables::SeqId;
use crate::backend::Backend;
use crate::error::Result;

/// Storage plus bookkeeping. Every [`BlockTables`] method is available on
/// the cache itself (through `Deref`), so callers read block tables and
/// manage sequences on either.
pub struct KvCache<B: Backend> {
    pub(crate) store: B::Kv,
    tables: BlockTables,
}

impl<B: Backend> KvCache<B> {
    /// An empty pool of `layout.num_pages` pages of `dtype` values for a
    /// model with `layers` layers and `kv_dim` key features per position; no
    /// sequence may grow past `max_seq_len` positions. With `prefix_caching`,
    /// full pages are registered as they fill so later sequences can share them.
    pub fn new(
        backend: &B,
        shape: KvShape,
        layout: KvLayout,
        max_seq_len: usize,
        prefix_caching: bool,
    ) -> Result<Self> {
        let tables = BlockTables::new(layout, max_seq_len, prefix_caching)?;
        let store = backend.new_kv(shape.geometry(layout), shape.dtype)?;
        Ok(KvCache { store, tables })
    }

    /// Makes positions `start_pos..end` of sequence `id` writable (see
    /// [`BlockTables::make_writable`]), copying a shared page it will write
    /// to in the backend storage.
    pub(crate) fn prepare_write(
        &mut self,
        backend: &B,
        id: SeqId,
        start_pos: usize,
        end: usize,
    ) -> Result<()> {
        let store = &mut self.store;
        self.tables.make_writable(id, start_pos, end, |from, to| backend.copy_page(store, from, to))
    }
}

impl<B: Backend> Deref for KvCache<B> {
    type Target = BlockTables;

    fn deref(&self) -> &BlockTables {
        &self.tables
    }
}

impl<B: Backend> DerefMut for KvCache<B> {
    fn deref_mut(&mut self) -> &mut BlockTables {
        &mut self.tables
    }
}
