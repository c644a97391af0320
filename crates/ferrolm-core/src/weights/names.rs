//! The checkpoint's tensor names and shapes, written once.
//!
//! Names follow HF transformers (`model.layers.{i}.self_attn.q_proj.weight`,
//! ...); shapes are `[out_features, in_features]` for linear weights as HF
//! stores them. Both loading paths (files and Python state dicts) check
//! against this list, so a wrong name or shape is reported the same way.

use crate::config::Config;

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Name of a per-layer tensor, e.g. `layer(3, "self_attn.q_proj.weight")`.
pub fn layer(index: usize, suffix: &str) -> String {
    format!("model.layers.{index}.{suffix}")
}

/// Whether `name` is the weight of one of a decoder layer's linear
/// projections (q/k/v/o, gate/up/down): the matrices FP8 checkpoints store
/// in FP8. The embedding table, the LM head, norms and biases are not.
pub fn is_layer_linear(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}

/// Tensors a checkpoint may carry that are not parameters (RoPE caches of old exports).
pub fn is_ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Every parameter of the model with its shape, in a stable order.
pub fn parameter_shapes(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, inter, d) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, c.head_dim);
    let mut out = vec![(EMBED.to_string(), vec![c.vocab_size, h])];
    for i in 0..c.num_hidden_layers {
        let mut push = |suffix: &str, shape: Vec<usize>| out.push((layer(i, suffix), shape));
        push("input_layernorm.weight", vec![h]);
        for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            push(&format!("self_attn.{proj}.weight"), vec![rows, h]);
            if c.qkv_bias() {
                push(&format!("self_attn.{proj}.bias"), vec![rows]);
            }
        }
        push("self_attn.o_proj.weight", vec![h, q]);
        if c.o_bias() {
            push("self_attn.o_proj.bias", vec![h]);
        }
        if c.qk_norm() {
            push("self_attn.q_norm.weight", vec![d]);
            push("self_attn.k_norm.weight", vec![d]);
        }
        push("post_attention_layernorm.weight", vec![h]);
        for (proj, shape) in
            [("gate_proj", vec![inter, h]), ("up_proj", vec![inter, h]), ("down_proj", vec![h, inter])]
        {
            let rows = shape[0];
            push(&format!("mlp.{proj}.weight"), shape);
            if c.mlp_bias {
                push(&format!("mlp.{proj}.bias"), vec![rows]);
            }
        }
    }
    out.push((FINAL_NORM.to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push((LM_HEAD.to_string(), vec![c.vocab_size, h]));
    }
    out
}
