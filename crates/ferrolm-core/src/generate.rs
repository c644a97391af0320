//! The generation loop, written once: prefill every prompt in one ragged
//! batch, then decode all unfinished sequences together, one token per step.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::model::{Logits, SeqInput, Transformer};
use crate::sampling::{log_softmax, Sampler, SamplingParams};

/// Options of [`generate`].
#[derive(Debug, Clone, Copy)]
pub struct GenerateParams {
    /// Most new tokens per prompt.
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Fixes the random draws (sequence `i` uses stream `i` of this seed).
    pub seed: Option<u64>,
}

/// The new tokens of one prompt and, for each, its log-probability under the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
}

/// Generates a continuation of each prompt (prompt `i` in cache slot `i`).
/// A sequence stops at an end-of-sequence token (not included in its
/// output), after `max_new_tokens`, or when prompt plus output reach the
/// cache's `max_seq_len` (as Meta's `total_len`).
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    cache: &mut KvCache<B>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
) -> Result<Vec<Generation>> {
    if prompts.len() > cache.slots() {
        return Err(Error::InvalidInput(format!(
            "{} prompts but max_batch_size is {}",
            prompts.len(),
            cache.slots()
        )));
    }
    let mut samplers = (0..prompts.len())
        .map(|i| Sampler::new(params.sampling, params.seed, i as u64))
        .collect::<Result<Vec<_>>>()?;
    let eos = &model.config.eos_token_ids;
    let vocab = model.config.vocab_size;
    let mut out = vec![Generation { tokens: Vec::new(), logprobs: Vec::new() }; prompts.len()];
    let mut active: Vec<usize> = (0..prompts.len()).collect();

    // Prefill: every prompt at once.
    let batch: Vec<SeqInput> =
        prompts.iter().enumerate().map(|(i, p)| SeqInput { slot: i, start_pos: 0, tokens: p }).collect();
    let mut logits = model.forward(cache, &batch, Logits::Last)?;
    let mut last = vec![0u32; prompts.len()];

    while !active.is_empty() {
        // Sample one token for each active sequence; drop the finished ones.
        let mut still = Vec::with_capacity(active.len());
        for (row, &i) in active.iter().enumerate() {
            if params.max_new_tokens == 0 || cache.len(i) >= cache.max_seq_len() {
                continue; // no room for even one new token
            }
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let token = samplers[i].sample(row_logits);
            if eos.contains(&token) {
                continue;
            }
            out[i].tokens.push(token);
            out[i].logprobs.push(log_softmax(row_logits)[token as usize]);
            last[i] = token;
            // The token just drawn sits at position cache.len(i); a next one
            // would need position cache.len(i) + 1 to exist.
            let room = cache.len(i) + 1 < cache.max_seq_len();
            if out[i].tokens.len() < params.max_new_tokens && room {
                still.push(i);
            }
        }
        active = still;
        if active.is_empty() {
            break;
        }
        // Decode: the last token of each active sequence, one batch.
        let tokens: Vec<[u32; 1]> = active.iter().map(|&i| [last[i]]).collect();
        let batch: Vec<SeqInput> = active
            .iter()
            .zip(&tokens)
            .map(|(&i, t)| SeqInput { slot: i, start_pos: cache.len(i), tokens: t })
            .collect();
        logits = model.forward(cache, &batch, Logits::Last)?;
    }
    Ok(out)
}
