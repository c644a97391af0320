//! GGUF tensor names -> HF names, and the llama q/k row permutation.
//!
//! llama.cpp names tensors `token_embd.weight`, `blk.{i}.attn_q.weight`, ...
//! (gguf-py's `TENSOR_NAMES`); ferrolm uses HF's names
//! (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`,
//! see [`crate::weights::names`]).
//!
//! For the `llama` architecture, llama.cpp's `convert_hf_to_gguf.py`
//! permutes the rows of `q_proj` and `k_proj` (weights and biases) so that
//! its RoPE rotates adjacent pairs `(2i, 2i+1)`; ferrolm, like HF, rotates
//! `(i, i + head_dim/2)` (`rotate_half`). [`unpermute_rows`] undoes that
//! permutation, as HF's GGUF loader does (`LlamaTensorProcessor.
//! _reverse_permute_weights` in transformers' `modeling_gguf_pytorch_utils.py`).
//! Qwen2 and Qwen3 GGUFs are converted without it.

use crate::weights::names as hf;

use super::reader::GgufValue;

/// Per-layer tensors: GGUF suffix -> HF suffix.
const LAYER_TENSORS: [(&str, &str); 11] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The GGUF tensor holding llama3-style RoPE frequency factors; it is not a
/// parameter but part of the config (see `config_from_gguf`).
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// The HF name of a GGUF tensor, or `None` if it is not one ferrolm knows.
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, kind) = gguf.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let global = match stem {
        "token_embd" => Some(hf::EMBED),
        "output_norm" => Some(hf::FINAL_NORM),
        "output" => Some(hf::LM_HEAD),
        _ => None,
    };
    if let Some(name) = global {
        return (kind == "weight").then(|| name.to_string());
    }
    let rest = stem.strip_prefix("blk.")?;
    let (index, suffix) = rest.split_once('.')?;
    // Canonical decimal only: `blk.01` must not alias `blk.1`.
    if index.is_empty() || (index.len() > 1 && index.starts_with('0')) {
        return None;
    }
    let index: usize = index.parse().ok()?;
    let (_, hf_suffix) = LAYER_TENSORS.iter().find(|(g, _)| *g == suffix)?;
    Some(hf::layer(index, &format!("{hf_suffix}.{kind}")))
}

/// Tensors that describe the model rather than hold parameters.
pub fn is_consumed_by_config(gguf: &str) -> bool {
    gguf == ROPE_FREQS
}

/// Which projection a permuted tensor belongs to (its rows are grouped by
/// query heads or by key/value heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Q,
    K,
}

/// Whether llama.cpp permuted this tensor's rows for this architecture.
pub fn permuted_projection(arch: &str, gguf: &str) -> Option<Projection> {
    if arch != "llama" {
        return None;
    }
    let stem = gguf.strip_suffix(".weight").or_else(|| gguf.strip_suffix(".bias"))?;
    let (_, suffix) = stem.strip_prefix("blk.")?.split_once('.')?;
    match suffix {
        "attn_q" => Some(Projection::Q),
        "attn_k" => Some(Projection::K),
        _ => None,
    }
}

/// Undoes `convert_hf_to_gguf.py`'s `LlamaModel.permute` on a q or k
/// projection (weight `[heads * head_dim, in]` or bias `[heads * head_dim]`):
/// within each head, GGUF row `2i + j` (j in 0..2, i in 0..head_dim/2) is
/// HF row `j * head_dim/2 + i`. `heads` is the query head count for q and
/// the key/value head count for k.
/// Works on any element type, so packed rows (`shape` = `[rows, row bytes]`)
/// are moved as they are.
pub fn unpermute_rows<T: Copy + Default>(
    data: &[T],
    shape: &[usize],
    heads: usize,
) -> Result<Vec<T>, String> {
    let rows = *shape.first().ok_or("a projection needs at least one dimension")?;
    let cols: usize = shape[1..].iter().product();
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(format!("{rows} rows cannot be split into {heads} heads of even size"));
    }
    if data.len() != rows * cols {
        return Err(format!("shape {shape:?} does not match {} values", data.len()));
    }
    let half = rows / heads / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * 2 * half + 2 * i + j) * cols;
                let dst = (h * 2 * half + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
}

/// A head count that may be stored per layer (an array): it must be the
/// same positive number for every layer.
pub(crate) fn uniform_count(v: &GgufValue) -> Option<usize> {
    let n = match v.as_array() {
        Some(items) => {
            let first = items.first()?.as_u64()?;
            items.iter().all(|x| x.as_u64() == Some(first)).then_some(first)?
        }
        None => v.as_u64()?,
    };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_names() {
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_name("output_norm.weight").unwrap(), "model.norm.weight");
        assert_eq!(hf_name("blk.12.attn_k.bias").unwrap(), "model.layers.12.self_attn.k_proj.bias");
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("blk.3.attn_k_norm.weight").unwrap(), "model.layers.3.self_attn.k_norm.weight");
        for unknown in
            ["blk.01.attn_q.weight", "blk.x.attn_q.weight", "blk.0.attn_qkv.weight", "rope_freqs.weight"]
        {
            assert_eq!(hf_name(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // convert_hf_to_gguf: w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)
        let (heads, head_dim, cols) = (2, 6, 3);
        let rows = heads * head_dim;
        let hf_w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0f32; hf_w.len()];
        let half = head_dim / 2;
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    for c in 0..cols {
                        permuted[((h * half + i) * 2 + j) * cols + c] =
                            hf_w[((h * 2 + j) * half + i) * cols + c];
                    }
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, &[rows, cols], heads).unwrap(), hf_w);
        assert!(unpermute_rows(&permuted, &[rows, cols], 5).is_err());
        assert_eq!(permuted_projection("llama", "blk.0.attn_q.weight"), Some(Projection::Q));
        assert_eq!(permuted_projection("qwen2", "blk.0.attn_k.bias"), None);
    }
}
