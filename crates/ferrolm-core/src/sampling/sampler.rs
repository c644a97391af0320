//! Applies a [`SamplingConfig`] to one row of logits.
//!
//! Order: the constraint's mask (structured output, disallowed tokens to
//! -inf), the logit bias, penalties over the recent window, then greedy (temperature 0) or
//! top-k -> softmax(logits / temperature) -> top-p -> min-p -> a draw from
//! the renormalised rest. Each sequence owns its sampler and RNG stream, so
//! its draws do not depend on what else shares the batch.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use super::{ConstraintMatcher, SamplingConfig};
use crate::backend::sample::log_normalizer;
use crate::backend::RowSampling;
use crate::error::{Error, Result};

/// A chosen token with its log-probability under the model (temperature 1,
/// before penalties and filters) and, if asked, the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

pub struct Sampler {
    config: SamplingConfig,
    rng: ChaCha12Rng,
    /// The compiled `config.constraint`, following this sequence's tokens.
    constraint: Option<ConstraintMatcher>,
}

impl Sampler {
    /// `stream` separates sequences that share a seed.
    pub fn new(config: SamplingConfig, stream: u64) -> Result<Sampler> {
        config.validate()?;
        let mut rng = match config.seed {
            Some(s) => ChaCha12Rng::seed_from_u64(s),
            None => ChaCha12Rng::from_os_rng(),
        };
        rng.set_stream(stream);
        Ok(Sampler { config, rng, constraint: None })
    }

    /// Holds every pick from now on to `matcher` (compiled from `config.constraint`).
    pub fn constrain(&mut self, matcher: ConstraintMatcher) {
        self.constraint = Some(matcher);
    }

    /// Whether the constraint is complete, so that only end-of-sequence may follow.
    pub fn constraint_finished(&self) -> bool {
        self.constraint.as_ref().is_some_and(ConstraintMatcher::is_finished)
    }

    /// Whether [`Sampler::sample`] is a plain argmax: greedy, no penalties,
    /// no top-N log-probabilities (so it can run where the logits are).
    pub fn is_plain_greedy(&self) -> bool {
        self.config.temperature == 0.0 && self.fits_device()
    }

    /// Whether this sampler's picks can be made on a device by
    /// [`crate::backend::sample`]: no penalties (they need the history) and
    /// no top-N log-probabilities, no constraint (its mask is computed here)
    /// and no logit bias.
    pub fn fits_device(&self) -> bool {
        !self.config.has_penalties()
            && self.config.logprobs.is_none_or(|n| n == 0)
            && self.constraint.is_none()
            && self.config.logit_bias.is_empty()
    }

    /// The parameters of the next pick on a device, drawing its random
    /// number from this sampler's stream (greedy draws none).
    pub fn device_params(&mut self) -> RowSampling {
        let c = &self.config;
        let uniform = if c.temperature == 0.0 { 0.0 } else { self.rng.random::<f64>() as f32 };
        RowSampling {
            temperature: c.temperature,
            top_k: c.top_k.min(u32::MAX as usize) as u32,
            top_p: c.top_p,
            min_p: c.min_p,
            uniform,
        }
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Picks the next token given the sequence so far (`history`, prompt
    /// included). Fails only under a constraint (one that cannot go on).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<Sampled> {
        let mut scores = logits.to_vec();
        if let Some(matcher) = &mut self.constraint {
            matcher.mask(&mut scores)?;
        }
        let c = &self.config;
        // A bias never lifts a masked (-inf) token.
        for (&token, &bias) in &c.logit_bias {
            let score = scores.get_mut(token as usize).ok_or_else(|| {
                Error::config(
                    "logit_bias",
                    format!("token id {token} is outside the {} logits", logits.len()),
                )
            })?;
            *score += bias;
        }
        if c.has_penalties() {
            apply_penalties(&mut scores, &history[history.len().saturating_sub(c.penalty_window)..], c);
        }
        let token = if c.temperature == 0.0 { argmax(&scores) } else { self.draw(&scores) };
        self.commit(token)?;

        let logp = log_softmax(logits);
        let top_logprobs = match self.config.logprobs {
            Some(n) if n > 0 => top_n(&logp, n),
            _ => Vec::new(),
        };
        Ok(Sampled { token, logprob: logp[token as usize], top_logprobs })
    }

    /// Follows a token picked elsewhere (by [`Sampler::sample`] or a caller)
    /// in the constraint; a token it does not allow is an error.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        match &mut self.constraint {
            Some(matcher) => matcher.commit(token),
            None => Ok(()),
        }
    }

    fn draw(&mut self, scores: &[f32]) -> u32 {
        let c = &self.config;
        // Candidates sorted by score, best first; top-k cuts the list.
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        let k = if c.top_k == 0 { order.len() } else { c.top_k.min(order.len()) };
        let by_score = |a: &u32, b: &u32| scores[*b as usize].total_cmp(&scores[*a as usize]);
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, by_score);
            order.truncate(k);
        }
        order.sort_by(by_score);

        let kept: Vec<f32> = order.iter().map(|&t| scores[t as usize]).collect();
        let probs = softmax(&kept, c.temperature);
        // Top-p (Meta: drop a token when the mass before it exceeds top_p),
        // then min-p relative to the most likely token; the first always stays.
        let mut n = 0;
        let mut mass = 0.0f64;
        for &p in &probs {
            // Masked (-inf) tokens have probability 0: never kept.
            if n > 0 && (mass > c.top_p as f64 || p < c.min_p * probs[0] || p == 0.0) {
                break;
            }
            mass += p as f64;
            n += 1;
        }
        let mut r = self.rng.random::<f64>() * mass;
        for (i, &p) in probs[..n].iter().enumerate() {
            r -= p as f64;
            if r < 0.0 {
                return order[i];
            }
        }
        order[n - 1]
    }
}

