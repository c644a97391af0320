//! The decode loop, written once. [`Decoding`] prefills a set of sequences
//! (each in its own cache slot, possibly continuing a cached prefix) and
//! then advances them together, one token per [`Decoding::step`]: forward
//! the tokens drawn last step as one batch, then draw the next ones. Batch
//! generation ([`generate`]), sessions and streaming all drive this loop.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::model::{Logits, SeqInput, Transformer};
use crate::sampling::{log_softmax, Sampled, Sampler, SamplingConfig};

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token, a stop string, or the caller's `finish`.
    Stop,
    /// `max_tokens` reached, or the cache has no room for another position.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One sequence to generate for.
pub struct Request {
    /// Cache slot holding the sequence.
    pub slot: usize,
    /// The whole token sequence so far (prompt, or conversation).
    pub tokens: Vec<u32>,
    /// Positions `0..cached` of `tokens` are already in the slot's cache
    /// (a reused prefix); only the rest is prefilled.
    pub cached: usize,
    pub sampler: Sampler,
}

/// What one step produced for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// Index of the sequence in the request list.
    pub seq: usize,
    /// The drawn token, or `None` when the sequence ended without one
    /// (end-of-sequence or stop token, or no room left).
    pub sampled: Option<Sampled>,
    pub finish: Option<FinishReason>,
}

struct Sequence {
    slot: usize,
    tokens: Vec<u32>,
    sampler: Sampler,
    generated: usize,
    /// A drawn token not yet run through the model.
    pending: Option<u32>,
    finished: bool,
}

/// Sequences being decoded together.
pub struct Decoding {
    seqs: Vec<Sequence>,
    /// Tokens that end a sequence: the model's end-of-sequence tokens.
    eos: Vec<u32>,
    /// Logits rows of the sequences listed in `rows`, from the last forward.
    logits: Vec<f32>,
    rows: Vec<usize>,
    vocab: usize,
    prompt_logprobs: Option<Vec<Vec<f32>>>,
}

impl Decoding {
    /// Prefills every request (one ragged batch). With `prompt_logprobs`,
    /// also records the log-probability of each prompt token given the ones
    /// before it (requests must then start from an empty cache).
    pub fn start<B: Backend>(
        model: &Transformer<B>,
        cache: &mut KvCache<B>,
        requests: Vec<Request>,
        eos: &[u32],
        prompt_logprobs: bool,
    ) -> Result<Decoding> {
        if requests.is_empty() {
            return Err(Error::InvalidInput("nothing to generate: pass at least one prompt".into()));
        }
        let vocab = model.config.vocab_size;
        for r in &requests {
            if r.tokens.is_empty() {
                return Err(Error::InvalidInput("empty prompt: pass at least one token".into()));
            }
            if r.cached >= r.tokens.len() || (prompt_logprobs && r.cached > 0) {
                return Err(Error::InvalidInput("a request must leave at least one token to prefill".into()));
            }
        }
        let batch: Vec<SeqInput> = requests
            .iter()
            .map(|r| SeqInput { slot: r.slot, start_pos: r.cached, tokens: &r.tokens[r.cached..] })
            .collect();
        let which = if prompt_logprobs { Logits::All } else { Logits::Last };
        let mut logits = model.forward(cache, &batch, which)?;

        let mut recorded = None;
        if prompt_logprobs {
            // Row i predicts token i + 1; keep each sequence's last row for sampling.
            let mut per_seq = Vec::new();
            let mut last_rows = Vec::new();
            let mut row = 0;
            for r in &requests {
                let mut lp = vec![0.0f32];
                for (i, &next) in r.tokens.iter().enumerate().skip(1) {
                    lp.push(log_softmax(&logits[(row + i - 1) * vocab..(row + i) * vocab])[next as usize]);
                }
                per_seq.push(lp);
                row += r.tokens.len();
                last_rows.extend_from_slice(&logits[(row - 1) * vocab..row * vocab]);
            }
            logits = last_rows;
            recorded = Some(per_seq);
        }

        let seqs: Vec<Sequence> = requests
            .into_iter()
            .map(|r| Sequence {
                slot: r.slot,
                tokens: r.tokens,
                sampler: r.sampler,
                generated: 0,
                pending: None,
                finished: false,
            })
            .collect();
        let rows = (0..seqs.len()).collect();
        Ok(Decoding { seqs, eos: eos.to_vec(), logits, rows, vocab, prompt_logprobs: recorded })
    }

