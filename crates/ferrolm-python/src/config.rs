//! Model and inference configs for Python: dicts both ways, checked by the core.

use ferrolm_core::weights::names;
use ferrolm_core::{Config, InferenceConfig};
use pyo3::prelude::*;

use crate::errors::{run, to_py};
use crate::values;

/// A config (HF or canonical keys) from a Python dict.
pub fn parse(config: &Bound<'_, PyAny>) -> PyResult<Config> {
    Config::from_json(&values::from_py(config, "config")?).map_err(to_py)
}

/// Reads an HF `config.json`; returns the canonical config.
#[pyfunction]
pub fn config_from_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let config = Config::from_file(path).map_err(to_py)?;
    values::to_py(py, &config.to_json())
}

/// The config of a model directory or `.gguf` file, canonical.
#[pyfunction]
pub fn config_from_pretrained(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let config = run(py, || Config::from_pretrained(path))?;
    values::to_py(py, &config.to_json())
}

/// Checks an inference config file's JSON text; returns `{"settings": the
/// load and engine settings it gives (named as the Python API's keyword
/// arguments), "sampling": the full sampling defaults}`.
#[pyfunction]
pub fn inference_config<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    let config = InferenceConfig::from_json(text).map_err(to_py)?;
    // Through JSON text: f32 fields print as their shortest decimal (0.95,
    // not the 0.949999988... an f32 widened to a Python float would be).
    let text = serde_json::to_string(&config.sampling).expect("a sampling config serializes");
    let sampling: serde_json::Value = serde_json::from_str(&text).expect("its own JSON parses");
    let settings = config.settings().map_err(to_py)?;
    values::to_py(py, &serde_json::json!({ "settings": settings, "sampling": sampling }))
}

/// Validates a config (HF or canonical keys); returns the canonical form.
#[pyfunction]
pub fn canonical_config<'py>(py: Python<'py>, config: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    values::to_py(py, &parse(config)?.to_json())
}

/// The checkpoint names and shapes of every parameter of a config.
#[pyfunction]
pub fn parameter_shapes(config: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Vec<usize>)>> {
    Ok(ferrolm_core::model::parameter_shapes(&parse(config)?))
}

/// Whether `name` is a decoder layer's linear projection: the matrices
/// `quantize="fp8"` stores in FP8 (embeddings, the head and norms are not).
#[pyfunction]
pub fn is_layer_linear(name: &str) -> bool {
    names::is_layer_linear(name)
}
