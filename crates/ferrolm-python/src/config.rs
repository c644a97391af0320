//! Config parsing for Python: `ModelArgs` travels as JSON text both ways.

use ferrolm_core::weights::names;
use ferrolm_core::Config;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;

pub fn parse(json: &str) -> PyResult<Config> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| PyValueError::new_err(format!("config is not valid JSON: {e}")))?;
    Config::from_json(&value).map_err(to_py)
}

/// Reads an HF `config.json`; returns the canonical config as JSON text.
#[pyfunction]
pub fn config_from_file(path: std::path::PathBuf) -> PyResult<String> {
    Ok(Config::from_file(path).map_err(to_py)?.to_json().to_string())
}

/// The config of a model directory or `.gguf` file, as canonical JSON text.
#[pyfunction]
pub fn config_from_pretrained(py: Python<'_>, path: std::path::PathBuf) -> PyResult<String> {
    crate::errors::run(py, || Ok(Config::from_pretrained(path)?.to_json().to_string()))
}

/// Checks the seed's inference config (JSON text); returns it as JSON text
/// with every section present (defaults filled in).
#[pyfunction]
pub fn inference_config(json: &str) -> PyResult<String> {
    let config = ferrolm_core::InferenceConfig::from_json(json).map_err(to_py)?;
    Ok(serde_json::to_string(&config).expect("the config serializes"))
}

/// Validates a config (HF or canonical keys) given as JSON text; returns the canonical form.
#[pyfunction]
pub fn config_from_json(json: &str) -> PyResult<String> {
    Ok(parse(json)?.to_json().to_string())
}

/// The checkpoint names and shapes of every parameter of a config.
#[pyfunction]
pub fn parameter_shapes(json: &str) -> PyResult<Vec<(String, Vec<usize>)>> {
    Ok(ferrolm_core::model::parameter_shapes(&parse(json)?))
}

/// Whether `name` is a decoder layer's linear projection: the matrices
/// `quantize="fp8"` stores in FP8 (embeddings, the head and norms are not).
#[pyfunction]
pub fn is_layer_linear(name: &str) -> bool {
    names::is_layer_linear(name)
}
