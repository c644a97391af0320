//! The typed model configuration and the registry of supported families.
//!
//! `Config` is read from an HF `config.json` (transformers 4.x keys such as
//! `rope_theta`/`rope_scaling`/`torch_dtype`, or the 5.x `rope_parameters`/
//! `dtype` form) or from its own canonical JSON (`Config::to_json`, the
//! fields of Python's `ModelArgs`). Family differences are flags derived
//! here, once; the model code never looks at the architecture name.

pub mod rope;

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
pub use crate::formats::DType;

/// The model families ferrolm implements, keyed by HF architecture name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    /// HF architecture names, in the order error messages list them.
    pub const SUPPORTED: [(&'static str, Family); 4] = [
        ("LlamaForCausalLM", Family::Llama),
        ("MistralForCausalLM", Family::Mistral),
        ("Qwen2ForCausalLM", Family::Qwen2),
        ("Qwen3ForCausalLM", Family::Qwen3),
    ];

    pub fn from_architecture(name: &str) -> Result<Family> {
        Self::SUPPORTED.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).ok_or_else(|| {
            let names: Vec<_> = Self::SUPPORTED.iter().map(|(n, _)| *n).collect();
            Error::Unsupported(format!(
                "unsupported architecture `{name}`; supported architectures: {}",
                names.join(", ")
            ))
        })
    }

    pub fn architecture(self) -> &'static str {
        Self::SUPPORTED.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).expect("every family is registered")
    }
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF "linear").
    Linear { factor: f64 },
    /// Meta's Llama 3.1 frequency-dependent scaling (HF "llama3").
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Everything the decoder needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Positions the model was trained for (informational; RoPE scaling uses its own).
    pub max_position_embeddings: usize,
    /// Capacity of the KV cache per sequence: the longest sequence `forward` accepts.
    pub max_seq_len: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// HF `attention_bias`: biases on q/k/v/o (Llama, Qwen3). Qwen2 always has q/k/v bias.
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// Attend only to the last `sliding_window` positions (Mistral).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub dtype: DType,
}

impl Config {
    /// Whether q/k/v projections carry a bias.
    pub fn qkv_bias(&self) -> bool {
        self.family == Family::Qwen2 || self.attention_bias
    }

    /// Whether the output projection carries a bias.
    pub fn o_bias(&self) -> bool {
        self.family != Family::Qwen2 && self.attention_bias
    }

