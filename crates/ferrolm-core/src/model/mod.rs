//! The decoder shared by every family (Llama, Mistral, Qwen2, Qwen3).
//!
//! Written once against [`Backend`]; family differences are config flags
//! (q/k/v bias, per-head q/k norm, tied embeddings, sliding window). The
//! structure follows HF's `LlamaForCausalLM`; weight fields are named after
//! the checkpoint's tensors with their shapes beside them.

mod forward;
pub mod rope;

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub use self::forward::{Logits, SeqInput};
use crate::backend::{Backend, Device};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::formats::HostTensor;
use crate::kv::{KvCache, KvLayout};
use crate::weights::{names, SafetensorsDir, TensorSource};

/// A weight matrix `[out_features, in_features]` and its optional bias `[out_features]`.
pub struct Linear<B: Backend> {
    pub weight: B::Weight,
    pub bias: Option<B::Weight>,
}

impl<B: Backend> Linear<B> {
    /// `(weight, bias)`, as the backend's batched ops take them.
    pub fn parts(&self) -> (&B::Weight, Option<&B::Weight>) {
        (&self.weight, self.bias.as_ref())
    }
}

/// One decoder block.
pub struct Layer<B: Backend> {
    pub input_layernorm: B::Weight,          // [hidden]
    pub q_proj: Linear<B>,                   // [heads * head_dim, hidden]
    pub k_proj: Linear<B>,                   // [kv_heads * head_dim, hidden]
    pub v_proj: Linear<B>,                   // [kv_heads * head_dim, hidden]
    pub o_proj: Linear<B>,                   // [hidden, heads * head_dim]
    pub q_norm: Option<B::Weight>,           // [head_dim] (Qwen3)
    pub k_norm: Option<B::Weight>,           // [head_dim] (Qwen3)
    pub post_attention_layernorm: B::Weight, // [hidden]
    pub gate_proj: Linear<B>,                // [intermediate, hidden]
    pub up_proj: Linear<B>,                  // [intermediate, hidden]
    pub down_proj: Linear<B>,                // [hidden, intermediate]
}

