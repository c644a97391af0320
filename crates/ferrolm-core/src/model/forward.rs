//! One forward pass over a ragged batch: for each sequence its new tokens,
//! their positions and its KV-cache sequence (whose block table says where
//! their keys and values go). Matches HF's `LlamaForCausalLM`
//! (Qwen2/Qwen3/Mistral differences enabled by config flags).

use super::scratch::Scratch;
use super::{Layer, Transformer};
use crate::backend::RowSampling;
use crate::backend::{AttentionShape, Backend, SeqSpan};
use crate::error::{Error, Result};
use crate::kv::{KvCache, SeqId};

/// The new tokens of one sequence: `tokens` go at positions
/// `start_pos..start_pos + tokens.len()` of cache sequence `seq` (whatever it
/// held from `start_pos` on is replaced).
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub seq: SeqId,
    pub start_pos: usize,
    pub tokens: &'a [u32],
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[total tokens, vocab]`, sequences in order.
    All,
    /// The last position of each sequence: `[sequences, vocab]`.
    Last,
    /// The listed rows of the batch (row `r` is the `r`-th token overall),
    /// in the order given: `[rows.len(), vocab]`.
    Rows(Vec<usize>),
}

impl<B: Backend> Transformer<B> {
    /// Runs the model over `seqs`, writing their keys/values into `cache`,
    /// and returns f32 logits (see [`Logits`]). Inputs are checked before any
    /// work; on error each sequence keeps at most its positions before `start_pos`.
    pub fn forward(&self, cache: &mut KvCache<B>, seqs: &[SeqInput], which: Logits) -> Result<Vec<f32>> {
        self.forward_then(cache, seqs, which, |logits| self.backend.to_host(logits))
    }

    /// [`Transformer::forward`] that picks a token for each selected row by
    /// its [`RowSampling`] where the logits are (on a GPU only token ids and
    /// their log-probabilities come back).
    pub fn forward_sampled(
        &self,
        cache: &mut KvCache<B>,
        seqs: &[SeqInput],
        which: Logits,
        rows: &[RowSampling],
    ) -> Result<Vec<(u32, f32)>> {
        self.forward_then(cache, seqs, which, |logits| {
            self.backend.sample_rows(logits, self.config.vocab_size, rows)
        })
    }

    /// Whether sampled requests are worth picking on the backend (a GPU).
    pub fn samples_on_device(&self) -> bool {
        self.backend.samples_on_device()
    }

    /// Runs the batch and hands the logits buffer to `finish`.
    fn forward_then<T: Send>(
        &self,
        cache: &mut KvCache<B>,
        seqs: &[SeqInput],
        which: Logits,
        finish: impl FnOnce(&B::Buf) -> Result<T> + Send,
    ) -> Result<T> {
        self.check_batch(cache, seqs, &which)?;
        let result = self.prepare(cache, seqs).and_then(|()| {
            // Block tables are copied out so the storage can be borrowed mutably.
            let tables: Vec<Vec<u32>> = seqs.iter().map(|s| cache.pages(s.seq).to_vec()).collect();
            let mut row = 0;
            let spans: Vec<SeqSpan> = seqs
                .iter()
                .zip(&tables)
                .map(|(s, pages)| {
                    let span = SeqSpan { pages, start_pos: s.start_pos, row, len: s.tokens.len() };
                    row += s.tokens.len();
                    span
                })
                .collect();
            let b = &self.backend;
            b.run(|| self.run(&mut *cache, seqs, &spans, which).and_then(|logits| finish(&logits)))
        });
        for s in seqs {
            match &result {
                Ok(_) => cache.commit(s.seq, s.tokens),
                Err(_) => cache.truncate(s.seq, s.start_pos)?,
            }
        }
        result
    }

    /// Makes room for every sequence's new positions (all or nothing).
    fn prepare(&self, cache: &mut KvCache<B>, seqs: &[SeqInput]) -> Result<()> {
        // Rewriting from start_pos first gives back the pages past it.
        for s in seqs {
            cache.truncate(s.seq, s.start_pos)?;
        }
        let needed: usize =
            seqs.iter().map(|s| cache.pages_needed(s.seq, s.start_pos, s.start_pos + s.tokens.len())).sum();
        if needed > cache.available_pages() {
            return Err(Error::KvCacheFull { needed, available: cache.available_pages() });
        }
        for s in seqs {
            cache.prepare_write(&self.backend, s.seq, s.start_pos, s.start_pos + s.tokens.len())?;
        }
        Ok(())
    }

    /// Meta's `Transformer.forward(tokens, start_pos)`: a rectangular batch
    /// (row `i` in cache sequence `i`, all of one length, all continuing from
    /// `start_pos`) returning logits `[batch, keep, vocab]` flattened: the
    /// last `keep` positions of each sequence (HF's `logits_to_keep`; 0 or
    /// the length: every position).
    pub fn forward_rectangular(
        &self,
        cache: &mut KvCache<B>,
        sequences: &[Vec<u32>],
        start_pos: usize,
        keep: usize,
    ) -> Result<Vec<f32>> {
        let len = sequences.first().map_or(0, Vec::len);
        if let Some(i) = sequences.iter().position(|s| s.len() != len) {
            return Err(Error::InvalidInput(format!(
                "ragged batch: sequence {i} has {} tokens but sequence 0 has {len}; \
                 pass sequences of equal length",
                sequences[i].len()
            )));
        }
        if sequences.len() > cache.num_sequences() {
            return Err(Error::InvalidInput(format!(
                "batch has {} sequences but the cache was made for max_batch_size={}; raise max_batch_size",
                sequences.len(),
                cache.num_sequences()
            )));
        }
        let batch: Vec<SeqInput> =
            sequences.iter().enumerate().map(|(seq, tokens)| SeqInput { seq, start_pos, tokens }).collect();
        let which = if keep == 0 || keep >= len {
            Logits::All
        } else {
            Logits::Rows((0..sequences.len()).flat_map(|b| b * len + len - keep..(b + 1) * len).collect())
        };
        self.forward(cache, &batch, which)
    }

    fn check_batch(&self, cache: &KvCache<B>, seqs: &[SeqInput], which: &Logits) -> Result<()> {
        if seqs.is_empty() {
            return Err(Error::InvalidInput("empty batch: pass at least one sequence".into()));
        }
        let vocab = self.config.vocab_size;
        let total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if let Logits::Rows(rows) = which {
            if let Some(r) = rows.iter().find(|&&r| r >= total) {
                return Err(Error::InvalidInput(format!(
                    "logits row {r} is outside the batch of {total} tokens"
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(Error::InvalidInput(format!("sequence {i} is empty: pass at least one token")));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InvalidInput(format!(
                    "token id {t} in sequence {i} is outside the vocabulary (vocab_size={vocab})"
                )));
            }
            if !cache.contains(s.seq) {
                return Err(Error::InvalidInput(format!(
                    "sequence {i} names cache sequence {}, which does not exist",
                    s.seq
                )));
            }
            if !seen.insert(s.seq) {
                return Err(Error::InvalidInput(format!(
                    "cache sequence {} is used twice in one batch",
                    s.seq
                )));
            }
            let cached = cache.len(s.seq);
            if s.start_pos > cached {
                return Err(Error::InvalidInput(format!(
                    "start_pos {} is past the {cached} positions cached for sequence {i}; \
                     continue from start_pos <= {cached}",
                    s.start_pos
                )));
            }
            let needed = s.start_pos + s.tokens.len();
            if needed > cache.max_seq_len() {
                return Err(Error::ContextOverflow { needed, max_seq_len: cache.max_seq_len() });
            }
        }
        Ok(())
    }

    fn run(
        &self,
        cache: &mut KvCache<B>,
        seqs: &[SeqInput],
        spans: &[SeqSpan],
        which: Logits,
    ) -> Result<B::Buf> {
        let c = &self.config;
        let b = &self.backend;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let positions: Vec<u32> =
            spans.iter().flat_map(|s| (s.start_pos..s.start_pos + s.len).map(|p| p as u32)).collect();
        let rows = ids.len();
        let which_all = which == Logits::All;

        let mut x = b.zeros(rows * c.hidden_size)?;
        b.embedding(&self.weights.embed_tokens, &ids, &mut x)?;
        let mut scratch = self.scratch.take(b, c, rows)?;
        for (i, layer) in self.weights.layers.iter().enumerate() {
            self.block(cache, i, layer, spans, &positions, &mut x, &mut scratch)?;
        }
        self.scratch.keep(scratch);

        // Only the rows whose logits are wanted go through the (large) head.
        let wanted: Vec<usize> = match which {
            Logits::All => Vec::new(),
            Logits::Last => spans.iter().map(|s| s.row + s.len - 1).collect(),
            Logits::Rows(r) => r,
        };
        let (x, out_rows) =
            if which_all { (x, rows) } else { (b.select_rows(&x, c.hidden_size, &wanted)?, wanted.len()) };
        let mut h = b.zeros(out_rows * c.hidden_size)?;
        b.rms_norm(&x, &self.weights.norm, c.rms_norm_eps as f32, c.hidden_size, &mut h)?;
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed_tokens);
        let mut logits = b.zeros(out_rows * c.vocab_size)?;
        b.linear(&h, head, None, &mut logits)?;
        Ok(logits)
    }

    /// One decoder block, updating the residual stream `x` in place.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        cache: &mut KvCache<B>,
        index: usize,
        layer: &Layer<B::Weight>,
        spans: &[SeqSpan],
        positions: &[u32],
        x: &mut B::Buf,
        s: &mut Scratch<B>,
    ) -> Result<()> {
        let c = &self.config;
        let b = &self.backend;
        let eps = c.rms_norm_eps as f32;
        // Attention: the norm and the three projections that read it.
        b.norm_linears(
            x,
            &layer.input_layernorm,
            eps,
            c.hidden_size,
            &[layer.q_proj.parts(), layer.k_proj.parts(), layer.v_proj.parts()],
            &mut [&mut s.q, &mut s.k, &mut s.v],
        )?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            b.head_norm_rope(&mut s.q, qn, eps, positions, c.head_dim, &self.inv_freq)?;
            b.head_norm_rope(&mut s.k, kn, eps, positions, c.head_dim, &self.inv_freq)?;
        } else {
            b.rope(&mut s.q, positions, c.head_dim, &self.inv_freq)?;
            b.rope(&mut s.k, positions, c.head_dim, &self.inv_freq)?;
        }
        let shape = AttentionShape {
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            sliding_window: c.sliding_window,
        };
        b.attention(&mut cache.store, index, spans, shape, &s.q, &s.k, &s.v, &mut s.attn)?;
        b.linear(&s.attn, &layer.o_proj.weight, layer.o_proj.bias.as_ref(), &mut s.hidden)?;

        // Gated MLP, its norm fused with the attention residual.
        b.add_rms_norm(x, &s.hidden, &layer.post_attention_layernorm, eps, c.hidden_size, &mut s.normed)?;
        b.swiglu(&s.normed, layer.gate_proj.parts(), layer.up_proj.parts(), &mut s.act)?;
        b.linear(&s.act, &layer.down_proj.weight, layer.down_proj.bias.as_ref(), &mut s.hidden)?;
        b.add(x, &s.hidden)
    }
}
