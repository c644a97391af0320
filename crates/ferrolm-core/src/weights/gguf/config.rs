//! GGUF metadata -> [`Config`].
//!
//! Keys are llama.cpp's (`{arch}.block_count`, `{arch}.embedding_length`,
//! ...; see gguf-py's `Keys`). Architectures: `llama` (Llama, and Mistral
//! GGUFs, which llama.cpp also writes as `llama`), `qwen2`, `qwen3`.
//! Facts the metadata does not state are read from the tensor table, as
//! llama.cpp and HF's GGUF loader do: tied embeddings (no `output.weight`),
//! biases (`blk.0.attn_q.bias`, ...), and llama3-style RoPE scaling, which
//! llama.cpp stores as per-frequency factors in a `rope_freqs.weight` tensor.

use super::names::ROPE_FREQS;
use super::reader::{GgufFile, GgufValue};
use crate::config::{Config, DType, Family, RopeScaling};
use crate::error::{Error, Result};
use crate::formats::GgmlType;

/// Builds the model config from a GGUF file's metadata (and tensor table).
/// `max_seq_len` defaults to `{arch}.context_length`.
pub fn config_from_gguf(file: &GgufFile) -> Result<Config> {
    let arch = match file.get("general.architecture") {
        Some(GgufValue::String(s)) => s.as_str(),
        Some(v) => {
            return Err(Error::config("general.architecture", format!("expected a string, got {v:?}")))
        }
        None => {
            return Err(Error::InvalidWeights(format!(
                "{}: no `general.architecture` in the GGUF metadata",
                file.path().display()
            )))
        }
    };
    let m = Meta { file, arch };
    if let Some(n) = m.opt_usize("expert_count")?.filter(|&n| n > 0) {
        return Err(Error::Unsupported(format!(
            "mixture-of-experts GGUF models ({arch}.expert_count = {n}) are not supported"
        )));
    }
    let sliding_window = m.opt_usize("attention.sliding_window")?;
    let family = match arch {
        // Mistral GGUFs are written as `llama`; a sliding window (if the
        // converter kept it) is what sets them apart. Without one they are Llama.
        "llama" if sliding_window.is_some() => Family::Mistral,
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF architecture `{other}` is not supported; supported architectures: llama, qwen2, qwen3"
            )))
        }
    };

    let hidden_size = m.usize("embedding_length")?;
    let num_attention_heads =
        m.head_count("attention.head_count")?.ok_or_else(|| m.missing("attention.head_count"))?;
    let num_key_value_heads = m.head_count("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = match m.opt_usize("attention.key_length")? {
        Some(d) => d,
        None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
        None => {
            return Err(Error::config(
                m.key("embedding_length"),
                format!("{hidden_size} is not divisible by head_count={num_attention_heads} and no key_length is given"),
            ))
        }
    };
    if let Some(v) = m.opt_usize("attention.value_length")?.filter(|&v| v != head_dim) {
        return Err(Error::Unsupported(format!(
            "{arch}.attention.value_length = {v} differs from key_length = {head_dim}; ferrolm needs equal key and value head sizes"
        )));
    }
    if let Some(r) = m.opt_usize("rope.dimension_count")?.filter(|&r| r != head_dim) {
        return Err(Error::Unsupported(format!(
            "{arch}.rope.dimension_count = {r} but heads have {head_dim} dimensions; partial rotary embeddings are not supported"
        )));
    }

    let vocab_size = vocab_size(&m)?;
    let max_position_embeddings = m.opt_usize("context_length")?.unwrap_or(2048);
    let rms_norm_eps = m.f64("attention.layer_norm_rms_epsilon")?;
    let rope_theta = m.opt_f64("rope.freq_base")?.unwrap_or(10000.0);

    let has = |name: &str| file.tensor_info(name).is_some();
    let qkv_bias = has("blk.0.attn_q.bias");
    let attention_bias = match family {
        // Qwen2 always has q/k/v biases (and never an o bias): `Config::qkv_bias`.
        Family::Qwen2 if !qkv_bias => {
            return Err(Error::Unsupported(
                "this qwen2 GGUF has no attn_q.bias; ferrolm's Qwen2 always has q/k/v biases".into(),
            ))
        }
        Family::Qwen2 => false,
        _ => qkv_bias,
    };

    let tokens_key = "tokenizer.ggml.";
    let token = |key: &str| -> Result<Option<u32>> {
        let key = format!("{tokens_key}{key}");
        match file.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| Error::config(key, format!("expected a token id, got {v:?}"))),
        }
    };

    let mut config = Config {
        family,
        hidden_size,
        intermediate_size: m.usize("feed_forward_length")?,
        vocab_size,
        num_hidden_layers: m.usize("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        max_position_embeddings,
        max_seq_len: max_position_embeddings,
        rms_norm_eps,
        rope_theta,
        rope_scaling: None,
        tie_word_embeddings: !has("output.weight"),
        attention_bias,
        mlp_bias: has("blk.0.ffn_up.bias"),
        sliding_window: if family == Family::Mistral { sliding_window } else { None },
        bos_token_id: token("bos_token_id")?,
        eos_token_ids: token("eos_token_id")?.into_iter().collect(),
        dtype: storage_dtype(file),
    };
    config.validate()?;
    check_against_tensors(file, &config)?;
    config.rope_scaling = rope_scaling(&m, &config)?;
    config.validate()?;
    Ok(config)
}

