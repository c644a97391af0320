//! Pages held by hand and their keys/values as plain f32: what MILI's
//! `KVCacheAllocator` and `PagedKVCache` views call. A run of `n` positions
//! over a list of pages puts position `p` at offset `p % page_size` of page
//! `pages[p / page_size]`, exactly as attention reads a block table.

use super::cache::KvCache;
use super::pool::PageId;
use crate::backend::{rows_of, Backend, KvPart};
use crate::error::{Error, Result};

impl<B: Backend> KvCache<B> {
    /// Takes `n` pages owned by the caller (not by a sequence), each with
    /// one owner, or `None` (nothing taken) when fewer are available.
    pub fn allocate_pages(&mut self, n: usize) -> Option<Vec<PageId>> {
        self.pool_mut().allocate(n)
    }

    /// Takes one page owned by the caller; [`Error::KvCacheFull`] when none is available.
    pub fn allocate_page(&mut self) -> Result<PageId> {
        match self.pool_mut().allocate(1) {
            Some(pages) => Ok(pages[0]),
            None => Err(Error::KvCacheFull { needed: 1, available: 0 }),
        }
    }

    /// Adds an owner to each page (sharing it); nothing changes on error.
    pub fn add_page_refs(&mut self, pages: &[PageId]) -> Result<()> {
        self.pool_mut().add_ref(pages)
    }

    /// Drops one owner from each page; nothing changes on error.
    pub fn release_pages(&mut self, pages: &[PageId]) -> Result<()> {
        self.pool_mut().release(pages)
    }

    /// `part` of one allocated page, `[page_size, kv_heads, head_dim]`.
    pub fn read_page(&self, backend: &B, page: PageId, part: KvPart) -> Result<Vec<f32>> {
        self.pool().check_used(&[page])?;
        backend.read_kv_page(&self.store, page, part)
    }

    /// Positions `0..seq_len` of `part` over `pages`, `[seq_len, kv_heads, head_dim]`.
    pub fn gather(&self, backend: &B, pages: &[PageId], seq_len: usize, part: KvPart) -> Result<Vec<f32>> {
        self.check_span(pages, seq_len, "seq_len")?;
        let mut out = Vec::with_capacity(seq_len * part.row_len());
        let mut left = seq_len;
        for &page in &pages[..self.pages_for(seq_len)] {
            let data = backend.read_kv_page(&self.store, page, part)?;
            let n = left.min(self.page_size());
            out.extend_from_slice(&data[..n * part.row_len()]);
            left -= n;
        }
        Ok(out)
    }

    /// Writes `data` (`[n, kv_heads, head_dim]`) to positions `0..n` of
    /// `part` over `pages`. The shape and every page are checked before
    /// anything is written.
    pub fn write(&mut self, backend: &B, pages: &[PageId], part: KvPart, data: &[f32]) -> Result<()> {
        let rows = rows_of(data, part)?;
        self.check_span(pages, rows, "data")?;
        for (chunk, &page) in data.chunks(self.page_size() * part.row_len()).zip(pages) {
            backend.write_kv_page(&mut self.store, page, part, 0, chunk)?;
        }
        Ok(())
    }