/// A causal language model on one backend.
pub struct Transformer<B: Backend> {
    pub config: Config,
    pub backend: B,
    pub embed_tokens: B::Weight, // [vocab, hidden]
    pub layers: Vec<Layer<B>>,
    pub norm: B::Weight, // [hidden]
    /// `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<B::Weight>,
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
        let shapes: HashMap<String, Vec<usize>> = names::parameter_shapes(&config).into_iter().collect();
        // `None` for parameters this config does not have (biases, q/k norms, a tied head).
        let mut opt = |name: String| -> Result<Option<B::Weight>> {
            shapes.get(&name).map(|shape| make(&backend, &name, shape)).transpose()
        };
        // Required parameters are always in `shapes`.
        let req = |w: Option<B::Weight>| w.expect("parameter_shapes lists every required parameter");
        let embed_tokens = req(opt(names::EMBED.into())?);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = |suffix: &str| names::layer(i, suffix);
            let mut linear = |path: &str| -> Result<Linear<B>> {
                Ok(Linear {
                    weight: req(opt(l(&format!("{path}.weight")))?),
                    bias: opt(l(&format!("{path}.bias")))?,
                })
            };
            let (q_proj, k_proj, v_proj, o_proj) = (
                linear("self_attn.q_proj")?,
                linear("self_attn.k_proj")?,
                linear("self_attn.v_proj")?,
                linear("self_attn.o_proj")?,
            );
            let (gate_proj, up_proj, down_proj) =
                (linear("mlp.gate_proj")?, linear("mlp.up_proj")?, linear("mlp.down_proj")?);
            layers.push(Layer {
                input_layernorm: req(opt(l("input_layernorm.weight"))?),
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                q_norm: opt(l("self_attn.q_norm.weight"))?,
                k_norm: opt(l("self_attn.k_norm.weight"))?,
                post_attention_layernorm: req(opt(l("post_attention_layernorm.weight"))?),
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = req(opt(names::FINAL_NORM.into())?);
        let lm_head = opt(names::LM_HEAD.into())?;
        let inv_freq = rope::inv_freq(&config);
        Ok(Transformer {
            config,
            backend,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            scratch: Default::default(),
        })
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
        for (name, _) in names::parameter_shapes(&self.config) {
            if present.contains(&name) {
                uploads.push(self.backend.upload_param(&name, source.read_stored(&name)?)?);
            }
        }
        let mut uploads = uploads.into_iter();
        for (name, slot) in self.parameters_mut() {
            if present.contains(&name) {
                *slot = uploads.next().expect("one upload per present parameter");
            }
        }
        Ok(())
    }

    /// Every parameter with its checkpoint name, in `names::parameter_shapes` order.
    fn parameters_mut(&mut self) -> Vec<(String, &mut B::Weight)> {
        let mut out: Vec<(String, &mut B::Weight)> = vec![(names::EMBED.into(), &mut self.embed_tokens)];
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let l = |suffix: &str| names::layer(i, suffix);
            out.push((l("input_layernorm.weight"), &mut layer.input_layernorm));
            for (path, lin) in [
                ("self_attn.q_proj", &mut layer.q_proj),
                ("self_attn.k_proj", &mut layer.k_proj),
                ("self_attn.v_proj", &mut layer.v_proj),
            ] {
                out.push((l(&format!("{path}.weight")), &mut lin.weight));
                if let Some(b) = lin.bias.as_mut() {
                    out.push((l(&format!("{path}.bias")), b));
                }
            }
            out.push((l("self_attn.o_proj.weight"), &mut layer.o_proj.weight));
            if let Some(b) = layer.o_proj.bias.as_mut() {
                out.push((l("self_attn.o_proj.bias"), b));
            }
            if let Some(w) = layer.q_norm.as_mut() {
                out.push((l("self_attn.q_norm.weight"), w));
            }
            if let Some(w) = layer.k_norm.as_mut() {
                out.push((l("self_attn.k_norm.weight"), w));
            }
            out.push((l("post_attention_layernorm.weight"), &mut layer.post_attention_layernorm));
            for (path, lin) in [
                ("mlp.gate_proj", &mut layer.gate_proj),
                ("mlp.up_proj", &mut layer.up_proj),
                ("mlp.down_proj", &mut layer.down_proj),
            ] {
                out.push((l(&format!("{path}.weight")), &mut lin.weight));
                if let Some(b) = lin.bias.as_mut() {
                    out.push((l(&format!("{path}.bias")), b));
                }
            }
        }
        out.push((names::FINAL_NORM.into(), &mut self.norm));
        if let Some(w) = self.lm_head.as_mut() {
            out.push((names::LM_HEAD.into(), w));
        }
        out
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
    let shapes: HashMap<String, Vec<usize>> = names::parameter_shapes(config).into_iter().collect();
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
    let mut expected: Vec<_> = names::parameter_shapes(config);
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

impl<B: Backend + Default> Transformer<B> {
    /// Loads an HF model directory: `config.json` plus safetensors weights;
    /// or a GGUF file (a path ending in `.gguf`, see [`Transformer::from_gguf`]).
    /// `max_seq_len` (default: the config's `max_position_embeddings`) sets the
    /// cache capacity per sequence.
    pub fn from_pretrained(dir: impl AsRef<Path>, max_seq_len: Option<usize>) -> Result<Self> {
        Self::from_pretrained_on(dir, max_seq_len, B::default())
    }
}

impl<B: Backend> Transformer<B> {
    /// [`Transformer::from_pretrained`] onto a given backend (e.g. a GPU).
    pub fn from_pretrained_on(dir: impl AsRef<Path>, max_seq_len: Option<usize>, backend: B) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && !dir.is_dir() {
            return Self::from_gguf_on(dir, max_seq_len, backend);
        }
        if !dir.exists() {
            return Err(Error::NotFound { what: "model directory", path: dir.to_path_buf() });
        }
        if !dir.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is not a directory; pass the model directory holding config.json, or a .gguf file",
                dir.display()
            )));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::NotFound { what: "config.json", path: config_path });
        }
        let mut config = Config::from_file(&config_path)?;
        if let Some(n) = max_seq_len {
            config.max_seq_len = n;
        }
        let source = SafetensorsDir::open(dir)?;
        Self::from_source(config, backend, &source)
    }
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
        names::parameter_shapes(&config())
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