/// HF-style repetition penalty (divide positive, multiply negative logits)
/// and OpenAI-style frequency/presence penalties, over the window's tokens.
fn apply_penalties(scores: &mut [f32], window: &[u32], c: &SamplingConfig) {
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in window {
        if (t as usize) < scores.len() {
            *counts.entry(t).or_default() += 1;
        }
    }
    for (&t, &n) in &counts {
        let s = &mut scores[t as usize];
        *s = if *s > 0.0 { *s / c.repetition_penalty } else { *s * c.repetition_penalty };
        *s -= c.frequency_penalty * n as f32 + c.presence_penalty;
    }
}

fn top_n(logp: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..logp.len() as u32).collect();
    let by = |a: &u32, b: &u32| logp[*b as usize].total_cmp(&logp[*a as usize]);
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n - 1, by);
    idx.truncate(n);
    idx.sort_by(by);
    idx.into_iter().map(|t| (t, logp[t as usize])).collect()
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax of `logits / temperature`, in f32 like torch.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|&l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= sum);
    p
}

/// Natural-log softmax (temperature 1), for reporting log-probabilities.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = log_normalizer(logits, max);
    logits.iter().map(|&l| l - log_z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(c: SamplingConfig) -> Sampler {
        Sampler::new(c, 0).unwrap()
    }

    fn draws(c: SamplingConfig, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = sampler(c);
        (0..n).map(|_| s.sample(logits, &[]).unwrap().token).collect()
    }

    fn free(seed: u64) -> SamplingConfig {
        SamplingConfig::temperature_top_p(1.0, 1.0, 16, Some(seed))
    }

    fn logits(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn greedy_is_argmax_and_top_k_1_equals_greedy() {
        let l = [0.1, 3.0, 3.0, -1.0];
        assert_eq!(draws(SamplingConfig::greedy(4), &l, 1), vec![1]);
        assert!(draws(SamplingConfig { top_k: 1, ..free(3) }, &l, 50).iter().all(|&t| t == 1));
    }

    #[test]
    fn seeds_reproduce_and_streams_differ() {
        let l: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(draws(free(7), &l, 64), draws(free(7), &l, 64));
        assert_ne!(draws(free(7), &l, 64), draws(free(8), &l, 64));
        let mut other_stream = Sampler::new(free(7), 1).unwrap();
        let d: Vec<u32> = (0..64).map(|_| other_stream.sample(&l, &[]).unwrap().token).collect();
        assert_ne!(d, draws(free(7), &l, 64));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let l = logits(&[0.6, 0.3, 0.05, 0.05]);
        assert!(draws(SamplingConfig { top_p: 0.5, ..free(1) }, &l, 200).iter().all(|&t| t == 0));
        let d = draws(SamplingConfig { top_p: 0.8, ..free(1) }, &l, 400);
        assert!(d.iter().all(|&t| t < 2) && d.contains(&0) && d.contains(&1));
    }

    #[test]
    fn top_k_and_min_p_remove_the_tail() {
        let l = logits(&[0.4, 0.3, 0.2, 0.06, 0.04]);
        let all = draws(free(2), &l, 2000);
        assert!(all.contains(&4), "without filters the tail is drawn");
        assert!(draws(SamplingConfig { top_k: 2, ..free(2) }, &l, 2000).iter().all(|&t| t < 2));
        // min_p 0.2: threshold 0.08 removes tokens 3 and 4.
        let d = draws(SamplingConfig { min_p: 0.2, ..free(2) }, &l, 2000);
        assert!(d.iter().all(|&t| t < 3) && d.contains(&2));
    }

    #[test]
    fn penalties_lower_repeated_tokens() {
        let l = [2.0, 1.9, -1.0];
        let history = [0, 0, 0, 2];
        let pick = |c: SamplingConfig| sampler(c).sample(&l, &history).unwrap().token;
        assert_eq!(pick(SamplingConfig::greedy(4)), 0);
        assert_eq!(pick(SamplingConfig { repetition_penalty: 1.2, ..SamplingConfig::greedy(4) }), 1);
        assert_eq!(pick(SamplingConfig { frequency_penalty: 0.1, ..SamplingConfig::greedy(4) }), 1);
        assert_eq!(pick(SamplingConfig { presence_penalty: 0.2, ..SamplingConfig::greedy(4) }), 1);
        // Outside the window the history does not count.
        let c = SamplingConfig { repetition_penalty: 1.2, penalty_window: 1, ..SamplingConfig::greedy(4) };
        assert_eq!(pick(c), 0);
    }

    #[test]
    fn logprobs_are_the_models_with_top_alternatives() {
        let l = logits(&[0.5, 0.25, 0.25]);
        let mut s = sampler(SamplingConfig { logprobs: Some(2), ..SamplingConfig::greedy(4) });
        let out = s.sample(&l, &[]).unwrap();
        assert_eq!(out.token, 0);
        assert!((out.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(out.top_logprobs.len(), 2);
        assert_eq!(out.top_logprobs[0].0, 0);
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        for (c, field) in [
            (SamplingConfig { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingConfig { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingConfig { min_p: 1.5, ..Default::default() }, "min_p"),
            (SamplingConfig { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (SamplingConfig { frequency_penalty: 3.0, ..Default::default() }, "frequency_penalty"),
            (SamplingConfig { reasoning_mode: 2, ..Default::default() }, "reasoning_mode"),
            (SamplingConfig { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingConfig { logprobs: Some(100), ..Default::default() }, "logprobs"),
            (SamplingConfig { logit_bias: [(3, 101.0)].into(), ..Default::default() }, "logit_bias"),
            (SamplingConfig { logit_bias: [(3, f32::NAN)].into(), ..Default::default() }, "logit_bias"),
        ] {
            let err = Sampler::new(c, 0).err().unwrap().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn logit_bias_shifts_the_scores_before_every_filter() {
        let l = logits(&[0.7, 0.2, 0.1]);
        let biased = |bias: Vec<(u32, f32)>, c: SamplingConfig| SamplingConfig {
            logit_bias: bias.into_iter().collect(),
            ..c
        };
        // +100 on the least likely token wins greedy and survives top-k 1.
        assert_eq!(draws(biased(vec![(2, 100.0)], SamplingConfig::greedy(4)), &l, 1), vec![2]);
        assert!(draws(biased(vec![(2, 100.0)], SamplingConfig { top_k: 1, ..free(5) }), &l, 50)
            .iter()
            .all(|&t| t == 2));
        // -100 on the most likely token bans it in practice.
        assert!(draws(biased(vec![(0, -100.0)], free(6)), &l, 200).iter().all(|&t| t != 0));
        // The reported log-probability is the model's own, before the bias.
        let out = sampler(biased(vec![(2, 100.0)], SamplingConfig::greedy(4))).sample(&l, &[]).unwrap();
        assert!((out.logprob - 0.1f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn logit_bias_on_a_token_beyond_the_row_is_an_error() {
        let c = SamplingConfig { logit_bias: [(9, 1.0)].into(), ..SamplingConfig::greedy(4) };
        let err = sampler(c).sample(&[0.0, 1.0], &[]).unwrap_err().to_string();
        assert!(err.contains("logit_bias") && err.contains("token id 9"), "{err}");
    }
}
