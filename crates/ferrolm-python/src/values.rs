//! Python dicts (and lists, strings, numbers) as serde values and back, so
//! configs cross the binding as Python objects, checked by the core.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::Value;

/// A Python object as a JSON-like value; `what` names it in the error.
pub fn from_py(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    pythonize::depythonize(obj).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// A JSON-like value as Python dicts, lists and scalars.
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, value).map_err(|e| PyValueError::new_err(e.to_string()))
}