/// The sizes in the metadata must be those of the tensors: a clear error for
/// an inconsistent file, and a bound (the file's size) on everything the
/// loader allocates from the config before it checks shapes.
fn check_against_tensors(file: &GgufFile, c: &Config) -> Result<()> {
    let arch = file.architecture().unwrap_or_default();
    let last = format!("blk.{}.attn_norm.weight", c.num_hidden_layers - 1);
    if file.tensor_info(&last).is_none() {
        return Err(Error::InvalidWeights(format!(
            "{}: {arch}.block_count is {} but there is no tensor `{last}`",
            file.path().display(),
            c.num_hidden_layers
        )));
    }
    let expect = |name: &str, key: &str, dim: usize, value: Option<usize>| -> Result<()> {
        let info = file.tensor_info(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let got = info.dims.get(dim).copied();
        if value.map(|v| v as u64) != got {
            return Err(Error::InvalidWeights(format!(
                "{}: the metadata gives {key} = {} but tensor `{name}` has dimensions {:?} (innermost first)",
                file.path().display(),
                value.map_or("an overflowing size".to_string(), |v| v.to_string()),
                info.dims
            )));
        }
        Ok(())
    };
    let heads = format!("{arch}.attention.head_count x head size");
    let kv_heads = format!("{arch}.attention.head_count_kv x head size");
    let q = c.num_attention_heads.checked_mul(c.head_dim);
    let kv = c.num_key_value_heads.checked_mul(c.head_dim);
    expect("blk.0.attn_q.weight", &format!("{arch}.embedding_length"), 0, Some(c.hidden_size))?;
    expect("blk.0.attn_q.weight", &heads, 1, q)?;
    expect("blk.0.attn_k.weight", &kv_heads, 1, kv)?;
    expect("blk.0.ffn_up.weight", &format!("{arch}.feed_forward_length"), 1, Some(c.intermediate_size))?;
    Ok(())
}

/// Typed access to `{arch}.*` keys with errors that name the key.
struct Meta<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Meta<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    fn missing(&self, suffix: &str) -> Error {
        Error::InvalidWeights(format!(
            "{}: the GGUF metadata has no `{}`",
            self.file.path().display(),
            self.key(suffix)
        ))
    }

    fn opt_usize(&self, suffix: &str) -> Result<Option<usize>> {
        let key = self.key(suffix);
        match self.file.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| Error::config(key, format!("expected a non-negative integer, got {v:?}"))),
        }
    }

    fn usize(&self, suffix: &str) -> Result<usize> {
        self.opt_usize(suffix)?.ok_or_else(|| self.missing(suffix))
    }

    /// Head counts may be stored per layer; they must then all be equal.
    fn head_count(&self, suffix: &str) -> Result<Option<usize>> {
        let key = self.key(suffix);
        match self.file.get(&key) {
            None => Ok(None),
            Some(v) => super::names::uniform_count(v).map(Some).ok_or_else(|| {
                Error::Unsupported(format!(
                    "`{key}` = {v:?}: ferrolm needs the same positive head count in every layer"
                ))
            }),
        }
    }

    fn opt_f64(&self, suffix: &str) -> Result<Option<f64>> {
        let key = self.key(suffix);
        match self.file.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::config(key, format!("expected a number, got {v:?}"))),
        }
    }

    fn f64(&self, suffix: &str) -> Result<f64> {
        self.opt_f64(suffix)?.ok_or_else(|| self.missing(suffix))
    }

    fn opt_str(&self, suffix: &str) -> Result<Option<&str>> {
        let key = self.key(suffix);
        match self.file.get(&key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(Error::config(key, format!("expected a string, got {v:?}"))),
        }
    }
}

