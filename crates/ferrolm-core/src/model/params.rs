//! The model's parameters, listed once.
//!
//! [`Params::spec`] names every parameter a config has and gives its shape,
//! in the model's own structure ([`Params`] of [`Layer`]s of [`Linear`]s).
//! Loading, random initialisation, partial state loads and the flat
//! parameter list all map over that one spec, so they cannot disagree.
//! Names follow HF transformers ([`crate::weights::names`]); shapes are
//! `[out_features, in_features]` for linear weights, as HF stores them.

use crate::config::Config;
use crate::error::Result;
use crate::weights::names;

/// A parameter's checkpoint name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// A weight matrix `[out_features, in_features]` and its optional bias `[out_features]`.
#[derive(Debug, Clone)]
pub struct Linear<W> {
    pub weight: W,
    pub bias: Option<W>,
}

impl<W> Linear<W> {
    /// `(weight, bias)`, as the backend's batched ops take them.
    pub fn parts(&self) -> (&W, Option<&W>) {
        (&self.weight, self.bias.as_ref())
    }
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Layer<W> {
    pub input_layernorm: W,          // [hidden]
    pub q_proj: Linear<W>,           // [heads * head_dim, hidden]
    pub k_proj: Linear<W>,           // [kv_heads * head_dim, hidden]
    pub v_proj: Linear<W>,           // [kv_heads * head_dim, hidden]
    pub o_proj: Linear<W>,           // [hidden, heads * head_dim]
    pub q_norm: Option<W>,           // [head_dim] (Qwen3)
    pub k_norm: Option<W>,           // [head_dim] (Qwen3)
    pub post_attention_layernorm: W, // [hidden]
    pub gate_proj: Linear<W>,        // [intermediate, hidden]
    pub up_proj: Linear<W>,          // [intermediate, hidden]
    pub down_proj: Linear<W>,        // [hidden, intermediate]
}

/// Every parameter of a causal language model.
#[derive(Debug, Clone)]
pub struct Params<W> {
    pub embed_tokens: W, // [vocab, hidden]
    pub layers: Vec<Layer<W>>,
    pub norm: W, // [hidden]
    /// `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<W>,
}

impl Params<Spec> {
    /// The parameters of `c`: which exist (biases, q/k norms and an untied
    /// head depend on the family's flags), their names and shapes.
    pub fn spec(c: &Config) -> Params<Spec> {
        let h = c.hidden_size;
        let spec = |name: &str, shape: Vec<usize>| Spec { name: name.into(), shape };
        Params {
            embed_tokens: spec(names::EMBED, vec![c.vocab_size, h]),
            layers: (0..c.num_hidden_layers).map(|i| Layer::spec(c, i)).collect(),
            norm: spec(names::FINAL_NORM, vec![h]),
            lm_head: (!c.tie_word_embeddings).then(|| spec(names::LM_HEAD, vec![c.vocab_size, h])),
        }
    }
}

impl Layer<Spec> {
    /// The parameters of decoder block `i` of `c`.
    pub fn spec(c: &Config, i: usize) -> Layer<Spec> {
        let (h, q, kv, inter, d) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, c.head_dim);
        let p = |suffix: &str, shape: Vec<usize>| Spec { name: names::layer(i, suffix), shape };
        let linear = |path: &str, rows: usize, cols: usize, bias: bool| Linear {
            weight: p(&format!("{path}.weight"), vec![rows, cols]),
            bias: bias.then(|| p(&format!("{path}.bias"), vec![rows])),
        };
        Layer {
            input_layernorm: p("input_layernorm.weight", vec![h]),
            q_proj: linear("self_attn.q_proj", q, h, c.qkv_bias()),
            k_proj: linear("self_attn.k_proj", kv, h, c.qkv_bias()),
            v_proj: linear("self_attn.v_proj", kv, h, c.qkv_bias()),
            o_proj: linear("self_attn.o_proj", h, q, c.o_bias()),
            q_norm: c.qk_norm().then(|| p("self_attn.q_norm.weight", vec![d])),
            k_norm: c.qk_norm().then(|| p("self_attn.k_norm.weight", vec![d])),
            post_attention_layernorm: p("post_attention_layernorm.weight", vec![h]),
            gate_proj: linear("mlp.gate_proj", inter, h, c.mlp_bias),
            up_proj: linear("mlp.up_proj", inter, h, c.mlp_bias),
            down_proj: linear("mlp.down_proj", h, inter, c.mlp_bias),
        }
    }

