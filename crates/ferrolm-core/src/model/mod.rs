//! The decoder shared by every family (Llama, Mistral, Qwen2, Qwen3).
//!
//! Written once against [`Backend`]; family differences are config flags
//! (q/k/v bias, per-head q/k norm, tied embeddings, sliding window). The
//! structure follows HF's `LlamaForCausalLM`; weight fields are named after
//! the checkpoint's tensors with their shapes beside them.

mod forward;
mod load;
mod params;

use std::collections::HashMap;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub use self::forward::{Logits, SeqInput};
pub use self::load::{Checkpoint, Tensors};
pub use self::params::{parameter_count, parameter_shapes, Layer, Linear, Params, Spec};
use crate::backend::{Backend, Device};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::formats::HostTensor;
use crate::kv::{KvCache, KvLayout};
use crate::weights::{names, TensorSource};

/// A causal language model on one backend.
pub struct Transformer<B: Backend> {
    pub config: Config,
    pub backend: B,
    pub weights: Params<B::Weight>,
    /// RoPE frequencies with the config's scaling applied, `[head_dim / 2]`.
    inv_freq: Vec<f32>,
    /// Activation buffers kept from the last forward pass (see `forward.rs`).
    scratch: std::sync::Mutex<Option<forward::Scratch<B>>>,
}

impl<B: Backend> Transformer<B> {
    /// Builds the model by asking `make` for each parameter by name and shape.
    fn build(
        config: Config,
        backend: B,
        mut make: impl FnMut(&B, &str, &[usize]) -> Result<B::Weight>,
    ) -> Result<Self> {
        config.validate()?;
        let weights = Params::spec(&config).try_map(|s| make(&backend, &s.name, &s.shape))?;
        let inv_freq = crate::config::rope::inv_freq(&config);
        Ok(Transformer { config, backend, weights, inv_freq, scratch: Default::default() })
    }

    /// Loads every parameter from `source`, checking names and shapes first.
    pub fn from_source(config: Config, backend: B, source: &dyn TensorSource) -> Result<Self> {
        check_source(&config, source, true)?;
        Self::build(config, backend, |b, name, _| b.upload_param(name, source.read_stored(name)?))
    }

    /// A model with freshly initialised weights (norms 1, everything else
    /// N(0, 0.02) as HF initialises Llama), reproducible from `seed`.
    pub fn random(config: Config, backend: B, seed: u64) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("valid std");
        Self::build(config, backend, |b, name, shape| {
            let len: usize = shape.iter().product();
            let mut data = crate::error::try_zeroed(len, name)?;
            if name.ends_with("norm.weight") {
                data.fill(1.0);
            } else if !name.ends_with(".bias") {
                data.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
            }
            b.upload_param(name, HostTensor::new(shape.to_vec(), data)?.into())
        })
    }

    /// Replaces the parameters `source` holds. With `strict`, every parameter
    /// must be present; names that are not parameters are always refused.
    /// Everything is checked before anything changes, so a failed load
    /// leaves the model as it was.
    pub fn load_state(&mut self, source: &dyn TensorSource, strict: bool) -> Result<()> {
        check_source(&self.config, source, strict)?;
        let present: std::collections::HashSet<String> = source.names().into_iter().collect();
        let mut uploads = Vec::new();
        for spec in Params::spec(&self.config).into_vec() {
            let upload = match present.contains(&spec.name) {
                true => Some(self.backend.upload_param(&spec.name, source.read_stored(&spec.name)?)?),
                false => None,
            };
            uploads.push(upload);
        }
        for (slot, upload) in self.weights.as_mut().into_vec().into_iter().zip(uploads) {
            if let Some(w) = upload {
                *slot = w;
            }
        }
        Ok(())
    }

    /// A KV cache with room for `slots` sequences of up to
    /// `config.max_seq_len` positions each, holding `slots` empty sequences
    /// (ids `0..slots`, Meta's `max_batch_size` rows).
    pub fn new_cache(&self, slots: usize) -> Result<KvCache<B>> {
        if slots == 0 {
            return Err(Error::InvalidInput(
                "a KV cache needs at least one slot (max_batch_size >= 1)".into(),
            ));
        }
        let page_size = KvLayout::DEFAULT_PAGE_SIZE;
        let num_pages = slots * self.config.max_seq_len.div_ceil(page_size);
        let mut cache = self.new_paged_cache(KvLayout { page_size, num_pages }, false)?;
        for _ in 0..slots {
            cache.add_sequence();
        }
        Ok(cache)
    }

    /// An empty page pool for this model (sequences are added by the caller).
    pub fn new_paged_cache(&self, layout: KvLayout, prefix_caching: bool) -> Result<KvCache<B>> {
        let c = &self.config;
        KvCache::new(&self.backend, c.num_hidden_layers, c.kv_dim(), layout, c.max_seq_len, prefix_caching)
    }

    pub fn device(&self) -> Device {
        self.backend.device()
    }
}

