//! HF transformers' tensor naming (`model.layers.{i}.self_attn.q_proj.weight`,
//! ...), which every checkpoint reader maps its names to. Which parameters
//! a model has, and their shapes, is `model::Params::spec`.

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
