//! `SamplingConfig` from Python (a `ferrolm.SamplingConfig` or a dict of its
//! fields), checked by the core; and sampling rows of logits with it.

use ferrolm_core::sampling::Sampler;
use ferrolm_core::{Error, SamplingConfig};
use numpy::PyReadonlyArray2;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{run, to_py};

/// A checked sampling config, as a function argument.
pub struct Sampling(pub SamplingConfig);

impl<'a, 'py> FromPyObject<'a, 'py> for Sampling {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let fields =
            if obj.is_instance_of::<PyDict>() { obj.to_owned() } else { obj.call_method0("to_dict")? };
        let config: SamplingConfig = pythonize::depythonize(&fields)
            .map_err(|e| to_py(Error::InvalidInput(format!("invalid sampling config: {e}"))))?;
        config.validate().map_err(to_py)?;
        Ok(Sampling(config))
    }
}

/// Raises ValueError naming the field if the config is out of range.
#[pyfunction]
pub fn validate_sampling(sampling: Sampling) {
    let _ = sampling;
}

/// Draws one token per row of `logits` (`[batch, vocab]`) with the core's
/// sampler under `sampling`; row `i` uses random stream `i`, so a seeded
/// call is reproducible and its rows independent.
#[pyfunction]
pub fn sample_rows(
    py: Python<'_>,
    logits: PyReadonlyArray2<'_, f32>,
    sampling: Sampling,
) -> PyResult<Vec<u32>> {
    let config = sampling.0;
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
            .map(|(i, row)| Ok(Sampler::new(config.clone(), i as u64)?.sample(row, &[])?.token))
            .collect()
    })
}