/// Checks a source against the model's parameter list: shapes always; with
/// `strict`, that nothing is missing; and that every name is a parameter.
fn check_source(config: &Config, source: &dyn TensorSource, strict: bool) -> Result<()> {
    let shapes: HashMap<String, Vec<usize>> = params::parameter_shapes(config).into_iter().collect();
    let mut present = source.names();
    present.sort();
    for name in &present {
        // Checkpoints of tied models may still carry the head; it must at
        // least have the embedding's shape, and is then ignored.
        if config.tie_word_embeddings && name == names::LM_HEAD {
            let (got, expected) = (source.shape(name)?, vec![config.vocab_size, config.hidden_size]);
            if got != expected {
                return Err(Error::ShapeMismatch { name: name.clone(), expected, got });
            }
        } else if !shapes.contains_key(name) && !names::is_ignorable(name) {
            return Err(Error::UnexpectedTensor(name.clone()));
        }
    }
    let mut expected: Vec<_> = params::parameter_shapes(config);
    expected.retain(|(name, _)| present.binary_search(name).is_ok() || strict);
    for (name, shape) in expected {
        if present.binary_search(&name).is_err() {
            return Err(Error::MissingTensor(name));
        }
        let got = source.shape(&name)?;
        if got != shape {
            return Err(Error::ShapeMismatch { name, expected: shape, got });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backend::cpu::Cpu;

    fn config() -> Config {
        Config::from_json(&json!({
            "architectures": ["Qwen2ForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
            "vocab_size": 10, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "tie_word_embeddings": true,
        }))
        .unwrap()
    }

    fn state() -> HashMap<String, HostTensor> {
        params::parameter_shapes(&config())
            .into_iter()
            .map(|(n, s)| {
                let len = s.iter().product();
                (n, HostTensor::new(s, vec![0.1; len]).unwrap())
            })
            .collect()
    }

    #[test]
    fn loads_a_complete_state_and_names_what_is_wrong() {
        assert!(Transformer::from_source(config(), Cpu::default(), &state()).is_ok());

        let mut s = state();
        s.remove("model.layers.0.self_attn.k_proj.bias");
        let err = Transformer::from_source(config(), Cpu::default(), &s).err().unwrap();
        assert!(matches!(err, Error::MissingTensor(ref n) if n == "model.layers.0.self_attn.k_proj.bias"));

        let mut s = state();
        s.insert("model.norm.weight".into(), HostTensor::new(vec![3], vec![1.0; 3]).unwrap());
        let err = Transformer::from_source(config(), Cpu::default(), &s).err().unwrap();
        assert!(matches!(err, Error::ShapeMismatch { ref name, .. } if name == "model.norm.weight"));

        let mut s = state();
        s.insert(
            "model.layers.0.self_attn.o_proj.bias".into(),
            HostTensor::new(vec![8], vec![0.0; 8]).unwrap(),
        );
        let err = Transformer::from_source(config(), Cpu::default(), &s).err().unwrap();
        assert!(matches!(err, Error::UnexpectedTensor(_)), "Qwen2 has no o_proj bias: {err}");
    }

    #[test]
    fn partial_load_changes_only_given_tensors_and_failed_load_changes_nothing() {
        let mut model = Transformer::random(config(), Cpu::default(), 0).unwrap();
        let mut cache = model.new_cache(1).unwrap();
        let input = [SeqInput { seq: 0, start_pos: 0, tokens: &[1, 2, 3] }];
        let before = model.forward(&mut cache, &input, Logits::All).unwrap();

        let mut bad = HashMap::new();
        bad.insert("model.norm.weight".to_string(), HostTensor::new(vec![8], vec![2.0; 8]).unwrap());
        bad.insert("lm_head.weight".to_string(), HostTensor::new(vec![1], vec![0.0]).unwrap());
        assert!(model.load_state(&bad, false).is_err());
        assert_eq!(model.forward(&mut cache, &input, Logits::All).unwrap(), before);

        bad.remove("lm_head.weight");
        model.load_state(&bad, false).unwrap();
        assert_ne!(model.forward(&mut cache, &input, Logits::All).unwrap(), before);
    }

    #[test]
    fn missing_directory_is_not_found() {
        let err = Transformer::<Cpu>::from_pretrained("/no/such/dir", None).err().unwrap();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }
}
