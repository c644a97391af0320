//! Rotary position embedding frequencies, with HF's rope scaling variants
//! (`_compute_default_rope_parameters`, `..._linear_...`, `..._llama3_...`
//! in transformers' `modeling_rope_utils.py`).

use std::f64::consts::PI;

use super::{Config, RopeScaling};

/// Unscaled frequencies `theta^(-2i / head_dim)` for `i in 0..head_dim/2`.
pub fn base_inv_freq(theta: f64, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect()
}

impl RopeScaling {
    /// The scaled frequencies of unscaled `base` ones.
    pub fn apply(&self, base: &[f64]) -> Vec<f64> {
        match *self {
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_len = original_max_position_embeddings as f64;
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth =
                                (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// `inv_freq[i]` for `i in 0..head_dim/2` with the config's scaling; the
/// angle of pair `i` at position `p` is `p * inv_freq[i]`.
pub fn inv_freq(config: &Config) -> Vec<f32> {
    let base = base_inv_freq(config.rope_theta, config.head_dim);
    let scaled = match &config.rope_scaling {
        None => base,
        Some(scaling) => scaling.apply(&base),
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(scaling: serde_json::Value) -> Config {
        Config::from_json(&json!({
            "hidden_size": 64, "num_attention_heads": 2, "rope_theta": 10000.0,
            "vocab_size": 16, "num_hidden_layers": 1, "intermediate_size": 8,
            "rope_scaling": scaling,
        }))
        .unwrap()
    }

    #[test]
    fn default_frequencies() {
        let f = inv_freq(&config(serde_json::Value::Null));
        assert_eq!(f.len(), 16);
        assert_eq!(f[0], 1.0);
        assert!((f[8] - 0.01).abs() < 1e-9, "{}", f[8]); // 10000^(-16/32)
    }

    #[test]
    fn linear_divides_every_frequency() {
        let base = inv_freq(&config(serde_json::Value::Null));
        let f = inv_freq(&config(json!({"type": "linear", "factor": 4.0})));
        for (a, b) in base.iter().zip(&f) {
            assert!((a / 4.0 - b).abs() <= 1e-7 * a);
        }
    }

    #[test]
    fn llama3_keeps_high_and_scales_low_frequencies() {
        let base = inv_freq(&config(serde_json::Value::Null));
        let f = inv_freq(&config(json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})));
        // wavelength 2*pi < 64/4: unchanged; wavelength > 64: divided by 8.
        assert_eq!(f[0], base[0]);
        let last = f.len() - 1;
        assert!((f[last] - base[last] / 8.0).abs() <= 1e-7 * base[last]);
        // In between the frequencies are interpolated, strictly between the two.
        let mid = (0..f.len()).find(|&i| {
            let w = 2.0 * PI / base[i] as f64;
            w > 16.0 && w < 64.0
        });
        let i = mid.expect("a medium frequency exists for head_dim 32");
        assert!(f[i] < base[i] && f[i] > base[i] / 8.0);
    }
}
