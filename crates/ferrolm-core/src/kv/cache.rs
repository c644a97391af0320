//! [`KvCache`]: the backend storage of a page pool plus its bookkeeping
//! ([`BlockTables`]: pages, block tables, prefix hashes). Passed explicitly
//! to every forward call (never hidden model state); the scheduler creates,
//! forks and removes sequences through the bookkeeping alone.

use std::ops::{Deref, DerefMut};

use super::layout::{KvLayout, KvShape};
use super::tables::BlockTables;
pub use super::tables::SeqId;
use crate::backend::Backend;
use crate::error::{Error, Result};

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
    ///
    /// A pool whose pages would not fit in the backend's memory when full
    /// is refused up front ([`Error::DoesNotFit`]): on the CPU pages are only
    /// allocated when written, so an oversized pool would otherwise fail
    /// later, mid-generation, or be killed by the system.
    pub fn new(
        backend: &B,
        shape: KvShape,
        layout: KvLayout,
        max_seq_len: usize,
        prefix_caching: bool,
    ) -> Result<Self> {
        check_fits(backend, shape, layout)?;
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

/// Refuses a pool larger than the memory the backend has left.
fn check_fits<B: Backend>(backend: &B, shape: KvShape, layout: KvLayout) -> Result<()> {
    let needed = shape.pool_bytes(layout);
    match backend.memory_available() {
        Some(available) if needed > available => {
            let position_bytes = shape.page_bytes(1).max(1);
            Err(Error::DoesNotFit {
                what: format!(
                    "a KV cache of {} pages ({} positions of {} layers)",
                    layout.num_pages,
                    layout.num_pages.saturating_mul(layout.page_size),
                    shape.layers
                ),
                needed,
                available,
                advice: format!(
                    "about {} positions fit: lower max_seq_len or max_batch_size (a model's cache holds \
                     max_batch_size sequences of max_seq_len positions), or the pool's num_pages / \
                     kv_cache_bytes",
                    available / position_bytes
                ),
            })
        }
        _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::formats::DType;

    #[test]
    fn a_pool_past_the_memory_left_is_refused_with_what_to_lower() {
        let shape = KvShape { layers: 2, kv_dim: 64, dtype: DType::F32 };
        let huge = KvLayout { page_size: 16, num_pages: u32::MAX as usize };
        let err = KvCache::new(&Cpu::default(), shape, huge, 1 << 36, false).err().unwrap();
        assert!(matches!(err, Error::DoesNotFit { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("positions fit") && msg.contains("max_seq_len"), "{msg}");
        let small = KvLayout { page_size: 16, num_pages: 4 };
        assert!(KvCache::new(&Cpu::default(), shape, small, 64, false).is_ok());
    }
}
