//! [`BlockTables`]: the KV cache's bookkeeping without its storage. The
//! page pool, one block table per live sequence (its pages and the tokens
//! they hold), prefix hashes of full pages, and the length limit. The
//! scheduler needs only this; [`super::KvCache`] adds the backend storage
//! the page ids index.

use super::layout::KvLayout;
use super::pool::{page_hash, PageId, PagePool, PoolStats, PrefixHash};
use crate::error::{Error, Result};

/// Identifies a live sequence in a [`BlockTables`] (and so in a [`super::KvCache`]).
pub type SeqId = usize;

/// One sequence's block table and the tokens whose keys/values it holds.
#[derive(Debug, Clone, Default)]
struct Sequence {
    pages: Vec<PageId>,
    tokens: Vec<u32>,
    /// Prefix hashes of the leading full pages (those already hashed).
    hashes: Vec<PrefixHash>,
}

#[derive(Debug)]
pub struct BlockTables {
    pool: PagePool,
    page_size: usize,
    seqs: Vec<Option<Sequence>>,
    max_seq_len: usize,
    prefix_caching: bool,
}

impl BlockTables {
    /// An empty pool of `layout.num_pages` pages; no sequence may grow past
    /// `max_seq_len` positions. With `prefix_caching`, full pages are
    /// registered as they fill so later sequences can share them.
    pub fn new(layout: KvLayout, max_seq_len: usize, prefix_caching: bool) -> Result<Self> {
        if layout.page_size == 0 {
            return Err(Error::InvalidInput("page_size must be at least 1".into()));
        }
        Ok(BlockTables {
            pool: PagePool::new(layout.num_pages)?,
            page_size: layout.page_size,
            seqs: Vec::new(),
            max_seq_len,
            prefix_caching,
        })
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The page pool itself, for inspection and for callers that manage
    /// pages by hand (the Python `PagedKVCache` view).
    pub fn pool(&self) -> &PagePool {
        &self.pool
    }

    /// The pool for callers that take and release pages by hand (the page
    /// views in `pages_io`); the engine's sequences never go through it.
    pub(super) fn pool_mut(&mut self) -> &mut PagePool {
        &mut self.pool
    }

    /// Pages needed to hold `positions` positions.
    pub fn pages_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.page_size)
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let seq = Some(Sequence::default());
        match self.seqs.iter().position(Option::is_none) {
            Some(id) => {
                self.seqs[id] = seq;
                id
            }
            None => {
                self.seqs.push(seq);
                self.seqs.len() - 1
            }
        }
    }

    /// Starts a sequence for `prompt`, sharing the longest run of its full
    /// pages that the prefix cache holds. At least one prompt token is left
    /// uncached (its logits are needed). Returns the sequence and how many
    /// leading prompt tokens it already holds.
    pub fn add_sequence_with_prefix(&mut self, prompt: &[u32]) -> (SeqId, usize) {
        let id = self.add_sequence();
        if !self.prefix_caching || prompt.len() < 2 {
            return (id, 0);
        }
        let ps = self.page_size;
        let mut seq = Sequence::default();
        let mut parent = None;
        for chunk in prompt[..prompt.len() - 1].chunks_exact(ps) {
            let hash = page_hash(parent, chunk);
            let Some(page) = self.pool.lookup(hash) else { break };
            seq.pages.push(page);
            seq.hashes.push(hash);
            seq.tokens.extend_from_slice(chunk);
            parent = Some(hash);
        }
        let cached = seq.tokens.len();
        self.seqs[id] = Some(seq);
        (id, cached)
    }

    /// A new sequence sharing every page of `id` (the partly filled last page
    /// too: whichever sequence writes to it first gets its own copy).
    pub fn fork(&mut self, id: SeqId) -> Result<SeqId> {
        let seq = self.seq(id)?.clone();
        self.pool.add_ref(&seq.pages)?;
        let child = self.add_sequence();
        self.seqs[child] = Some(seq);
        Ok(child)
    }

    /// Ends a sequence, returning its pages to the pool (registered full
    /// pages stay cached for reuse until the pool needs them).
    pub fn remove_sequence(&mut self, id: SeqId) -> Result<()> {
        let pages = std::mem::take(
            &mut self.seqs.get_mut(id).and_then(Option::as_mut).ok_or_else(|| unknown(id))?.pages,
        );
        self.pool.release(&pages)?;
        self.seqs[id] = None;
        Ok(())
    }

    /// Whether `id` names a live sequence.
    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.get(id).is_some_and(Option::is_some)
    }

    /// Number of live sequences.
    pub fn num_sequences(&self) -> usize {
        self.seqs.iter().flatten().count()
    }

    /// Positions cached for sequence `id` (0 for an unknown id).
    pub fn len(&self, id: SeqId) -> usize {
        self.seq(id).map_or(0, |s| s.tokens.len())
    }

    pub fn is_empty(&self, id: SeqId) -> bool {
        self.len(id) == 0
    }

    /// The tokens whose keys/values sequence `id` holds.
    pub fn tokens(&self, id: SeqId) -> &[u32] {
        self.seq(id).map_or(&[], |s| &s.tokens)
    }

    /// The block table of sequence `id`.
    pub fn pages(&self, id: SeqId) -> &[PageId] {
        self.seq(id).map_or(&[], |s| &s.pages)
    }

    /// Forgets positions `len..` of sequence `id`, releasing pages no longer needed.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let keep = self.pages_for(len);
        let ps = self.page_size;
        let seq = self.seqs.get_mut(id).and_then(Option::as_mut).ok_or_else(|| unknown(id))?;
        if len >= seq.tokens.len() {
            return Ok(());
        }
        seq.tokens.truncate(len);
        seq.hashes.truncate(len / ps);
        let dropped = seq.pages.split_off(keep.min(seq.pages.len()));
        self.pool.release(&dropped)
    }

    /// How many pages writing positions `start_pos..end` of sequence `id`
    /// would take from the pool (new pages, plus a copy of a shared page
    /// that would be written to).
    pub fn pages_needed(&self, id: SeqId, start_pos: usize, end: usize) -> usize {
        let Some(seq) = self.seq(id).ok() else { return 0 };
        let kept = self.pages_for(start_pos).min(seq.pages.len());
        let cow = usize::from(
            !start_pos.is_multiple_of(self.page_size) && kept > 0 && self.needs_copy(seq.pages[kept - 1]),
        );
        self.pages_for(end).saturating_sub(kept) + cow
    }

    /// Pages new positions can take: free, or cached and reclaimable
    /// ([`PoolStats::available_pages`]).
    pub fn available_pages(&self) -> usize {
        self.pool.available()
    }

    /// Makes positions `start_pos..end` of sequence `id` writable: drops
    /// what is cached from `start_pos` on, gives the sequence its own copy of
    /// a shared page it will write to (`copy_page(from, to)` copies the
    /// storage), and allocates the pages it lacks. Fails (changing nothing
    /// beyond the truncation) when the pool is short or the copy fails.
    pub(crate) fn make_writable(
        &mut self,
        id: SeqId,
        start_pos: usize,
        end: usize,
        copy_page: impl FnOnce(PageId, PageId) -> Result<()>,
    ) -> Result<()> {
        self.truncate(id, start_pos)?;
        let needed = self.pages_needed(id, start_pos, end);
        let Some(mut fresh) = self.pool.allocate(needed) else {
            return Err(Error::KvCacheFull { needed, available: self.pool.available() });
        };
        let last = self.pages(id).last().copied();
        if let Some(old) = last.filter(|&p| !start_pos.is_multiple_of(self.page_size) && self.needs_copy(p)) {
            let copy = fresh.pop().expect("pages_needed counted the copy");
            if let Err(e) = copy_page(old, copy) {
                fresh.push(copy);
                self.pool.release(&fresh)?;
                return Err(e);
            }
            self.pool.release(&[old])?;
            let pages = &mut self.seqs[id].as_mut().expect("checked by truncate").pages;
            *pages.last_mut().expect("it had a last page") = copy;
        }
        self.seqs[id].as_mut().expect("checked by truncate").pages.extend(fresh);
        Ok(())
    }

    /// Records that `tokens` now sit at the end of sequence `id` (after a
    /// successful forward) and registers pages that became full.
    pub(crate) fn commit(&mut self, id: SeqId, tokens: &[u32]) {
        let ps = self.page_size;
        let seq = self.seqs[id].as_mut().expect("committed sequences are live");
        seq.tokens.extend_from_slice(tokens);
        if !self.prefix_caching {
            return;
        }
        while seq.hashes.len() < seq.tokens.len() / ps {
            let i = seq.hashes.len();
            let hash = page_hash(seq.hashes.last().copied(), &seq.tokens[i * ps..(i + 1) * ps]);
            self.pool.register(seq.pages[i], hash);
            seq.hashes.push(hash);
        }
    }

    /// A shared page, or one whose content is registered, must not change in place.
    fn needs_copy(&self, page: PageId) -> bool {
        self.pool.ref_count(page) > 1 || self.pool.is_registered(page)
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence> {
        self.seqs.get(id).and_then(Option::as_ref).ok_or_else(|| unknown(id))
    }
}

fn unknown(id: SeqId) -> Error {
    Error::InvalidInput(format!("no live sequence {id} in this KV cache"))
}
