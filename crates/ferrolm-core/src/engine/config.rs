//! [`EngineConfig`]: the knobs of the scheduler and the size of the page pool.

use crate::error::{Error, Result};
use crate::kv::{KvLayout, KvShape};

/// How an [`super::Engine`] schedules work and sizes its KV pool.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Positions per KV page.
    pub page_size: usize,
    /// Pool size in pages; when `None`, taken from `kv_cache_bytes`.
    pub num_pages: Option<usize>,
    /// Pool size in bytes (used when `num_pages` is `None`), counted in the
    /// pool's own precision (2 bytes a value in an f16/bf16 pool, 4 in an
    /// f32 one). The pool never gets more pages than `max_num_seqs`
    /// full-length sequences could use.
    pub kv_cache_bytes: usize,
    /// Most requests running (holding pages) at once.
    pub max_num_seqs: usize,
    /// Most tokens in one forward pass: decode tokens first, then prompt
    /// chunks fill what is left (chunked prefill).
    pub max_batch_tokens: usize,
    /// Share full KV pages between requests with the same token prefix.
    pub prefix_caching: bool,
    /// Most requests queued and not yet admitted; past it a client's
    /// request is refused at once with `Error::Overloaded` (`None`: no
    /// limit). A preempted request, already admitted once, does not count.
    pub max_waiting: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            page_size: KvLayout::DEFAULT_PAGE_SIZE,
            num_pages: None,
            kv_cache_bytes: 2 << 30,
            max_num_seqs: 64,
            max_batch_tokens: 512,
            prefix_caching: true,
            max_waiting: None,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("page_size", self.page_size),
            ("max_num_seqs", self.max_num_seqs),
            ("max_batch_tokens", self.max_batch_tokens),
            ("num_pages", self.num_pages.unwrap_or(1)),
            ("kv_cache_bytes", self.kv_cache_bytes),
            ("max_waiting", self.max_waiting.unwrap_or(1)),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((field, _)) => Err(Error::config(*field, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// The pool geometry for a model keeping `shape` per position, with
    /// sequences of up to `max_seq_len` positions: `kv_cache_bytes` counts
    /// the bytes of the pool's own dtype.
    pub fn layout(&self, shape: KvShape, max_seq_len: usize) -> KvLayout {
        let page_bytes = shape.page_bytes(self.page_size);
        let most_useful = self.max_num_seqs.saturating_mul(max_seq_len.div_ceil(self.page_size));
        let num_pages =
            self.num_pages.unwrap_or_else(|| (self.kv_cache_bytes / page_bytes).clamp(1, most_useful));
        KvLayout { page_size: self.page_size, num_pages }
    }
}
