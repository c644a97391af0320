//! The page pool's bookkeeping: which pages are free, how many owners each
//! used page has, and which full pages are kept for reuse by later requests
//! with the same token prefix (the prefix cache).
//!
//! A page is in exactly one of three states:
//! - *used*: one or more owners (sequences, or callers of [`PagePool::add_ref`]);
//! - *cached*: no owner, but its content is registered under a prefix hash,
//!   so a later request can take it back; evicted least-recently-used first;
//! - *free*: no owner and no content worth keeping.
//!
//! The pool holds no key/value data: the backend's storage is indexed by the
//! page ids handed out here. Its own bookkeeping grows with the pages ever
//! handed out, not with the pool's size: pages never used yet are "fresh",
//! a range of ids with nothing recorded, so a pool sized for a huge context
//! costs nothing up front.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

/// Index of a page in the pool.
pub type PageId = u32;

/// Identity of a full page's content: the tokens it holds and every token
/// before it (a chain hash, as vLLM's block hashes).
pub type PrefixHash = u128;

/// The hash of a full page holding `tokens`, following the page hashed `parent`.
pub fn page_hash(parent: Option<PrefixHash>, tokens: &[u32]) -> PrefixHash {
    use std::hash::{Hash, Hasher};
    // Two independently keyed 64-bit hashes: collisions would silently serve
    // another prompt's keys, so 128 bits keep them out of reach.
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, parent, tokens).hash(&mut h);
        h.finish() as u128
    };
    (half(0x9e37_79b9) << 64) | half(0x85eb_ca6b)
}

/// Counts describing the pool, for metrics and tests: every page is used,
/// cached or free (`total_pages = used_pages + cached_pages + free_pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub total_pages: usize,
    /// Pages with at least one owner.
    pub used_pages: usize,
    /// Unowned pages kept for prefix reuse (reclaimable: taken, oldest
    /// first, when the free list runs out).
    pub cached_pages: usize,
    /// Pages on the free list, holding nothing.
    pub free_pages: usize,
    /// Pages new positions can take: `free_pages + cached_pages`.
    pub available_pages: usize,
    /// Prefix-cache lookups and how many of them found a page.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

/// What the pool records about a page it has handed out at least once.
#[derive(Debug, Clone, Copy, Default)]
struct PageState {
    refs: u32,
    /// The registered content, if any.
    hash: Option<PrefixHash>,
    /// Key of the page in `lru` while it is cached.
    last_use: u64,
}

#[derive(Debug)]
pub struct PagePool {
    total: usize,
    /// Pages `0..seen.len()` have been handed out at least once; the rest
    /// are fresh.
    seen: Vec<PageState>,
    /// Pages given back and holding nothing, taken from the back (before
    /// fresh ones, so a pool reuses the memory it has touched).
    free: Vec<PageId>,
    by_hash: HashMap<PrefixHash, PageId>,
    /// Unowned registered pages by last use (oldest first), and each one's key.
    lru: BTreeMap<u64, PageId>,
    clock: u64,
    queries: u64,
    hits: u64,
}

