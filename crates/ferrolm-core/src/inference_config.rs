//! The seed's inference config file (JSON), read once and checked whole:
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
//! becomes the default for requests that bring no sampling settings.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::formats::DType;
use crate::formats::Quantize;
use crate::sampling::SamplingConfig;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    pub inference: InferenceSection,
    pub kv_cache: KvCacheSection,
    /// Sampling defaults (seed defaults for the fields left out).
    pub sampling: SamplingConfig,
}

/// Where and how the model runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSection {
    /// "cpu", "cuda", "cuda:N", or a GPU index as a number (the seed's `device=0`).
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

    fn validate(&self) -> Result<()> {
        let (inf, kv) = (&self.inference, &self.kv_cache);
        if let Some(d) = &inf.device {
            d.device().map_err(|e| Error::config("inference.device", e.to_string()))?;
        }
        if let Some(dtype) = &inf.dtype {
            if !["float32", "bfloat16", "float16", "f32", "bf16", "f16", "fp32", "auto"]
                .contains(&dtype.to_ascii_lowercase().as_str())
            {
                return Err(Error::config(
                    "inference.dtype",
                    format!("unknown dtype `{dtype}`; use \"float32\", \"bfloat16\" or \"float16\""),
                ));
            }
        }
        let positive = [
            ("inference.max_batch_size", inf.max_batch_size),
            ("inference.max_seq_len", inf.max_seq_len),
            ("inference.max_batch_tokens", inf.max_batch_tokens),
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
            DType::parse(d).map_err(|e| Error::config("kv_cache.dtype", e.to_string()))?;
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
    fn the_seed_example_parses() {
        let c = InferenceConfig::from_json(
            r#"{"inference": {"device": "cuda", "dtype": "float16", "max_batch_size": 64},
                "kv_cache": {"page_size": 16, "num_pages": 1024},
                "sampling": {"temperature": 1.0, "top_p": 0.95, "top_k": 50}}"#,
        )
        .unwrap();
        assert_eq!(c.inference.device.unwrap().device().unwrap(), Device::Cuda(0));
        assert_eq!(
            (c.inference.max_batch_size, c.kv_cache.page_size, c.kv_cache.num_pages),
            (Some(64), Some(16), Some(1024))
        );
        assert_eq!((c.sampling.temperature, c.sampling.top_k, c.sampling.top_p), (1.0, 50, 0.95));
        assert_eq!(c.sampling.min_p, SamplingConfig::default().min_p, "fields left out keep their defaults");
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
