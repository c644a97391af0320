//! `SamplingConfig` travels from Python as JSON; the core validates it and
//! samples rows of logits with it.

use ferrolm_core::sampling::Sampler;
use ferrolm_core::{Error, SamplingConfig};
use numpy::PyReadonlyArray2;
use pyo3::prelude::*;

use crate::errors::{run, to_py};

pub fn parse(json: &str) -> PyResult<SamplingConfig> {
    SamplingConfig::from_json(json).map_err(to_py)
}

/// Raises ValueError naming the field if the config is out of range.
#[pyfunction]
pub fn validate_sampling(json: &str) -> PyResult<()> {
    parse(json).map(|_| ())
}

/// Draws one token per row of `logits` (`[batch, vocab]`) with the core's
/// sampler under `sampling` (JSON); row `i` uses random stream `i`, so a
/// seeded call is reproducible and its rows independent.
#[pyfunction]
pub fn sample_rows(py: Python<'_>, logits: PyReadonlyArray2<'_, f32>, sampling: &str) -> PyResult<Vec<u32>> {
    let config = parse(sampling)?;
    let logits = logits.as_array();
    let rows: Vec<Vec<f32>> = logits.rows().into_iter().map(|r| r.to_vec()).collect();
    run(py, || {
        if rows.first().is_none_or(Vec::is_empty) {
            return Err(Error::InvalidInput("logits must be a non-empty [batch, vocab] array".into()));
        }
        if let Some(i) = rows.iter().position(|r| r.iter().any(|x| x.is_nan())) {
            return Err(Error::InvalidInput(format!("logits row {i} contains NaN")));
        }
        rows.iter()
            .enumerate()
            .map(|(i, row)| Ok(Sampler::new(config.clone(), i as u64)?.sample(row, &[]).token))
            .collect()
    })
}
