//! The prefix-cache view MILI calls `RadixAttentionCache`: a prompt becomes a
//! sequence whose leading full pages come from the prefix cache when an
//! earlier prompt with the same tokens left them there, and whose other
//! pages are newly allocated. The same calls the scheduler makes
//! ([`KvCache::add_sequence_with_prefix`], `prepare_write`, `commit`), so
//! the pages shared here are the pages the engine would share.

use super::cache::{KvCache, SeqId};
use super::pool::PageId;
use crate::backend::{Backend, KvPart};
use crate::error::{Error, Result};

/// Where a prompt's positions went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptPages {
    pub seq: SeqId,
    /// Leading pages found in the prefix cache (now shared).
    pub shared: Vec<PageId>,
    /// Pages taken from the pool for the rest of the prompt.
    pub allocated: Vec<PageId>,
    /// Prompt tokens the shared pages already hold.
    pub cached_tokens: usize,
}

impl<B: Backend> KvCache<B> {
    /// Starts a sequence holding `prompt`: shares the cached prefix pages,
    /// allocates pages for the rest and records the tokens, registering the
    /// pages that are full so later prompts can share them. The pages'
    /// keys and values are the caller's to write. On error (the pool is
    /// short: [`Error::KvCacheFull`]) no sequence is left and no page leaks.
    pub fn add_prompt(&mut self, backend: &B, prompt: &[u32]) -> Result<PromptPages> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("prompt_tokens is empty; pass at least one token".into()));
        }
        if prompt.len() > self.max_seq_len() {
            return Err(Error::ContextOverflow { needed: prompt.len(), max_seq_len: self.max_seq_len() });
        }
        let (seq, cached_tokens) = self.add_sequence_with_prefix(prompt);
        let shared = self.pages(seq).to_vec();
        if let Err(e) = self.prepare_write(backend, seq, cached_tokens, prompt.len()) {
            self.remove_sequence(seq)?;
            return Err(e);
        }
        self.commit(seq, &prompt[cached_tokens..]);
        let allocated = self.pages(seq)[shared.len()..].to_vec();
        Ok(PromptPages { seq, shared, allocated, cached_tokens })
    }

    /// `part` of every position sequence `seq` holds, `[len, kv_heads, head_dim]`.
    pub fn read_sequence(&self, backend: &B, seq: SeqId, part: KvPart) -> Result<Vec<f32>> {
        if !self.contains(seq) {
            return Err(Error::InvalidInput(format!("no live sequence {seq} in this KV cache")));
        }
        self.gather(backend, self.pages(seq), self.len(seq), part)
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::{Cpu, CpuOptions};
    use crate::backend::KvKind;
    use crate::formats::DType;
    use crate::kv::{KvLayout, KvShape};

    use super::*;

    fn cache(num_pages: usize) -> (Cpu, KvCache<Cpu>) {
        let options = CpuOptions { threads: Some(1), ..Default::default() };
        let cpu = Cpu::new(options).unwrap();
        let layout = KvLayout { page_size: 4, num_pages };
        (
            cpu.clone(),
            KvCache::new(
                &cpu,
                KvShape { layers: 1, kv_dim: 2, dtype: DType::F32 },
                layout,
                4 * num_pages,
                true,
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_repeated_prompt_shares_its_full_prefix_pages() {
        let (cpu, mut cache) = cache(8);
        let prompt: Vec<u32> = (0..10).collect(); // two full pages and two tokens
        let first = cache.add_prompt(&cpu, &prompt).unwrap();
        assert_eq!((first.shared.len(), first.allocated.len(), first.cached_tokens), (0, 3, 0));
        let again = cache.add_prompt(&cpu, &prompt).unwrap();
        assert_eq!(again.shared, first.allocated[..2]);
        assert_eq!(again.cached_tokens, 8);
        assert_eq!(again.allocated.len(), 1);
        assert_eq!(cache.pages(again.seq)[..2], first.allocated[..2]);
        assert_eq!(cache.tokens(again.seq), prompt);

        // A different first page shares nothing; the chain hash covers the prefix.
        let other: Vec<u32> = (100..110).collect();
        assert!(cache.add_prompt(&cpu, &other).unwrap().shared.is_empty());

        // Once both owners are gone the full pages stay cached and still hit.
        cache.remove_sequence(first.seq).unwrap();
        cache.remove_sequence(again.seq).unwrap();
        assert_eq!(cache.stats().cached_pages, 2);
        assert_eq!(cache.add_prompt(&cpu, &prompt).unwrap().shared, first.allocated[..2]);
    }

    #[test]
    fn a_prompt_the_pool_cannot_hold_leaks_nothing() {
        let (cpu, mut cache) = cache(3);
        let prompt: Vec<u32> = (0..8).collect();
        let first = cache.add_prompt(&cpu, &[prompt.as_slice(), &[1]].concat()).unwrap();
        assert_eq!(cache.available_pages(), 0);
        let before = (cache.stats().used_pages, cache.num_sequences());
        // Shares both full pages (hits), then needs one more page than there are.
        let err = cache.add_prompt(&cpu, &[prompt.as_slice(), &[2, 3]].concat()).unwrap_err();
        assert!(matches!(err, Error::KvCacheFull { needed: 1, available: 0 }), "{err}");
        assert_eq!((cache.stats().used_pages, cache.num_sequences()), before);
        assert_eq!(cache.pool().ref_count(first.allocated[0]), 1, "the shared page's extra owner is gone");
        assert!(matches!(cache.add_prompt(&cpu, &[]), Err(Error::InvalidInput(_))));
        assert!(matches!(cache.add_prompt(&cpu, &[0; 13]), Err(Error::ContextOverflow { .. })));
    }

    #[test]
    fn a_sequence_reads_back_what_was_written_to_its_pages() {
        let (cpu, mut cache) = cache(4);
        let p = cache.add_prompt(&cpu, &[5, 6, 7, 8, 9, 10]).unwrap();
        let part = KvPart { layer: 0, kind: KvKind::Key, kv_heads: 1, head_dim: 2 };
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let pages = cache.pages(p.seq).to_vec();
        cache.write(&cpu, &pages, part, &data).unwrap();
        assert_eq!(cache.read_sequence(&cpu, p.seq, part).unwrap(), data);
        assert!(cache.read_sequence(&cpu, 7, part).is_err());
    }
}