/// The vocabulary size: the embedding's row count, which must agree with the
/// tokenizer's token list and `{arch}.vocab_size` where those are given.
fn vocab_size(m: &Meta) -> Result<usize> {
    let declared = m.opt_usize("vocab_size")?;
    let tokens = m.file.get("tokenizer.ggml.tokens").map(|v| v.as_array().map(<[GgufValue]>::len));
    let tokens = match tokens {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => return Err(Error::config("tokenizer.ggml.tokens", "expected an array of strings")),
    };
    let rows = m.file.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1)).map(|&r| r as usize);
    let metadata = declared.or(tokens);
    match (rows, metadata) {
        (Some(rows), Some(n)) if rows != n => Err(Error::InvalidWeights(format!(
            "{}: token_embd.weight has {rows} rows but the metadata declares {n} tokens ({})",
            m.file.path().display(),
            if declared.is_some() { m.key("vocab_size") } else { "tokenizer.ggml.tokens".to_string() }
        ))),
        (Some(n), _) | (None, Some(n)) => Ok(n),
        (None, None) => Err(Error::InvalidWeights(format!(
            "{}: cannot tell the vocabulary size (no token_embd.weight, tokenizer.ggml.tokens or {})",
            m.file.path().display(),
            m.key("vocab_size")
        ))),
    }
}

/// F16 or BF16 when every matrix is stored so; otherwise F32 (quantized
/// weights are dequantized to f32).
fn storage_dtype(file: &GgufFile) -> DType {
    let matrices: Vec<GgmlType> =
        file.tensor_infos().iter().filter(|t| t.dims.len() >= 2).map(|t| t.ggml_type).collect();
    if !matrices.is_empty() && matrices.iter().all(|&t| t == GgmlType::F16) {
        DType::F16
    } else if !matrices.is_empty() && matrices.iter().all(|&t| t == GgmlType::BF16) {
        DType::BF16
    } else {
        DType::F32
    }
}