    /// The parameters of one block, in checkpoint order.
    fn into_vec(self) -> Vec<Spec> {
        let mut out = Vec::new();
        let _ = self.try_map(&mut |s| {
            out.push(s);
            Ok(())
        });
        out
    }
}

impl<W> Linear<W> {
    fn try_map<U>(self, f: &mut impl FnMut(W) -> Result<U>) -> Result<Linear<U>> {
        Ok(Linear { weight: f(self.weight)?, bias: self.bias.map(&mut *f).transpose()? })
    }

    fn as_mut(&mut self) -> Linear<&mut W> {
        Linear { weight: &mut self.weight, bias: self.bias.as_mut() }
    }
}

impl<W> Layer<W> {
    fn try_map<U>(self, f: &mut impl FnMut(W) -> Result<U>) -> Result<Layer<U>> {
        // Fields are evaluated in the order written: checkpoint order.
        Ok(Layer {
            input_layernorm: f(self.input_layernorm)?,
            q_proj: self.q_proj.try_map(f)?,
            k_proj: self.k_proj.try_map(f)?,
            v_proj: self.v_proj.try_map(f)?,
            o_proj: self.o_proj.try_map(f)?,
            q_norm: self.q_norm.map(&mut *f).transpose()?,
            k_norm: self.k_norm.map(&mut *f).transpose()?,
            post_attention_layernorm: f(self.post_attention_layernorm)?,
            gate_proj: self.gate_proj.try_map(f)?,
            up_proj: self.up_proj.try_map(f)?,
            down_proj: self.down_proj.try_map(f)?,
        })
    }

    fn as_mut(&mut self) -> Layer<&mut W> {
        Layer {
            input_layernorm: &mut self.input_layernorm,
            q_proj: self.q_proj.as_mut(),
            k_proj: self.k_proj.as_mut(),
            v_proj: self.v_proj.as_mut(),
            o_proj: self.o_proj.as_mut(),
            q_norm: self.q_norm.as_mut(),
            k_norm: self.k_norm.as_mut(),
            post_attention_layernorm: &mut self.post_attention_layernorm,
            gate_proj: self.gate_proj.as_mut(),
            up_proj: self.up_proj.as_mut(),
            down_proj: self.down_proj.as_mut(),
        }
    }
}

impl<W> Params<W> {
    /// The same structure with each parameter replaced by `f(parameter)`,
    /// called in checkpoint order; stops at the first error.
    pub fn try_map<U>(self, mut f: impl FnMut(W) -> Result<U>) -> Result<Params<U>> {
        Ok(Params {
            embed_tokens: f(self.embed_tokens)?,
            layers: self.layers.into_iter().map(|l| l.try_map(&mut f)).collect::<Result<_>>()?,
            norm: f(self.norm)?,
            lm_head: self.lm_head.map(&mut f).transpose()?,
        })
    }

    pub fn as_mut(&mut self) -> Params<&mut W> {
        Params {
            embed_tokens: &mut self.embed_tokens,
            layers: self.layers.iter_mut().map(Layer::as_mut).collect(),
            norm: &mut self.norm,
            lm_head: self.lm_head.as_mut(),
        }
    }

    /// Every parameter, in checkpoint order.
    pub fn into_vec(self) -> Vec<W> {
        let mut out = Vec::new();
        let _ = self.try_map(|w| {
            out.push(w);
            Ok(())
        });
        out
    }
}

/// Every parameter of `c` with its shape, in checkpoint order.
pub fn parameter_shapes(c: &Config) -> Vec<(String, Vec<usize>)> {
    Params::spec(c).into_vec().into_iter().map(|s| (s.name, s.shape)).collect()
}

/// Number of parameters (weights and biases), counting tied embeddings
/// once; `usize::MAX` when past the address space. Counted from one block's
/// spec times the number of blocks, so an absurd `num_hidden_layers` is
/// measured without listing its blocks.
pub fn parameter_count(c: &Config) -> usize {
    let elements = |specs: Vec<Spec>| specs.iter().map(|s| s.shape.iter().product::<usize>()).sum::<usize>();
    (elements(Layer::spec(c, 0).into_vec()).checked_mul(c.num_hidden_layers))
        .and_then(|layers| layers.checked_add(elements(outside_layers(c))))
        .unwrap_or(usize::MAX)
}

/// The parameters outside the decoder blocks (embedding, final norm, head).
fn outside_layers(c: &Config) -> Vec<Spec> {
    Params::spec(&Config { num_hidden_layers: 0, ..c.clone() }).into_vec()
}