    /// Every page must be allocated and together hold `positions` positions.
    fn check_span(&self, pages: &[PageId], positions: usize, what: &str) -> Result<()> {
        self.pool().check_used(pages)?;
        let room = pages.len() * self.page_size();
        if positions > room {
            return Err(Error::InvalidInput(format!(
                "{what} covers {positions} positions but the {} page(s) given hold {room}; \
                 pass more pages",
                pages.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::{Cpu, CpuOptions};
    use crate::backend::KvKind;
    use crate::formats::DType;
    use crate::kv::{KvCache, KvLayout, KvShape};

    use super::*;

    const PART: KvPart = KvPart { layer: 1, kind: KvKind::Value, kv_heads: 2, head_dim: 3 };

    fn cache(dtype: DType) -> (Cpu, KvCache<Cpu>) {
        let cpu = Cpu::new(CpuOptions { threads: Some(1), ..Default::default() }).unwrap();
        let cache = KvCache::new(
            &cpu,
            KvShape { layers: 2, kv_dim: 6, dtype },
            KvLayout { page_size: 4, num_pages: 5 },
            20,
            true,
        )
        .unwrap();
        (cpu, cache)
    }

    fn ramp(rows: usize) -> Vec<f32> {
        (0..rows * 6).map(|i| i as f32 * 0.37 - 3.0).collect()
    }

    #[test]
    fn writes_gather_back_in_block_table_order() {
        let (cpu, mut cache) = cache(DType::F32);
        let pages = cache.allocate_pages(3).unwrap();
        let table = [pages[2], pages[0], pages[1]];
        let data = ramp(10);
        cache.write(&cpu, &table, PART, &data).unwrap();
        assert_eq!(cache.gather(&cpu, &table, 10, PART).unwrap(), data);
        assert_eq!(cache.gather(&cpu, &table, 5, PART).unwrap(), data[..5 * 6]);
        // Position 4 is offset 0 of the table's second page.
        assert_eq!(cache.read_page(&cpu, pages[0], PART).unwrap(), data[4 * 6..8 * 6]);
        // The other layer and the keys were not touched.
        let keys = KvPart { kind: KvKind::Key, ..PART };
        assert_eq!(cache.read_page(&cpu, pages[2], keys).unwrap(), vec![0.0; 4 * 6]);
        assert_eq!(cache.read_page(&cpu, pages[2], KvPart { layer: 0, ..PART }).unwrap(), vec![0.0; 4 * 6]);
    }

    #[test]
    fn an_f16_pool_stores_values_rounded_to_f16() {
        let (cpu, mut cache) = cache(DType::F16);
        let pages = cache.allocate_pages(1).unwrap();
        let data = ramp(4);
        cache.write(&cpu, &pages, PART, &data).unwrap();
        let rounded: Vec<f32> = data.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        assert_ne!(rounded, data, "the ramp has values f16 cannot hold exactly");
        assert_eq!(cache.read_page(&cpu, pages[0], PART).unwrap(), rounded);
    }

    #[test]
    fn bad_pages_and_shapes_are_errors_that_write_nothing() {
        let (cpu, mut cache) = cache(DType::F32);
        let pages = cache.allocate_pages(2).unwrap();
        let err = |r: Result<()>| r.unwrap_err().to_string();
        assert!(err(cache.write(&cpu, &pages, PART, &ramp(9))).contains("hold 8"));
        assert!(err(cache.write(&cpu, &pages, PART, &[1.0; 5])).contains("whole number"));
        assert!(err(cache.write(&cpu, &[pages[0], 4], PART, &ramp(1))).contains("not allocated"));
        assert!(err(cache.write(&cpu, &[9], PART, &ramp(1))).contains("does not exist"));
        assert!(cache.gather(&cpu, &pages, 9, PART).unwrap_err().to_string().contains("seq_len covers 9"));
        let layer9 = KvPart { layer: 9, ..PART };
        assert!(err(cache.write(&cpu, &pages, layer9, &ramp(1))).contains("layer 9"));
        assert_eq!(cache.gather(&cpu, &pages, 8, PART).unwrap(), vec![0.0; 8 * 6], "nothing was written");
        assert_eq!(cache.gather(&cpu, &pages, 0, PART).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn hand_held_pages_count_owners_and_run_out_without_leaking() {
        let (_, mut cache) = cache(DType::F32);
        let pages = cache.allocate_pages(4).unwrap();
        assert!(cache.allocate_pages(2).is_none(), "all or nothing");
        assert_eq!(cache.available_pages(), 1);
        let last = cache.allocate_page().unwrap();
        assert!(matches!(cache.allocate_page(), Err(Error::KvCacheFull { needed: 1, available: 0 })));
        cache.release_pages(&[last]).unwrap();
        cache.add_page_refs(&pages[..1]).unwrap();
        cache.release_pages(&pages).unwrap();
        assert_eq!(cache.pool().ref_count(pages[0]), 1);
        assert_eq!(cache.available_pages(), 4);
        assert!(cache.release_pages(&[pages[1]]).is_err());
    }
}
