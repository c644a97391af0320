//! Perplexity of a model on a token sequence, the usual measure of how well
//! it predicts text (and of how much a faster numeric path costs in accuracy).
//!
//! The tokens are cut into consecutive, non-overlapping windows of `context`
//! tokens, as llama.cpp's `llama-perplexity` and HF's fixed-length recipe do
//! (without a stride). Each window starts at position 0 with an empty cache;
//! every token after the first of a window is scored by its negative
//! log-likelihood under the logits of the position before it:
//! `NLL = -log_softmax(logits[t - 1])[tokens[t]]`, computed in f64.
//! Perplexity is `exp(mean NLL)` over all scored tokens.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::{KvCache, KvLayout, SeqId};
use crate::model::{Logits, SeqInput, Transformer};

/// Most positions one forward pass runs: bounds the logits buffer
/// (`CHUNK x vocab` f32: 25 MB for a 49k vocabulary) however long the window.
pub const CHUNK: usize = 128;

/// What [`perplexity`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// Tokens scored: every token of a window but its first.
    pub tokens_scored: usize,
    /// Windows run (a last partial window counts if it has at least 2 tokens).
    pub windows: usize,
}

/// Perplexity of `model` on `tokens` in windows of `context` tokens.
///
/// `progress(done, total)` is called after each forward pass with the number
/// of tokens scored so far and the number that will be scored in all.
/// Errors (`InvalidInput`) for fewer than 2 tokens, `context` < 2 or above
/// the model's `max_seq_len`, and token ids outside the vocabulary.
pub fn perplexity<B: Backend>(
    model: &Transformer<B>,
    tokens: &[u32],
    context: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    perplexity_in_chunks(model, tokens, context, CHUNK, progress)
}

fn perplexity_in_chunks<B: Backend>(
    model: &Transformer<B>,
    tokens: &[u32],
    context: usize,
    chunk: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    check(model, tokens, context)?;
    let windows: Vec<&[u32]> = tokens.chunks(context).filter(|w| w.len() >= 2).collect();
    let total: usize = windows.iter().map(|w| w.len() - 1).sum();

    // One sequence, rewritten from position 0 by each window.
    let page_size = KvLayout::DEFAULT_PAGE_SIZE;
    let mut cache =
        model.new_paged_cache(KvLayout { page_size, num_pages: context.div_ceil(page_size) }, false)?;
    let seq = cache.add_sequence();

    let (mut nll_sum, mut done) = (0.0f64, 0usize);
    for window in &windows {
        // Inputs are every token but the last; row i predicts window[i + 1].
        let (inputs, targets) = (&window[..window.len() - 1], &window[1..]);
        for start in (0..inputs.len()).step_by(chunk) {
            let end = (start + chunk).min(inputs.len());
            nll_sum += chunk_nll(model, &mut cache, seq, start, &inputs[start..end], &targets[start..end])?;
            done += end - start;
            progress(done, total);
        }
    }
    let mean_nll = nll_sum / total as f64;
    Ok(Perplexity { perplexity: mean_nll.exp(), mean_nll, tokens_scored: total, windows: windows.len() })
}

fn check<B: Backend>(model: &Transformer<B>, tokens: &[u32], context: usize) -> Result<()> {
    if tokens.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "perplexity needs at least 2 tokens (got {}); pass a longer text",
            tokens.len()
        )));
    }
    if context < 2 {
        return Err(Error::InvalidInput(format!(
            "context must be at least 2 tokens (got {context}); 512 is usual"
        )));
    }
    let max = model.config.max_seq_len;
    if context > max {
        return Err(Error::InvalidInput(format!(
            "context {context} is longer than the model's max_seq_len {max}; pass context <= {max}"
        )));
    }
    let vocab = model.config.vocab_size;
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidInput(format!(
            "token id {t} is outside the vocabulary (vocab_size={vocab}); tokenize with the model's tokenizer"
        )));
    }
    Ok(())
}

/// Runs `inputs` at positions `start..` of `seq` and returns the summed NLL
/// of `targets` (one per input) under their rows of logits.
fn chunk_nll<B: Backend>(
    model: &Transformer<B>,
    cache: &mut KvCache<B>,
    seq: SeqId,
    start: usize,
    inputs: &[u32],
    targets: &[u32],
) -> Result<f64> {
    let logits = model.forward(cache, &[SeqInput { seq, start_pos: start, tokens: inputs }], Logits::All)?;
    let vocab = model.config.vocab_size;
    Ok(logits.chunks_exact(vocab).zip(targets).map(|(row, &t)| nll(row, t as usize)).sum())
}