/// `{arch}.rope.scaling.*` (linear; anything else is refused), or the
/// llama3 scaling stored as `rope_freqs.weight`.
fn rope_scaling(m: &Meta, config: &Config) -> Result<Option<RopeScaling>> {
    let kind = m.opt_str("rope.scaling.type")?;
    let factor = m.opt_f64("rope.scaling.factor")?;
    let from_keys = match (kind, factor) {
        (None | Some("none"), _) => match m.opt_f64("rope.scale_linear")? {
            // The pre-2024 key for linear scaling.
            Some(f) if f != 1.0 => Some(RopeScaling::Linear { factor: f }),
            _ => None,
        },
        (Some("linear"), Some(f)) if f > 0.0 && f.is_finite() => {
            (f != 1.0).then_some(RopeScaling::Linear { factor: f })
        }
        (Some("linear"), _) => {
            return Err(Error::config(m.key("rope.scaling.factor"), "linear scaling needs a positive factor"))
        }
        (Some(other), _) => {
            return Err(Error::Unsupported(format!(
                "{}.rope.scaling.type = `{other}` is not supported (supported: none, linear, and llama3 via rope_freqs.weight)",
                m.arch
            )))
        }
    };
    if m.file.tensor_info(ROPE_FREQS).is_none() {
        return Ok(from_keys);
    }
    if from_keys.is_some() {
        return Err(Error::Unsupported(format!(
            "this GGUF has both {}.rope.scaling.type and {ROPE_FREQS}; ferrolm cannot combine them",
            m.arch
        )));
    }
    llama3_from_rope_freqs(m, config)
}

/// Recovers Meta's llama3 RoPE scaling from the per-frequency factors
/// llama.cpp stores (`convert_hf_to_gguf.py`: `rope_factors[i]` divides
/// frequency `i`: 1 for high frequencies, `factor` for low ones, a smooth
/// blend between). llama.cpp keeps only the factors, so the parameters are
/// inferred (the low/high frequency factors default to Meta's 1 and 4, the
/// original context is solved from a blended frequency) and accepted only
/// if they reproduce every stored factor; anything else is refused.
fn llama3_from_rope_freqs(m: &Meta, config: &Config) -> Result<Option<RopeScaling>> {
    let bad =
        |why: String| Error::InvalidWeights(format!("{}: {ROPE_FREQS}: {why}", m.file.path().display()));
    let freqs = m.file.read_gguf(ROPE_FREQS)?.data;
    let half = config.head_dim / 2;
    if freqs.len() != half {
        return Err(bad(format!("has {} values but heads have {half} frequency pairs", freqs.len())));
    }
    if freqs.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(bad("factors must be positive and finite".into()));
    }
    if freqs.iter().all(|&f| f == 1.0) {
        return Ok(None);
    }
    let factor = f64::from(freqs[half - 1]);
    let low = m.opt_f64("rope.scaling.low_freq_factor")?.unwrap_or(1.0);
    let high = m.opt_f64("rope.scaling.high_freq_factor")?.unwrap_or(4.0);
    let declared_len = m.opt_usize("rope.scaling.original_context_length")?;

    let base = crate::config::rope::base_inv_freq(config.rope_theta, config.head_dim);
    let mut lengths: Vec<usize> = declared_len.into_iter().collect();
    // Solve the original context from the first blended frequency:
    // 1/r = (1 - s)/factor + s, s = (old_len / wavelen - low) / (high - low).
    if let Some(i) = (0..half).find(|&i| {
        let r = f64::from(freqs[i]);
        r > 1.0 + 1e-6 && r < factor * (1.0 - 1e-6)
    }) {
        let s = (1.0 / f64::from(freqs[i]) - 1.0 / factor) / (1.0 - 1.0 / factor);
        let wavelen = 2.0 * std::f64::consts::PI / base[i];
        let solved = wavelen * (s * (high - low) + low);
        if (1.0..1e12).contains(&solved) {
            lengths.push(solved.round() as usize);
        }
    }
    lengths.push(8192);
    for original_max_position_embeddings in lengths {
        let candidate = RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings,
        };
        let scaled = candidate.apply(&base);
        let fits = scaled.iter().zip(&base).zip(&freqs).all(|((&s, &b), &r)| {
            let want = b / f64::from(r);
            (s - want).abs() <= 1e-5 * want
        });
        if fits {
            return Ok(Some(candidate));
        }
    }
    Err(Error::Unsupported(format!(
        "{ROPE_FREQS} holds RoPE frequency factors that are not llama3 scaling with factor {factor}, \
         low_freq_factor {low}, high_freq_factor {high}; ferrolm cannot run them"
    )))
}
