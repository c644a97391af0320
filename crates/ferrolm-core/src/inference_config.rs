//! The inference config file (JSON: engine, KV cache and sampling
//! settings, as MILI's design defines it), read once and checked whole:
//!
//! ```json
//! {"inference": {"device": "cuda", "dtype": "float16", "max_batch_size": 64},
//!  "kv_cache": {"page_size": 16, "num_pages": 1024},
//!  "sampling": {"temperature": 1.0, "top_p": 0.95, "top_k": 50}}
//! ```
//!
//! Every section and key is optional; an unknown key or a value of the wrong
//! type or range is an [`Error::InvalidConfig`] naming its path
//! (`kv_cache.page_size`). `sampling` holds any [`SamplingConfig`] field and
//! becomes the default for requests that bring no sampling settings. The
//! file maps itself to [`LoadOptions`] and [`EngineConfig`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backend::Device;
use crate::engine::EngineConfig;
use crate::error::{Error, Result};
use crate::formats::{DType, Quantize};
use crate::model::LoadOptions;
use crate::sampling::SamplingConfig;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    pub inference: InferenceSection,
    pub kv_cache: KvCacheSection,
    /// Sampling defaults (`SamplingConfig`'s defaults for the fields left out).
    pub sampling: SamplingConfig,
}

/// Where and how the model runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSection {
    /// "cpu", "cuda", "cuda:N", or a GPU index as a number (`device=0`).
    pub device: Option<DeviceName>,
    /// Compute dtype ("float32", "bfloat16", "float16"); which ones a
    /// device accepts is checked when it is opened.
    pub dtype: Option<String>,
    /// Most sequences running at once.
    pub max_batch_size: Option<usize>,
    /// Longest sequence (prompt plus generation) the KV cache holds.
    pub max_seq_len: Option<usize>,
    /// Most tokens in one forward pass.
    pub max_batch_tokens: Option<usize>,
    /// Quantize weights at load ("q8_0", "q4_k", "fp8").
    pub quantize: Option<String>,
    /// Most requests waiting to be admitted; past it a request is refused
    /// at once (`Error::Overloaded`, HTTP 429). No limit if absent.
    pub max_waiting: Option<usize>,
}

/// The page pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvCacheSection {
    pub page_size: Option<usize>,
    pub num_pages: Option<usize>,
    pub prefix_caching: Option<bool>,
    /// Precision of cached keys and values ("f16", "f32"; CPU).
    pub dtype: Option<String>,
}

/// A device as the file may spell it: a name or a GPU index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceName {
    Index(usize),
    Name(String),
}

impl DeviceName {
    /// The device this names.
    pub fn device(&self) -> Result<Device> {
        match self {
            DeviceName::Index(i) => Ok(Device::Cuda(*i)),
            DeviceName::Name(s) => Device::parse(s),
        }
    }
}

