//! `_core.quantize_fp8` / `_core.dequantize_fp8`: numpy arrays to and from
//! the core's FP8 E4M3 matrices (`ferrolm_core::formats::fp8`).

use ferrolm_core::formats::fp8::{Fp8Layout, Fp8Tensor, MODEL_LAYOUT};
use ferrolm_core::formats::HostTensor;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{run, to_py};

/// `value` as a numpy array of `T`, or ValueError naming `arg` and the dtype it needs.
fn numpy_array<'py, T: numpy::Element>(
    value: &Bound<'py, PyAny>,
    arg: &str,
    dtype: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    value.extract::<PyReadonlyArrayDyn<'py, T>>().map_err(|_| {
        let got = value.getattr("dtype").map_or_else(|_| value.get_type().to_string(), |d| d.to_string());
        PyValueError::new_err(format!("{arg} must be a numpy {dtype} array, not {got}"))
    })
}

fn layout(block_size: Option<i64>, group_size: Option<i64>) -> PyResult<Fp8Layout> {
    match (block_size, group_size) {
        (Some(_), Some(_)) => Err(PyValueError::new_err("pass block_size or group_size, not both")),
        (_, Some(g)) if g >= 1 => Ok(Fp8Layout::Groups(g as usize)),
        (_, Some(g)) => Err(PyValueError::new_err(format!("group_size must be at least 1, got {g}"))),
        (block, None) => {
            Fp8Layout::from_block_size(block.map(|b| usize::try_from(b).unwrap_or(0))).map_err(to_py)
        }
    }
}

/// The group size of the layout `quantize="fp8"` gives a model's matrices.
pub fn model_group_size() -> usize {
    match MODEL_LAYOUT {
        Fp8Layout::Groups(g) => g,
        other => unreachable!("models use FP8 groups, not {other:?}"),
    }
}

/// Quantizes a float32 matrix to FP8 E4M3: returns `(codes, scales)`,
/// codes uint8 of the matrix's shape, scales float32 of shape `[rows]`
/// (per row: neither size given), `[ceil(rows / b), ceil(cols / b)]`
/// (`block_size=b`) or `[rows, ceil(cols / g)]` (`group_size=g`; models use
/// `FP8_GROUP_SIZE`).
#[pyfunction]
#[pyo3(signature = (array, block_size=None, group_size=None))]
pub fn quantize_fp8<'py>(
    py: Python<'py>,
    array: &Bound<'py, PyAny>,
    block_size: Option<i64>,
    group_size: Option<i64>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let layout = layout(block_size, group_size)?;
    let values = numpy_array::<f32>(array, "array", "float32")?;
    let w = HostTensor::new(values.shape().to_vec(), values.as_array().iter().copied().collect())
        .map_err(to_py)?;
    let q = run(py, || Fp8Tensor::quantize(&w, layout))?;
    let scale_shape = layout.scale_shape(q.rows(), q.cols());
    let codes = PyArray1::from_vec(py, q.codes).reshape(q.shape)?;
    let scales = PyArray1::from_vec(py, q.scales).reshape(scale_shape)?;
    Ok((codes.into_any(), scales.into_any()))
}

/// `codes` (uint8, 2-D) times their `scales` (float32, as `quantize_fp8`
/// returns them for the same `block_size` / `group_size`), as a float32 matrix.
#[pyfunction]
#[pyo3(signature = (codes, scales, block_size=None, group_size=None))]
pub fn dequantize_fp8<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    block_size: Option<i64>,
    group_size: Option<i64>,
) -> PyResult<Bound<'py, PyAny>> {
    let layout = layout(block_size, group_size)?;
    let (codes, scales) =
        (numpy_array::<u8>(codes, "codes", "uint8")?, numpy_array::<f32>(scales, "scales", "float32")?);
    let shape = codes.shape().to_vec();
    let codes = codes.as_array().iter().copied().collect();
    let scales = HostTensor::new(scales.shape().to_vec(), scales.as_array().iter().copied().collect())
        .map_err(to_py)?;
    let w = run(py, || Fp8Tensor::from_parts(&shape, codes, layout, scales)?.dequantize())?;
    Ok(PyArray1::from_vec(py, w.data).reshape(w.shape)?.into_any())
}
