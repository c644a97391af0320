//! `SamplingConfig` travels from Python as JSON; the core validates it.

use ferrolm_core::SamplingConfig;
use pyo3::prelude::*;

use crate::errors::to_py;

pub fn parse(json: &str) -> PyResult<SamplingConfig> {
    SamplingConfig::from_json(json).map_err(to_py)
}

/// Raises ValueError naming the field if the config is out of range.
#[pyfunction]
pub fn validate_sampling(json: &str) -> PyResult<()> {
    parse(json).map(|_| ())
}