impl InferenceConfig {
    /// Reads and checks a config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<InferenceConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidConfig { field, reason } => {
                Error::InvalidConfig { field, reason: format!("{reason} (in {})", path.display()) }
            }
            other => other,
        })
    }

    /// Parses and checks the JSON text of a config.
    pub fn from_json(text: &str) -> Result<InferenceConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config("inference config", format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::config("inference config", "expected a JSON object with sections"));
        }
        let config: InferenceConfig = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "inference config".to_string() } else { path };
            Error::config(field, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// `inference.dtype`; `"auto"` (or nothing) is the device's default.
    fn weight_dtype(&self) -> Result<Option<DType>> {
        match self.inference.dtype.as_deref() {
            None => Ok(None),
            Some(d) if d.eq_ignore_ascii_case("auto") => Ok(None),
            Some(d) => DType::parse(d).map(Some).map_err(|e| Error::config("inference.dtype", e.to_string())),
        }
    }

    /// How the model is loaded: device, weight and KV precisions,
    /// quantization and context length, as the file sets them.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let (inf, kv) = (&self.inference, &self.kv_cache);
        Ok(LoadOptions {
            device: inf.device.as_ref().map(DeviceName::device).transpose()?.unwrap_or_default(),
            dtype: self.weight_dtype()?,
            quantize: inf.quantize.as_deref().map(Quantize::parse).transpose()?,
            kv_dtype: kv.dtype.as_deref().map(|d| DType::parse_arg("kv_cache.dtype", d)).transpose()?,
            max_seq_len: inf.max_seq_len,
            threads: None,
        })
    }

    /// `base` with the scheduler and page pool settings the file sets.
    pub fn engine_config(&self, base: EngineConfig) -> EngineConfig {
        let (inf, kv) = (&self.inference, &self.kv_cache);
        EngineConfig {
            page_size: kv.page_size.unwrap_or(base.page_size),
            num_pages: kv.num_pages.or(base.num_pages),
            max_num_seqs: inf.max_batch_size.unwrap_or(base.max_num_seqs),
            max_batch_tokens: inf.max_batch_tokens.unwrap_or(base.max_batch_tokens),
            prefix_caching: kv.prefix_caching.unwrap_or(base.prefix_caching),
            max_waiting: inf.max_waiting.or(base.max_waiting),
            ..base
        }
    }

    /// Only the settings the file gives, each under the name of the
    /// [`LoadOptions`] or [`EngineConfig`] field it sets (`max_batch_size`
    /// is `max_num_seqs`, `kv_cache.dtype` is `kv_dtype`): the keyword
    /// arguments of the Python API's `LLM`, `AsyncEngine` and `InferenceSession`.
    pub fn settings(&self) -> Result<Map<String, Value>> {
        let (inf, kv) = (&self.inference, &self.kv_cache);
        let options = self.load_options()?;
        let mut out = Map::new();
        let mut set = |name: &str, value: Option<Value>| {
            if let Some(v) = value {
                out.insert(name.to_string(), v);
            }
        };
        set("device", inf.device.as_ref().map(|_| options.device.to_string().into()));
        set("dtype", options.dtype.map(|d| d.name().into()));
        set("quantize", inf.quantize.clone().map(Value::from));
        set("kv_dtype", options.kv_dtype.map(|d| d.name().into()));
        set("max_seq_len", inf.max_seq_len.map(Value::from));
        set("max_num_seqs", inf.max_batch_size.map(Value::from));
        set("max_batch_tokens", inf.max_batch_tokens.map(Value::from));
        set("max_waiting", inf.max_waiting.map(Value::from));
        set("page_size", kv.page_size.map(Value::from));
        set("num_pages", kv.num_pages.map(Value::from));
        set("prefix_caching", kv.prefix_caching.map(Value::from));
        // Sorted by name, whether or not serde_json keeps insertion order
        // (llguidance turns its `preserve_order` on for the workspace).
        out.sort_keys();
        Ok(out)
    }

    fn validate(&self) -> Result<()> {
        let (inf, kv) = (&self.inference, &self.kv_cache);
        if let Some(d) = &inf.device {
            d.device().map_err(|e| Error::config("inference.device", e.to_string()))?;
        }
        self.weight_dtype()?;
        let positive = [
            ("inference.max_batch_size", inf.max_batch_size),
            ("inference.max_seq_len", inf.max_seq_len),
            ("inference.max_batch_tokens", inf.max_batch_tokens),
            ("inference.max_waiting", inf.max_waiting),
            ("kv_cache.page_size", kv.page_size),
            ("kv_cache.num_pages", kv.num_pages),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == Some(0)) {
            return Err(Error::config(*field, "must be at least 1"));
        }
        if let Some(q) = &inf.quantize {
            Quantize::parse(q).map_err(|e| Error::config("inference.quantize", e.to_string()))?;
        }
        if let Some(d) = &kv.dtype {
            DType::parse_arg("kv_cache.dtype", d)
                .map_err(|e| Error::config("kv_cache.dtype", e.to_string()))?;
        }
        self.sampling.validate().map_err(|e| match e {
            Error::InvalidConfig { field, reason } => Error::config(format!("sampling.{field}"), reason),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_maps_to_the_engine() {
        let c = InferenceConfig::from_json(
            r#"{"inference": {"device": "cuda", "dtype": "float16", "max_batch_size": 64},
                "kv_cache": {"page_size": 16, "num_pages": 1024},
                "sampling": {"temperature": 1.0, "top_p": 0.95, "top_k": 50}}"#,
        )
        .unwrap();
        assert_eq!(c.inference.device.as_ref().unwrap().device().unwrap(), Device::Cuda(0));
        assert_eq!(
            (c.inference.max_batch_size, c.kv_cache.page_size, c.kv_cache.num_pages),
            (Some(64), Some(16), Some(1024))
        );
        assert_eq!((c.sampling.temperature, c.sampling.top_k, c.sampling.top_p), (1.0, 50, 0.95));
        assert_eq!(c.sampling.min_p, SamplingConfig::default().min_p, "fields left out keep their defaults");

        let options = c.load_options().unwrap();
        assert_eq!(
            (options.device, options.dtype, options.kv_dtype),
            (Device::Cuda(0), Some(DType::F16), None)
        );
        let engine = c.engine_config(EngineConfig::default());
        assert_eq!((engine.max_num_seqs, engine.page_size, engine.num_pages), (64, 16, Some(1024)));
        assert_eq!(engine.max_batch_tokens, EngineConfig::default().max_batch_tokens);
        assert_eq!(engine.max_waiting, None, "no bound unless the file sets one");
        let bounded = InferenceConfig::from_json(r#"{"inference": {"max_waiting": 8}}"#).unwrap();
        assert_eq!(bounded.engine_config(EngineConfig::default()).max_waiting, Some(8));
        assert_eq!(bounded.settings().unwrap()["max_waiting"], 8);
        let settings = c.settings().unwrap();
        let keys: Vec<&str> = settings.keys().map(String::as_str).collect();
        assert_eq!(keys, ["device", "dtype", "max_num_seqs", "num_pages", "page_size"]);
        assert_eq!(
            (settings["device"].as_str(), settings["dtype"].as_str()),
            (Some("cuda:0"), Some("float16"))
        );
    }

    #[test]
    fn a_gpu_index_and_an_empty_file_are_fine() {
        let c = InferenceConfig::from_json(r#"{"inference": {"device": 1}}"#).unwrap();
        assert_eq!(c.inference.device.unwrap().device().unwrap(), Device::Cuda(1));
        assert_eq!(InferenceConfig::from_json("{}").unwrap(), InferenceConfig::default());
    }

    #[test]
    fn errors_name_the_key() {
        let field = |text: &str| match InferenceConfig::from_json(text).unwrap_err() {
            Error::InvalidConfig { field, reason } => (field, reason),
            other => panic!("{other}"),
        };
        for (text, key) in [
            (r#"{"kv_cache": {"page_sze": 16}}"#, "kv_cache.page_sze"),
            (r#"{"inferense": {}}"#, "inferense"),
            (r#"{"kv_cache": {"page_size": "16"}}"#, "kv_cache.page_size"),
            (r#"{"kv_cache": {"page_size": 0}}"#, "kv_cache.page_size"),
            (r#"{"kv_cache": {"num_pages": -3}}"#, "kv_cache.num_pages"),
            (r#"{"kv_cache": {"dtype": "int4"}}"#, "kv_cache.dtype"),
            (r#"{"inference": {"device": "tpu"}}"#, "inference.device"),
            (r#"{"inference": {"dtype": "float8"}}"#, "inference.dtype"),
            (r#"{"inference": {"quantize": "q2"}}"#, "inference.quantize"),
            (r#"{"sampling": {"top_p": 1.5}}"#, "sampling.top_p"),
            (r#"{"sampling": {"temprature": 0.5}}"#, "sampling.temprature"),
            (r#"[1, 2]"#, "inference config"),
        ] {
            let (got, reason) = field(text);
            assert_eq!(got, key, "{text}: {reason}");
        }
        let (_, reason) = field(r#"{"kv_cache": {"page_sze": 16}}"#);
        assert!(reason.contains("page_sze") && reason.contains("page_size"), "{reason}");
        assert!(field("{").0 == "inference config");
    }
}