    /// Whether each head's q and k are RMS-normalised before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.family == Family::Qwen3
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Reads an HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            Error::config("config.json", format!("{} is not valid JSON: {e}", path.display()))
        })?;
        Config::from_json(&value)
    }

    /// Parses an HF config dict or the canonical form written by [`Config::to_json`].
    /// Keys ferrolm does not use are ignored.
    pub fn from_json(value: &Value) -> Result<Config> {
        let obj = value.as_object().ok_or_else(|| Error::config("config", "expected a JSON object"))?;
        let f = Fields(obj);

        let architecture = match (obj.get("architecture"), obj.get("architectures")) {
            (Some(Value::String(s)), _) => s.clone(),
            (_, Some(Value::Array(list))) => list
                .first()
                .and_then(Value::as_str)
                .ok_or_else(|| Error::config("architectures", "expected a list of names"))?
                .to_string(),
            (None, None) => "LlamaForCausalLM".to_string(),
            _ => return Err(Error::config("architecture", "expected a string")),
        };
        let family = Family::from_architecture(&architecture)?;

        let hidden_size = f.usize_or("hidden_size", 4096)?;
        let num_attention_heads = f.usize_or("num_attention_heads", 32)?;
        let num_key_value_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if num_attention_heads > 0 && hidden_size % num_attention_heads == 0 => {
                hidden_size / num_attention_heads
            }
            None => {
                return Err(Error::config(
                    "hidden_size",
                    format!("{hidden_size} is not divisible by num_attention_heads={num_attention_heads}; set head_dim explicitly"),
                ))
            }
        };
        let max_position_embeddings = f.usize_or("max_position_embeddings", 2048)?;
        let max_seq_len = f.opt_usize("max_seq_len")?.unwrap_or(max_position_embeddings);

        let (rope_theta, rope_scaling) = parse_rope(obj)?;
        let sliding_window = parse_sliding_window(family, obj)?;

        let activation = f.str_or("hidden_act", "silu")?;
        if activation != "silu" {
            return Err(Error::Unsupported(format!(
                "hidden_act `{activation}` is not supported (only silu)"
            )));
        }
        let dtype_name = match obj.get("dtype").or_else(|| obj.get("torch_dtype")) {
            None | Some(Value::Null) => "float32".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(Error::config("dtype", "expected a string such as \"bfloat16\"")),
        };
        let dtype = DType::parse(&dtype_name).map_err(|_| {
            Error::config("dtype", format!("unknown dtype `{dtype_name}`; use float32, float16 or bfloat16"))
        })?;

        let config = Config {
            family,
            hidden_size,
            intermediate_size: f.usize_or("intermediate_size", 11008)?,
            vocab_size: f.usize_or("vocab_size", 32000)?,
            num_hidden_layers: f.usize_or("num_hidden_layers", 32)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            max_seq_len,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            attention_bias: f.bool_or("attention_bias", false)?,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            sliding_window,
            bos_token_id: f.opt_token("bos_token_id")?,
            eos_token_ids: f.token_list("eos_token_id")?,
            dtype,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes are consistent; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_seq_len", self.max_seq_len),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config(name, "must be a positive integer"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads={}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config("head_dim", "must be even for rotary embeddings"));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(Error::config("rms_norm_eps", "must be a positive number"));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::config("rope_theta", "must be a positive number"));
        }
        if self.sliding_window == Some(0) {
            return Err(Error::config("sliding_window", "must be positive or null"));
        }
        for (field, id) in self
            .bos_token_id
            .iter()
            .map(|id| ("bos_token_id", id))
            .chain(self.eos_token_ids.iter().map(|id| ("eos_token_id", id)))
        {
            if *id as usize >= self.vocab_size {
                return Err(Error::config(
                    field,
                    format!("token id {id} is outside the vocabulary (vocab_size={})", self.vocab_size),
                ));
            }
        }
        Ok(())
    }

    /// The canonical JSON form (the fields of Python's `ModelArgs`);
    /// `Config::from_json` reads it back unchanged.
    pub fn to_json(&self) -> Value {
        let rope_scaling = match self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        json!({
            "architecture": self.family.architecture(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_seq_len": self.max_seq_len,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "sliding_window": self.sliding_window,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "dtype": self.dtype.name(),
        })
    }
}

/// Reads `rope_theta` and the scaling from either the transformers 4.x keys
/// (`rope_theta`, `rope_scaling`) or the 5.x `rope_parameters` dict.
fn parse_rope(obj: &Map<String, Value>) -> Result<(f64, Option<RopeScaling>)> {
    let params = match obj.get("rope_parameters") {
        Some(Value::Object(p)) => Some(p),
        None | Some(Value::Null) => None,
        Some(_) => return Err(Error::config("rope_parameters", "expected an object")),
    };
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(v) => {
            v.as_f64().ok_or_else(|| Error::config("rope_parameters.rope_theta", "expected a number"))?
        }
        None => Fields(obj).f64_or("rope_theta", 10000.0)?,
    };
    let (field, scaling) = match obj.get("rope_scaling") {
        Some(Value::Object(s)) => ("rope_scaling", Some(s)),
        None | Some(Value::Null) => ("rope_parameters", params),
        Some(_) => return Err(Error::config("rope_scaling", "expected an object or null")),
    };
    let Some(scaling) = scaling else {
        return Ok((theta, None));
    };
    let kind =
        scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("default");
    let s = Fields(scaling);
    let factor = || -> Result<f64> {
        let factor = s
            .opt_f64("factor")?
            .ok_or_else(|| Error::config(format!("{field}.factor"), "required for this rope type"))?;
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(Error::config(format!("{field}.factor"), "must be a positive number"));
        }
        Ok(factor)
    };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: factor()? }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: s.f64_or("low_freq_factor", 1.0)?,
            high_freq_factor: s.f64_or("high_freq_factor", 4.0)?,
            original_max_position_embeddings: s.usize_or("original_max_position_embeddings", 8192)?,
        }),
        other => {
            return Err(Error::Unsupported(format!(
                "rope scaling type `{other}` is not supported (supported: default, linear, llama3)"
            )))
        }
    };
    Ok((theta, scaling))
}

