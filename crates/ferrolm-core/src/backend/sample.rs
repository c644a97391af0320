//! Sampling where the logits are (the `sample_rows` op): the per-row parameters a kernel
//! needs, and the host reference of the kernel's algorithm.
//!
//! The algorithm avoids sorting the vocabulary: top-k keeps the logits at
//! or above the k-th largest (found by bisection on the value), top-p keeps
//! the tokens whose weight is at or above the largest threshold that still
//! leaves `top_p` of the mass (bisection on the weight), min-p keeps weights
//! at or above `min_p` times the best; then the token is found by walking
//! the kept weights in index order until `uniform` of their mass is passed.
//! It draws from the same distribution as [`crate::sampling::Sampler`] (which sorts),
//! though not the same token for the same random number. Penalties and
//! top-N log-probabilities stay on the host.

/// What one row needs to be sampled on the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSampling {
    /// 0 picks the argmax.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    /// The row's random number in [0, 1), drawn from its request's stream.
    pub uniform: f32,
}

impl RowSampling {
    /// The parameters as the kernel reads them: 5 f32 per row.
    pub fn packed(rows: &[RowSampling]) -> Vec<f32> {
        rows.iter().flat_map(|r| [r.temperature, r.top_k as f32, r.top_p, r.min_p, r.uniform]).collect()
    }
}

/// Bisection steps for the top-k and top-p thresholds (f32 converges well before).
pub const BISECTION_STEPS: usize = 40;

/// The host reference of `sample_f32` (kernels/sampling.cu): the chosen
/// token and its log-softmax under the raw logits.
pub fn sample_row(logits: &[f32], p: &RowSampling) -> (u32, f32) {
    let (best, max) =
        logits.iter().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            },
        );
    let log_z = log_normalizer(logits, max);
    let token = if p.temperature == 0.0 { best } else { filtered_pick(logits, max, p) };
    (token as u32, logits[token] - log_z)
}

/// `ln Σ exp(logits)`, given their `max`: a token's log-probability is its
/// logit minus this. The host sampler reports log-probabilities with it too,
/// so a token picked here or there has the same one to the bit.
pub fn log_normalizer(logits: &[f32], max: f32) -> f32 {
    max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

fn filtered_pick(logits: &[f32], max: f32, p: &RowSampling) -> usize {
    let weight = |x: f32| ((x - max) / p.temperature).exp();
    // Top-k: the largest t with at least k logits >= t.
    let mut tk = f32::NEG_INFINITY;
    if p.top_k > 0 && (p.top_k as usize) < logits.len() {
        let (mut lo, mut hi) = (logits.iter().copied().fold(f32::INFINITY, f32::min), max);
        for _ in 0..BISECTION_STEPS {
            let mid = 0.5 * (lo + hi);
            if logits.iter().filter(|&&x| x >= mid).count() >= p.top_k as usize {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        tk = lo;
    }
    let in_k = |x: f32| x >= tk;
    let total: f32 = logits.iter().filter(|&&x| in_k(x)).map(|&x| weight(x)).sum();
    // Top-p: the largest u whose kept mass is still >= top_p of the total.
    let mut u = 0.0f32;
    if p.top_p < 1.0 {
        let (mut lo, mut hi) = (0.0f32, 1.0f32);
        for _ in 0..BISECTION_STEPS {
            let mid = 0.5 * (lo + hi);
            let mass: f32 =
                logits.iter().filter(|&&x| in_k(x)).map(|&x| weight(x)).filter(|&w| w >= mid).sum();
            if mass >= p.top_p * total {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        u = lo;
    }
    let floor = u.max(p.min_p);
    let kept = |x: f32| in_k(x) && weight(x) >= floor;
    let mass: f32 = logits.iter().filter(|&&x| kept(x)).map(|&x| weight(x)).sum();
    let target = p.uniform * mass;
    let mut acc = 0.0f32;
    let mut last = 0;
    for (i, &x) in logits.iter().enumerate() {
        if kept(x) {
            acc += weight(x);
            last = i;
            if acc > target {
                return i;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(temperature: f32, top_k: u32, top_p: f32, min_p: f32, uniform: f32) -> RowSampling {
        RowSampling { temperature, top_k, top_p, min_p, uniform }
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.0, 3.0, -1.0];

    #[test]
    fn greedy_and_degenerate_filters_pick_the_argmax() {
        assert_eq!(sample_row(&LOGITS, &row(0.0, 0, 1.0, 0.0, 0.9)).0, 1, "first of the tied maxima");
        for u in [0.0, 0.5, 0.99] {
            assert_eq!(sample_row(&[0.0, 5.0, 1.0], &row(1.0, 1, 1.0, 0.0, u)).0, 1);
            assert_eq!(sample_row(&[0.0, 5.0, 1.0], &row(1.0, 0, 1e-6, 0.0, u)).0, 1);
            assert_eq!(sample_row(&[0.0, 5.0, 1.0], &row(1.0, 0, 1.0, 1.0, u)).0, 1);
        }
        let (token, logprob) = sample_row(&LOGITS, &row(0.0, 0, 1.0, 0.0, 0.0));
        let log_z = LOGITS.iter().map(|x| x.exp()).sum::<f32>().ln();
        assert!((logprob - (LOGITS[token as usize] - log_z)).abs() < 1e-6);
    }

    #[test]
    fn sweeping_the_random_number_reproduces_the_filtered_distribution() {
        // Top-k 3 keeps logits 3, 3, 2: probabilities e^3, e^3, e^2 over their sum.
        let n = 10_000;
        let mut counts = [0usize; 5];
        for i in 0..n {
            let u = (i as f32 + 0.5) / n as f32;
            counts[sample_row(&LOGITS, &row(1.0, 3, 1.0, 0.0, u)).0 as usize] += 1;
        }
        let z = 2.0 * 3f32.exp() + 2f32.exp();
        for (token, expect) in [(1, 3f32.exp() / z), (3, 3f32.exp() / z), (2, 2f32.exp() / z)] {
            let got = counts[token] as f32 / n as f32;
            assert!((got - expect).abs() < 1e-3, "token {token}: {got} vs {expect}");
        }
        assert_eq!(counts[0] + counts[4], 0, "tokens outside the top 3 never come up");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // Weights at temperature 1: 1, e^-1, e^-3 (probabilities 0.705, 0.259, 0.035):
        // 0.8 of the mass needs tokens 0 and 1; 0.7 is reached by token 0 alone.
        let logits = [0.0f32, -1.0, -3.0];
        let mut seen = [false; 3];
        for i in 0..1000 {
            let u = (i as f32 + 0.5) / 1000.0;
            seen[sample_row(&logits, &row(1.0, 0, 0.8, 0.0, u)).0 as usize] = true;
        }
        assert_eq!(seen, [true, true, false]);
        assert!((0..100).all(|i| sample_row(&logits, &row(1.0, 0, 0.7, 0.0, i as f32 / 100.0)).0 == 0));
    }
}
