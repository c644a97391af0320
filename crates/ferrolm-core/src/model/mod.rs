//! The decoder shared by every family (Llama, Mistral, Qwen2, Qwen3).
//!
//! Written once against [`Backend`]; family differences are config flags
//! (q/k/v bias, per-head q/k norm, tied embeddings, sliding window). The
//! structure follows HF's `LlamaForCausalLM`; weight fields are named after
//! the checkpoint's tensors with their shapes beside them.

mod forward;
mod load;
mod params;
mod scratch;

use std::collections::HashMap;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub use self::forward::{Logits, SeqInput};
pub use self::load::{
    load, load_checkpoint, load_with_tokenizer, AnyModel, Checkpoint, LoadOptions, Tensors,
};
pub use self::params::{parameter_count, parameter_shapes, Layer, Linear, Params, Spec};
use crate::backend::{Backend, Device};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::formats::{DType, HostTensor, Quantize, StoredTensor};
use crate::kv::{KvCache, KvLayout, KvShape};
use crate::weights::{names, TensorSource};

/// A causal language model on one backend.
pub struct Transformer<B: Backend> {
    pub config: Config,
    pub backend: B,
    pub weights: Params<B::Weight>,
    /// What matrices were converted to at load (and `load_state` converts to).
    quantize: Option<Quantize>,
    /// The precision of this model's KV caches.
    kv_dtype: DType,
    /// RoPE frequencies with the config's scaling applied, `[head_dim / 2]`.
    inv_freq: Vec<f32>,
    /// Activation buffers kept from the last forward pass.
    scratch: scratch::ScratchSlot<B>,
}

impl<B: Backend> Transformer<B> {
    /// Builds the model by asking `make` for each parameter (by name and
    /// shape) as stored, then uploading it converted as `options` say.
    fn build(
        config: Config,
        backend: B,
        options: &LoadOptions,
        mut make: impl FnMut(&str, &[usize]) -> Result<StoredTensor>,
    ) -> Result<Self> {
        config.validate()?;
        options.check(backend.device(), backend.weight_dtype())?;
        let mut quantized = false;
        let weights = Params::spec(&config).try_map(|s| {
            let tensor = make(&s.name, &s.shape)?;
            let quantize = quantize_for(options.quantize, &s.name, &s.shape);
            quantized |= quantize.is_some() || tensor.is_block_quantized();
            backend.upload(tensor, quantize).map_err(|e| match e {
                Error::InvalidWeights(m) => Error::InvalidWeights(format!("`{}`: {m}", s.name)),
                e => e,
            })
        })?;
        let kv_dtype = options.kv_dtype.unwrap_or(match backend.weight_dtype() {
            Some(dtype) => dtype,
            // Quantized weights already trade exactness for speed: halve the cache too.
            None if quantized => DType::F16,
            None => DType::F32,
        });
        let inv_freq = crate::config::rope::inv_freq(&config);
        Ok(Transformer {
            config,
            backend,
            weights,
            quantize: options.quantize,
            kv_dtype,
            inv_freq,
            scratch: Default::default(),
        })
    }

    /// Loads every parameter from `source`, checking names and shapes first.
    pub fn from_source(
        config: Config,
        backend: B,
        source: &dyn TensorSource,
        options: &LoadOptions,
    ) -> Result<Self> {
        check_source(&config, source, true)?;
        Self::build(config, backend, options, |name, _| source.read_stored(name))
    }