    /// Runs pending tokens through the model, then draws one token for every
    /// unfinished sequence. Returns one event per sequence that was active.
    pub fn step<B: Backend>(
        &mut self,
        model: &Transformer<B>,
        cache: &mut KvCache<B>,
    ) -> Result<Vec<TokenEvent>> {
        let pending: Vec<(usize, [u32; 1])> = self
            .seqs
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.finished)
            .filter_map(|(i, s)| s.pending.map(|t| (i, [t])))
            .collect();
        if !pending.is_empty() {
            let batch: Vec<SeqInput> = pending
                .iter()
                .map(|(i, t)| {
                    let s = &self.seqs[*i];
                    SeqInput { slot: s.slot, start_pos: s.tokens.len() - 1, tokens: t }
                })
                .collect();
            self.logits = model.forward(cache, &batch, Logits::Last)?;
            self.rows = pending.iter().map(|(i, _)| *i).collect();
            for (i, _) in &pending {
                self.seqs[*i].pending = None;
            }
        }

        let mut events = Vec::new();
        let max_seq_len = cache.max_seq_len();
        for (row, &i) in self.rows.iter().enumerate() {
            let s = &mut self.seqs[i];
            if s.finished {
                continue;
            }
            let config = s.sampler.config();
            // The next token would sit at position tokens.len().
            if s.generated >= config.max_tokens || s.tokens.len() >= max_seq_len {
                s.finished = true;
                events.push(TokenEvent { seq: i, sampled: None, finish: Some(FinishReason::Length) });
                continue;
            }
            let row_logits = &self.logits[row * self.vocab..(row + 1) * self.vocab];
            let sampled = s.sampler.sample(row_logits, &s.tokens);
            if self.eos.contains(&sampled.token) || s.sampler.config().stop_token_ids.contains(&sampled.token)
            {
                s.finished = true;
                events.push(TokenEvent { seq: i, sampled: None, finish: Some(FinishReason::Stop) });
                continue;
            }
            s.tokens.push(sampled.token);
            s.generated += 1;
            let config = s.sampler.config();
            let finish = (s.generated >= config.max_tokens || s.tokens.len() >= max_seq_len)
                .then_some(FinishReason::Length);
            s.finished = finish.is_some();
            s.pending = (!s.finished).then_some(sampled.token);
            events.push(TokenEvent { seq: i, sampled: Some(sampled), finish });
        }
        self.rows.retain(|&i| !self.seqs[i].finished && self.seqs[i].pending.is_none());
        Ok(events)
    }

    /// Ends sequence `seq` now (a stop string was seen, or the caller went away).
    pub fn finish(&mut self, seq: usize) {
        self.seqs[seq].finished = true;
        self.seqs[seq].pending = None;
    }

    pub fn is_finished(&self) -> bool {
        self.seqs.iter().all(|s| s.finished)
    }

    /// The full token sequence of `seq` (prompt and output so far).
    pub fn tokens(&self, seq: usize) -> &[u32] {
        &self.seqs[seq].tokens
    }

    /// Log-probabilities of the prompt tokens (0 for the first), when asked for.
    pub fn prompt_logprobs(&self, seq: usize) -> Option<&[f32]> {
        self.prompt_logprobs.as_ref().map(|p| p[seq].as_slice())
    }
}

/// The new tokens of one prompt and their log-probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// Log-probabilities of the prompt tokens, when asked for (0 for the first).
    pub prompt_logprobs: Option<Vec<f32>>,
}

/// Generates a continuation of each prompt (prompt `i` in cache slot `i`,
/// sampler stream `i`). A sequence stops at an end-of-sequence or stop token
/// (not included in its output), after `max_tokens`, or when prompt plus
/// output reach the cache's `max_seq_len` (as Meta's `total_len`).
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    cache: &mut KvCache<B>,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    prompt_logprobs: bool,
) -> Result<Vec<Generation>> {
    if prompts.len() > cache.slots() {
        return Err(Error::InvalidInput(format!(
            "{} prompts but max_batch_size is {}",
            prompts.len(),
            cache.slots()
        )));
    }
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(Request {
                slot: i,
                tokens: p.clone(),
                cached: 0,
                sampler: Sampler::new(config.clone(), i as u64)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: FinishReason::Length,
            prompt_logprobs: None,
        })
        .collect();
    let mut decoding = Decoding::start(model, cache, requests, &model.config.eos_token_ids, prompt_logprobs)?;
    while !decoding.is_finished() {
        for e in decoding.step(model, cache)? {
            let g = &mut out[e.seq];
            if let Some(s) = e.sampled {
                g.tokens.push(s.token);
                g.logprobs.push(s.logprob);
            }
            if let Some(f) = e.finish {
                g.finish = f;
            }
        }
    }
    for (i, g) in out.iter_mut().enumerate() {
        g.prompt_logprobs = decoding.prompt_logprobs(i).map(<[f32]>::to_vec);
    }
    Ok(out)
}
