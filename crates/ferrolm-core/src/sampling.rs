//! Choosing the next token from logits: greedy, or temperature with nucleus
//! (top-p) filtering as Meta's `sample_top_p`, from a seeded RNG.
//!
//! Each sequence owns its sampler, so a sequence's draws do not depend on
//! what else shares its batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::error::{Error, Result};

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p`.
    pub top_p: f32,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0 }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidInput(format!("temperature must be >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidInput(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

/// Draws tokens for one sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha12Rng,
}

impl Sampler {
    /// `seed` fixes the draws; `stream` separates sequences sharing a seed.
    /// Without a seed the RNG is seeded from the operating system.
    pub fn new(params: SamplingParams, seed: Option<u64>, stream: u64) -> Result<Sampler> {
        params.validate()?;
        let mut rng = match seed {
            Some(s) => ChaCha12Rng::seed_from_u64(s),
            None => ChaCha12Rng::from_os_rng(),
        };
        rng.set_stream(stream);
        Ok(Sampler { params, rng })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = softmax(logits, self.params.temperature);
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
        // Keep tokens while the mass before them is within top_p (Meta: mask
        // where cumsum - p > top_p); the first token is always kept.
        let mut kept = 0;
        let mut mass = 0.0f64;
        for &t in &order {
            let p = probs[t as usize] as f64;
            if kept > 0 && mass > self.params.top_p as f64 {
                break;
            }
            mass += p;
            kept += 1;
        }
        let mut r = self.rng.random::<f64>() * mass;
        for &t in &order[..kept] {
            r -= probs[t as usize] as f64;
            if r < 0.0 {
                return t;
            }
        }
        order[kept - 1]
    }
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

/// Natural-log softmax of `logits` (temperature 1), for reporting log-probabilities.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    logits.iter().map(|&l| l - max - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy(), Some(0), 0).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeds_reproduce_and_streams_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { temperature: 1.0, top_p: 1.0 };
        let draw = |seed, stream| {
            let mut s = Sampler::new(p, Some(seed), stream).unwrap();
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 0), draw(7, 0));
        assert_ne!(draw(7, 0), draw(7, 1));
        assert_ne!(draw(7, 0), draw(8, 0));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~ [0.6, 0.3, 0.05, 0.05]: top_p 0.5 keeps only token 0
        // (0.6 reaches it), top_p 0.8 keeps tokens 0 and 1.
        let logits: Vec<f32> = [0.6f32, 0.3, 0.05, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.5 }, Some(1), 0).unwrap();
        assert!((0..200).all(|_| s.sample(&logits) == 0));
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.8 }, Some(1), 0).unwrap();
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t < 2));
        assert!(draws.contains(&0) && draws.contains(&1));
    }

    #[test]
    fn rejects_bad_params() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, top_p: 0.9 }, None, 0).is_err());
        assert!(Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.0 }, None, 0).is_err());
        assert!(Sampler::new(SamplingParams { temperature: f32::NAN, top_p: 0.5 }, None, 0).is_err());
    }
}
