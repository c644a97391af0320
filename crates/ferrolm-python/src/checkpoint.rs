//! `_core.Checkpoint`: a model's stored tensors as numpy arrays, for MILI's
//! `WeightLoader`. Safetensors tensors numpy can represent (float32,
//! float16) are read-only views of the memory map (no copy); bfloat16 and
//! GGUF tensors are converted to float32 by the core's readers.

use std::path::PathBuf;

use ferrolm_core::formats::Bytes;
use ferrolm_core::model::{Checkpoint as CoreCheckpoint, Tensors};
use half::f16;
use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::{Element, PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;

use crate::errors::{run, to_py};

#[pyclass(module = "ferrolm._core", frozen)]
pub struct Checkpoint {
    source: Tensors,
}

/// Keeps the memory map a zero-copy array views alive (its numpy base).
#[pyclass(module = "ferrolm._core", frozen)]
struct MappedTensor {
    _bytes: Bytes,
}

#[pymethods]
impl Checkpoint {
    /// Opens a model directory (safetensors, sharded or not) or a `.gguf` file.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Checkpoint> {
        run(py, || Ok(Checkpoint { source: CoreCheckpoint::resolve(&path)?.tensors()? }))
    }

    /// Tensor names, sorted.
    fn names(&self) -> Vec<String> {
        let mut names = self.source.source().names();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> PyResult<Vec<usize>> {
        self.source.source().shape(name).map_err(to_py)
    }

    #[getter]
    fn format(&self) -> &'static str {
        match self.source {
            Tensors::Safetensors(_) => "safetensors",
            Tensors::Gguf(_) => "gguf",
        }
    }

    /// Tensor `name` as a numpy array: a read-only view of the file when
    /// numpy has its stored dtype (float32, float16), else a float32 copy.
    fn tensor<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        if let Tensors::Safetensors(dir) = &self.source {
            let raw = dir.raw(name).map_err(to_py)?;
            let view = match raw.dtype.as_str() {
                "float32" => borrow::<f32>(py, raw.bytes, &raw.shape)?,
                "float16" => borrow::<f16>(py, raw.bytes, &raw.shape)?,
                _ => None,
            };
            if let Some(view) = view {
                return Ok(view);
            }
        }
        let tensor = run(py, || self.source.source().read(name))?;
        Ok(PyArray1::from_vec(py, tensor.data).reshape(tensor.shape)?.into_any())
    }
}

/// A read-only numpy view of `bytes` as `T`s of `shape`; `None` when the
/// bytes are not aligned for `T` (the caller copies instead).
fn borrow<'py, T: Element>(
    py: Python<'py>,
    bytes: Bytes,
    shape: &[usize],
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let ptr = bytes.as_ptr();
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>())
        || bytes.len() != shape.iter().product::<usize>() * std::mem::size_of::<T>()
    {
        return Ok(None);
    }
    // SAFETY: `ptr` is aligned and spans exactly `shape`'s elements (checked
    // above); the bytes live in a memory map owned by `owner`, which becomes
    // the array's base, so they outlive the array and never move.
    let view = unsafe { ArrayViewD::from_shape_ptr(IxDyn(shape), ptr.cast::<T>()) };
    let owner = Bound::new(py, MappedTensor { _bytes: bytes })?.into_any();
    let array = unsafe { PyArrayDyn::<T>::borrow_from_array(&view, owner) };
    // The map is read-only: writing through the array must be refused by
    // numpy rather than fault.
    array.getattr("flags")?.setattr("writeable", false)?;
    Ok(Some(array.into_any()))
}
