//! `_core.perplexity`: the core's perplexity over a loaded `_core.Model`.

use ferrolm_core::on_device;
use pyo3::prelude::*;

use crate::errors::run;
use crate::model::Model;
use crate::tokens::token_ids;

/// Perplexity of `model` on `tokens` in windows of `context` tokens:
/// `(perplexity, mean_nll, tokens_scored, windows)`. `progress(done, total)`
/// is called with the GIL after each forward pass; its exceptions are raised
/// once the run is over.
#[pyfunction]
#[pyo3(signature = (model, tokens, context, progress=None))]
pub fn perplexity(
    py: Python<'_>,
    model: &Model,
    tokens: Vec<i64>,
    context: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<(f64, f64, usize, usize)> {
    let mut failed: Option<PyErr> = None;
    let result = run(py, || {
        let tokens = token_ids(tokens)?;
        let report = |done: usize, total: usize| {
            if let (Some(callback), None) = (&progress, &failed) {
                failed = Python::attach(|py| callback.call1(py, (done, total)).err());
            }
        };
        on_device!(model.shared(), |m| ferrolm_core::perplexity(&m, &tokens, context, report))
    })?;
    match failed {
        Some(err) => Err(err),
        None => Ok((result.perplexity, result.mean_nll, result.tokens_scored, result.windows)),
    }
}