impl PagePool {
    pub fn new(pages: usize) -> Result<PagePool> {
        if pages == 0 || pages > PageId::MAX as usize {
            return Err(Error::InvalidInput(format!(
                "a KV pool needs 1..={} pages, got {pages}",
                PageId::MAX
            )));
        }
        Ok(PagePool {
            total: pages,
            seen: Vec::new(),
            free: Vec::new(),
            by_hash: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            queries: 0,
            hits: 0,
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Pages never handed out.
    fn fresh(&self) -> usize {
        self.total - self.seen.len()
    }

    /// Pages that [`PagePool::allocate`] can hand out now (free or cached).
    pub fn available(&self) -> usize {
        self.free.len() + self.fresh() + self.lru.len()
    }

    /// Owners of `page` (0 for a page never handed out).
    pub fn ref_count(&self, page: PageId) -> u32 {
        self.seen.get(page as usize).map_or(0, |s| s.refs)
    }

    /// Whether the page's content is registered in the prefix cache.
    pub fn is_registered(&self, page: PageId) -> bool {
        self.seen.get(page as usize).is_some_and(|s| s.hash.is_some())
    }

    /// The state of a page handed out before (callers have checked that).
    fn state(&mut self, page: PageId) -> &mut PageState {
        &mut self.seen[page as usize]
    }

    /// Takes `n` pages, each with one owner, or `None` (nothing taken) when
    /// fewer than `n` can be had. Free pages go first, then cached pages
    /// least recently used first.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<PageId>> {
        if n > self.available() {
            return None;
        }
        let mut pages = Vec::with_capacity(n);
        for _ in 0..n {
            let page = if let Some(p) = self.free.pop() {
                p
            } else if self.fresh() > 0 {
                self.seen.push(PageState::default());
                (self.seen.len() - 1) as PageId
            } else {
                let (_, p) = self.lru.pop_first().expect("available() counted it");
                let hash = self.state(p).hash.take().expect("cached pages are registered");
                self.by_hash.remove(&hash);
                p
            };
            self.state(page).refs = 1;
            pages.push(page);
        }
        Some(pages)
    }

    /// Adds an owner to each page (sharing it). Every page must be in use;
    /// nothing changes on error.
    pub fn add_ref(&mut self, pages: &[PageId]) -> Result<()> {
        self.check_used(pages)?;
        for &p in pages {
            self.state(p).refs += 1;
        }
        Ok(())
    }

    /// Drops one owner from each page; a page left without owners becomes
    /// cached (if registered) or free. Every page must be in use, counting
    /// repeats; nothing changes on error.
    pub fn release(&mut self, pages: &[PageId]) -> Result<()> {
        self.check_used(pages)?;
        let mut drops: HashMap<PageId, u32> = HashMap::new();
        for &p in pages {
            *drops.entry(p).or_default() += 1;
        }
        if let Some((p, n)) = drops.iter().find(|(p, n)| self.ref_count(**p) < **n) {
            return Err(Error::InvalidInput(format!(
                "page {p} has {} owner(s), cannot release {n}",
                self.ref_count(*p)
            )));
        }
        for &p in pages {
            let state = &mut self.seen[p as usize];
            state.refs -= 1;
            if state.refs == 0 {
                if state.hash.is_some() {
                    self.clock += 1;
                    state.last_use = self.clock;
                    self.lru.insert(self.clock, p);
                } else {
                    self.free.push(p);
                }
            }
        }
        Ok(())
    }

    /// Registers a used, full page under `hash` so later requests can share
    /// it. If another page already holds that content, the first one stays
    /// the cached copy and this page remains private.
    pub fn register(&mut self, page: PageId, hash: PrefixHash) {
        debug_assert!(self.ref_count(page) > 0, "only used pages are registered");
        if !self.is_registered(page) && !self.by_hash.contains_key(&hash) {
            self.by_hash.insert(hash, page);
            self.state(page).hash = Some(hash);
        }
    }

    /// Takes an owner on the page registered under `hash`, if there is one.
    pub fn lookup(&mut self, hash: PrefixHash) -> Option<PageId> {
        self.queries += 1;
        let page = *self.by_hash.get(&hash)?;
        self.hits += 1;
        let state = &mut self.seen[page as usize];
        if state.refs == 0 {
            self.lru.remove(&state.last_use);
        }
        state.refs += 1;
        Some(page)
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            total_pages: self.total(),
            used_pages: self.total() - self.available(),
            cached_pages: self.lru.len(),
            free_pages: self.free.len() + self.fresh(),
            available_pages: self.available(),
            prefix_queries: self.queries,
            prefix_hits: self.hits,
        }
    }

    /// Forgets every cached page (they become free); used pages are untouched.
    pub fn clear_cached(&mut self) {
        while let Some((_, p)) = self.lru.pop_first() {
            let hash = self.state(p).hash.take().expect("cached pages are registered");
            self.by_hash.remove(&hash);
            self.free.push(p);
        }
    }

    pub(crate) fn check_used(&self, pages: &[PageId]) -> Result<()> {
        match pages.iter().find(|&&p| self.ref_count(p) == 0) {
            Some(p) if (*p as usize) < self.total() => {
                Err(Error::InvalidInput(format!("page {p} is not allocated")))
            }
            Some(p) => Err(Error::InvalidInput(format!(
                "page {p} does not exist (the pool has {} pages)",
                self.total()
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_is_all_or_nothing_and_release_frees() {
        let mut pool = PagePool::new(4).unwrap();
        let a = pool.allocate(3).unwrap();
        assert_eq!(a.len(), 3);
        assert!(pool.allocate(2).is_none());
        assert_eq!(pool.stats().used_pages, 3);
        pool.add_ref(&a[..1]).unwrap();
        pool.release(&a).unwrap();
        assert_eq!(pool.stats().used_pages, 1, "the shared page keeps its second owner");
        pool.release(&a[..1]).unwrap();
        assert_eq!(
            pool.stats(),
            PoolStats { total_pages: 4, free_pages: 4, available_pages: 4, ..Default::default() }
        );
    }

    #[test]
    fn bad_ids_are_errors_and_change_nothing() {
        let mut pool = PagePool::new(2).unwrap();
        let a = pool.allocate(1).unwrap();
        assert!(pool.release(&[a[0], a[0]]).is_err(), "one owner cannot be released twice");
        assert!(pool.add_ref(&[7]).is_err());
        assert!(pool.release(&[a[0] + 1]).is_err(), "a free page has no owner");
        assert_eq!(pool.ref_count(a[0]), 1);
        assert!(PagePool::new(0).is_err());
    }

    #[test]
    fn registered_pages_are_cached_then_evicted_least_recently_used_first() {
        let mut pool = PagePool::new(3).unwrap();
        let pages = pool.allocate(3).unwrap();
        let (h0, h1) = (page_hash(None, &[1, 2]), page_hash(None, &[3, 4]));
        pool.register(pages[0], h0);
        pool.register(pages[1], h1);
        pool.release(&[pages[1]]).unwrap();
        pool.release(&[pages[0]]).unwrap();
        pool.release(&[pages[2]]).unwrap();
        let s = pool.stats();
        assert_eq!((s.cached_pages, s.free_pages, s.used_pages, s.available_pages), (2, 1, 0, 3));

        // A hit takes the page back out of the cache.
        assert_eq!(pool.lookup(h0), Some(pages[0]));
        assert_eq!(pool.ref_count(pages[0]), 1);
        // Allocation takes the free page first, then evicts the oldest cached one.
        assert_eq!(pool.allocate(2).unwrap(), vec![pages[2], pages[1]]);
        assert_eq!(pool.lookup(h1), None, "the evicted page is no longer found");
        let s = pool.stats();
        assert_eq!((s.prefix_queries, s.prefix_hits), (2, 1));
    }

    #[test]
    fn a_pool_of_every_page_id_costs_only_the_pages_handed_out() {
        // Bookkeeping sized by the pool would take ~200 GB here.
        let mut pool = PagePool::new(PageId::MAX as usize).unwrap();
        assert_eq!(pool.stats().free_pages, PageId::MAX as usize);
        let pages = pool.allocate(3).unwrap();
        assert_eq!(pages, vec![0, 1, 2]);
        assert!(pool.seen.capacity() < 1024, "grew with use only");
        pool.release(&pages[1..2]).unwrap();
        assert_eq!(pool.allocate(1).unwrap(), vec![1], "given-back pages are reused before fresh ones");
        assert_eq!(pool.ref_count(PageId::MAX - 1), 0);
        assert!(pool.release(&[PageId::MAX - 1]).is_err(), "a fresh page has no owner");
        let s = pool.stats();
        assert_eq!((s.used_pages, s.free_pages), (3, PageId::MAX as usize - 3));
    }

    #[test]
    fn chain_hashes_depend_on_the_whole_prefix() {
        let a = page_hash(None, &[1, 2]);
        assert_eq!(a, page_hash(None, &[1, 2]));
        assert_ne!(page_hash(Some(a), &[3, 4]), page_hash(None, &[3, 4]));
        assert_ne!(a, page_hash(None, &[2, 1]));
    }
}