/// `-log_softmax(row)[target]` in f64, with the maximum subtracted first.
fn nll(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::config::Config;

    fn model() -> Transformer<Cpu> {
        let config = Config::from_json(&json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32,
            "vocab_size": 50, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64,
        }))
        .unwrap();
        Transformer::random(config, Cpu::default(), 7).unwrap()
    }

    fn tokens(n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 17 + 3) % 50).collect()
    }

    /// The definition, written out: each window in one forward pass from an
    /// empty cache, log-softmax of every row but the last.
    fn by_hand(model: &Transformer<Cpu>, tokens: &[u32], context: usize) -> (f64, usize) {
        let vocab = model.config.vocab_size;
        let (mut sum, mut n) = (0.0f64, 0);
        for w in tokens.chunks(context).filter(|w| w.len() >= 2) {
            let mut cache = model.new_cache(1).unwrap();
            let logits = model
                .forward(&mut cache, &[SeqInput { seq: 0, start_pos: 0, tokens: w }], Logits::All)
                .unwrap();
            for t in 1..w.len() {
                let row: Vec<f64> = logits[(t - 1) * vocab..t * vocab].iter().map(|&x| x as f64).collect();
                let log_z = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                sum += log_z - row[w[t] as usize];
                n += 1;
            }
        }
        ((sum / n as f64).exp(), n)
    }

    #[test]
    fn equals_the_definition() {
        let model = model();
        let toks = tokens(23);
        let got = perplexity(&model, &toks, 8, |_, _| {}).unwrap();
        let (ppl, n) = by_hand(&model, &toks, 8);
        assert_eq!(got.tokens_scored, n);
        assert!((got.perplexity - ppl).abs() < 1e-9 * ppl, "{} vs {ppl}", got.perplexity);
        assert!((got.mean_nll.exp() - got.perplexity).abs() < 1e-12 * ppl);
        // A random model is close to uniform over its 50 tokens.
        assert!(got.perplexity > 10.0 && got.perplexity < 200.0, "{}", got.perplexity);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let model = model();
        let toks = tokens(40);
        let whole = perplexity_in_chunks(&model, &toks, 20, 128, |_, _| {}).unwrap();
        let mut calls = Vec::new();
        let chunked = perplexity_in_chunks(&model, &toks, 20, 3, |d, t| calls.push((d, t))).unwrap();
        assert!((whole.perplexity - chunked.perplexity).abs() < 1e-5 * whole.perplexity);
        assert_eq!(whole.tokens_scored, chunked.tokens_scored);
        // 19 inputs per window in chunks of 3: 7 passes per window.
        assert_eq!(calls.len(), 14);
        assert_eq!(calls.last(), Some(&(38, 38)));
        assert!(calls.windows(2).all(|p| p[0].0 < p[1].0));
    }

    #[test]
    fn counts_windows_and_scored_tokens() {
        let model = model();
        let count = |n, context| {
            let p = perplexity(&model, &tokens(n), context, |_, _| {}).unwrap();
            (p.windows, p.tokens_scored)
        };
        assert_eq!(count(24, 8), (3, 21)); // three full windows
        assert_eq!(count(26, 8), (4, 22)); // a partial window of 2 is kept
        assert_eq!(count(25, 8), (3, 21)); // a partial window of 1 is dropped
        assert_eq!(count(5, 8), (1, 4)); // shorter than one window
        assert_eq!(count(2, 2), (1, 1));
        assert_eq!(count(64, 64), (1, 63)); // context = max_seq_len
    }

    #[test]
    fn bad_input_says_what_to_do() {
        let model = model();
        let err = |toks: &[u32], context| perplexity(&model, toks, context, |_, _| {}).unwrap_err();
        for (e, needle) in [
            (err(&[1], 8), "at least 2 tokens"),
            (err(&[], 8), "at least 2 tokens"),
            (err(&[1, 2, 3], 1), "context must be at least 2"),
            (err(&[1, 2, 3], 0), "context must be at least 2"),
            (err(&[1, 2, 3], 65), "max_seq_len 64"),
            (err(&[1, 50, 3], 8), "token id 50"),
        ] {
            assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }
}
