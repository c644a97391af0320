//! Core errors to Python exceptions (one exhaustive mapping), and the
//! wrapper that runs core work with the GIL released and panics caught.

use std::panic::{catch_unwind, AssertUnwindSafe};

use ferrolm_core::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyMemoryError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(msg),
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::InvalidConfig { .. }
        | Error::Unsupported(_)
        | Error::InvalidWeights(_)
        | Error::ShapeMismatch { .. }
        | Error::MissingTensor(_)
        | Error::UnexpectedTensor(_)
        | Error::InvalidTokenizer(_)
        | Error::InvalidInput(_)
        | Error::ContextOverflow { .. } => PyValueError::new_err(msg),
        Error::KvCacheFull { .. } => Python::attach(|py| match kv_cache_full_type(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), msg),
            Err(e) => e,
        }),
        Error::OutOfMemory { .. } | Error::DoesNotFit { .. } => PyMemoryError::new_err(msg),
        Error::Overloaded { .. } => EngineOverloadedError::new_err(msg),
        Error::EngineFailed(_) => EngineFailedError::new_err(msg),
        Error::EngineStopped => PyRuntimeError::new_err(msg),
        Error::DeviceUnavailable { .. } | Error::Gpu(_) | Error::Internal(_) => PyRuntimeError::new_err(msg),
    }
}

create_exception!(
    ferrolm._core,
    EngineOverloadedError,
    PyRuntimeError,
    "The engine's queue of requests not yet admitted is full (max_waiting): retry later."
);
create_exception!(
    ferrolm._core,
    EngineFailedError,
    PyRuntimeError,
    "The engine thread failed and stopped; the engine takes no more requests."
);

/// `KVCacheFullError`, raised when the KV page pool is short: a
/// RuntimeError, as MILI's "Insufficient pages in KV cache", and also a
/// ValueError, so that callers treating a request the pool cannot take as
/// bad input (the server's 400) still catch it.
pub fn kv_cache_full_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    TYPE.get_or_try_init(py, || {
        let bases = PyTuple::new(py, [py.get_type::<PyRuntimeError>(), py.get_type::<PyValueError>()])?;
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "ferrolm._core")?;
        namespace
            .set_item("__doc__", "The KV cache has too few free pages (a RuntimeError and a ValueError).")?;
        let ty = py.get_type::<PyType>().call1(("KVCacheFullError", bases, namespace))?;
        Ok(ty.cast_into::<PyType>()?.unbind())
    })
    .map(|ty| ty.bind(py))
}

/// Runs `work` without the GIL. A panic inside becomes RuntimeError instead
/// of unwinding into (or aborting) the interpreter.
pub fn run<T: Send>(py: Python<'_>, work: impl FnOnce() -> ferrolm_core::Result<T> + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(work)))
        .map_err(|panic| {
            let detail = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            PyRuntimeError::new_err(format!("internal error in ferrolm (please report it): {detail}"))
        })?
        .map_err(to_py)
}

/// Panics inside [`run`]; lets the tests prove a panic never reaches the interpreter.
#[pyfunction]
pub fn _panic_for_tests(py: Python<'_>, message: String) -> PyResult<()> {
    run(py, || -> ferrolm_core::Result<()> { panic!("{message}") })
}