    /// A model with freshly initialised weights (norms 1, everything else
    /// N(0, 0.02) as HF initialises Llama), reproducible from `seed`.
    pub fn random(config: Config, backend: B, seed: u64) -> Result<Self> {
        config.validate()?;
        check_parameters_fit(&config, &backend)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("valid std");
        Self::build(config, backend, &LoadOptions::default(), |name, shape| {
            let len: usize = shape.iter().product();
            let mut data = crate::error::try_zeroed(len, name)?;
            if name.ends_with("norm.weight") {
                data.fill(1.0);
            } else if !name.ends_with(".bias") {
                data.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
            }
            Ok(HostTensor::new(shape.to_vec(), data)?.into())
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
                true => {
                    let quantize = quantize_for(self.quantize, &spec.name, &spec.shape);
                    Some(self.backend.upload(source.read_stored(&spec.name)?, quantize)?)
                }
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
        let num_pages = slots.saturating_mul(self.config.max_seq_len.div_ceil(page_size));
        let mut cache = self.new_paged_cache(KvLayout { page_size, num_pages }, false)?;
        for _ in 0..slots {
            cache.add_sequence();
        }
        Ok(cache)
    }

    /// An empty page pool for this model (sequences are added by the caller).
    pub fn new_paged_cache(&self, layout: KvLayout, prefix_caching: bool) -> Result<KvCache<B>> {
        KvCache::new(&self.backend, self.kv_shape(), layout, self.config.max_seq_len, prefix_caching)
    }

    /// What this model's KV caches keep per position.
    pub fn kv_shape(&self) -> KvShape {
        KvShape { layers: self.config.num_hidden_layers, kv_dim: self.config.kv_dim(), dtype: self.kv_dtype }
    }

    pub fn device(&self) -> Device {
        self.backend.device()
    }
}

/// Refuses a model whose f32 parameters alone would not fit in the
/// backend's memory, before any is made (a config of 10**9 layers).
fn check_parameters_fit<B: Backend>(config: &Config, backend: &B) -> Result<()> {
    let count = params::parameter_count(config);
    let needed = count.saturating_mul(4);
    match backend.memory_available() {
        Some(available) if needed > available => Err(Error::DoesNotFit {
            what: format!(
                "a model of {} parameters ({} layers, hidden_size {}, vocab_size {}) in float32",
                if count == usize::MAX { "too many".to_string() } else { count.to_string() },
                config.num_hidden_layers,
                config.hidden_size,
                config.vocab_size
            ),
            needed,
            available,
            advice: "lower num_hidden_layers, hidden_size, intermediate_size or vocab_size".into(),
        }),
        _ => Ok(()),
    }
}

/// The loader's rule for which parameters `quantize` converts: FP8 only the
/// layers' linear projections (as HF's FP8 checkpoints: the embedding table
/// is read a row per token, and the head's error goes straight into the
/// logits); ggml blocks every matrix, embedding table included, so HF
/// checkpoints run on the integer kernels too.
fn quantize_for(quantize: Option<Quantize>, name: &str, shape: &[usize]) -> Option<Quantize> {
    match quantize? {
        Quantize::Fp8 => names::is_layer_linear(name).then_some(Quantize::Fp8),
        ggml @ Quantize::Ggml(_) => (shape.len() == 2).then_some(ggml),
    }
}

/// Checks a source against the model's parameter list: shapes always; with
/// `strict`, that nothing is missing; and that every name is a parameter.
fn check_source(config: &Config, source: &dyn TensorSource, strict: bool) -> Result<()> {
    let mut present = source.names();
    // Every layer has tensors of its own: with more layers than tensors,
    // one of the first `present.len() + 1` layers is incomplete. It is
    // named without listing every layer (10**9 would take a terabyte).
    if strict && config.num_hidden_layers > present.len() {
        let listed = Config { num_hidden_layers: present.len() + 1, ..config.clone() };
        let have: std::collections::HashSet<&String> = present.iter().collect();
        let missing =
            params::parameter_shapes(&listed).into_iter().map(|(name, _)| name).find(|n| !have.contains(n));
        return Err(Error::InvalidWeights(format!(
            "missing tensor `{}`: the config has num_hidden_layers = {} but the checkpoint holds only {} tensors",
            missing.unwrap_or_default(),
            config.num_hidden_layers,
            present.len()
        )));
    }
    let shapes: HashMap<String, Vec<usize>> = params::parameter_shapes(config).into_iter().collect();
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
        assert!(Transformer::from_source(config(), Cpu::default(), &state(), &LoadOptions::default()).is_ok());

        let mut s = state();
        s.remove("model.layers.0.self_attn.k_proj.bias");
        let err =
            Transformer::from_source(config(), Cpu::default(), &s, &LoadOptions::default()).err().unwrap();
        assert!(matches!(err, Error::MissingTensor(ref n) if n == "model.layers.0.self_attn.k_proj.bias"));

        let mut s = state();
        s.insert("model.norm.weight".into(), HostTensor::new(vec![3], vec![1.0; 3]).unwrap());
        let err =
            Transformer::from_source(config(), Cpu::default(), &s, &LoadOptions::default()).err().unwrap();
        assert!(matches!(err, Error::ShapeMismatch { ref name, .. } if name == "model.norm.weight"));

        let mut s = state();
        s.insert(
            "model.layers.0.self_attn.o_proj.bias".into(),
            HostTensor::new(vec![8], vec![0.0; 8]).unwrap(),
        );
        let err =
            Transformer::from_source(config(), Cpu::default(), &s, &LoadOptions::default()).err().unwrap();
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
    fn an_absurd_layer_count_is_refused_before_its_layers_are_listed() {
        let huge = Config { num_hidden_layers: 1_000_000_000, ..config() };
        let err = Transformer::from_source(huge.clone(), Cpu::default(), &state(), &LoadOptions::default())
            .err()
            .unwrap();
        assert!(matches!(err, Error::InvalidWeights(ref m) if m.contains("num_hidden_layers")), "{err}");
        let err = Transformer::random(huge, Cpu::default(), 0).err().unwrap();
        assert!(matches!(err, Error::DoesNotFit { .. }), "{err}");
        assert!(err.to_string().contains("num_hidden_layers"), "{err}");
    }

    #[test]
    fn the_parameter_count_is_the_spec_counted_one_block_at_a_time() {
        for c in [config(), Config { num_hidden_layers: 3, tie_word_embeddings: false, ..config() }] {
            let listed: usize =
                Params::spec(&c).into_vec().iter().map(|s| s.shape.iter().product::<usize>()).sum();
            assert_eq!(parameter_count(&c), listed);
        }
        assert_eq!(parameter_count(&Config { num_hidden_layers: usize::MAX, ..config() }), usize::MAX);
    }

    #[test]
    fn missing_directory_is_not_found() {
        let err = Transformer::<Cpu>::from_pretrained("/no/such/dir", None).err().unwrap();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }
}