/// Mistral's sliding window is honoured. Qwen configs carry a `sliding_window`
/// that only applies when `use_sliding_window` is true, which ferrolm refuses
/// (it also needs per-layer windows); Llama has none.
fn parse_sliding_window(family: Family, obj: &Map<String, Value>) -> Result<Option<usize>> {
    let f = Fields(obj);
    match family {
        Family::Mistral => f.opt_usize("sliding_window"),
        Family::Qwen2 | Family::Qwen3 => {
            if f.bool_or("use_sliding_window", false)? {
                return Err(Error::Unsupported(
                    "use_sliding_window=true is not supported for Qwen models; set it to false".into(),
                ));
            }
            Ok(None)
        }
        Family::Llama => f.opt_usize("sliding_window"),
    }
}

/// Typed access to JSON fields with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| Error::config(key, format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| Error::config(key, format!("expected a number, got {v}")))
            }
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                v.as_bool().ok_or_else(|| Error::config(key, format!("expected true or false, got {v}")))
            }
        }
    }

    fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::config(key, format!("expected a string, got {v}"))),
        }
    }

    fn opt_token(&self, key: &str) -> Result<Option<u32>> {
        self.opt_usize(key)?
            .map(|n| u32::try_from(n).map_err(|_| Error::config(key, "token id too large")))
            .transpose()
    }

    /// An int or a list of ints (HF allows both for `eos_token_id`).
    fn token_list(&self, key: &str) -> Result<Vec<u32>> {
        let bad = || Error::config(key, "expected a token id or a list of token ids");
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)).collect()
            }
            Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(|n| vec![n]).ok_or_else(bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3() -> Value {
        json!({
            "architectures": ["Qwen3ForCausalLM"],
            "hidden_size": 64, "intermediate_size": 128, "vocab_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": true,
            "sliding_window": null, "use_sliding_window": false,
            "eos_token_id": 2, "torch_dtype": "bfloat16"
        })
    }

    #[test]
    fn parses_family_flags() {
        let c = Config::from_json(&qwen3()).unwrap();
        assert_eq!(c.family, Family::Qwen3);
        assert!(c.qk_norm() && !c.qkv_bias() && !c.o_bias());
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (32, 128, 64));
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.dtype, DType::BF16);

        let mut v = qwen3();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        let c = Config::from_json(&v).unwrap();
        assert!(c.qkv_bias() && !c.o_bias() && !c.qk_norm());
    }

    #[test]
    fn canonical_json_round_trips() {
        let mut v = qwen3();
        v["rope_scaling"] = json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let c = Config::from_json(&v).unwrap();
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn reads_rope_parameters_form() {
        let mut v = qwen3();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0});
        let c = Config::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 500.0);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = qwen3();
        v["num_key_value_heads"] = json!(3);
        let err = Config::from_json(&v).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");

        let mut v = qwen3();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(Config::from_json(&v).unwrap_err().to_string().contains("yarn"));

        let mut v = qwen3();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let err = Config::from_json(&v).unwrap_err().to_string();
        assert!(err.contains("Qwen3ForCausalLM") && err.contains("GPT2LMHeadModel"), "{err}");

        let mut v = qwen3();
        v["hidden_size"] = json!(-1);
        assert!(Config::from_json(&v).unwrap_err().to_string().contains("hidden_size"));

        let mut v = qwen3();
        v["eos_token_id"] = json!([2, 999]);
        assert!(Config::from_json(&v).unwrap_err().to_string().contains("eos_token_id"));
    }
}
