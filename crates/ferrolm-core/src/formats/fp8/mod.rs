//! FP8 E4M3 weights with f32 scales (`quantize="fp8"`).
//!
//! A matrix `w` of shape `[rows, cols]` is stored as one E4M3 code per
//! value ([`e4m3`]) and f32 scales, `w ≈ decode(code) * scale`, in one of
//! three layouts ([`Fp8Layout`]):
//! - per output channel: one scale per row, `amax(row) / 448`;
//! - per group: one scale per `1 x g` run of a row ([`MODEL_LAYOUT`], groups
//!   of 32, is what `quantize="fp8"` makes at load and the CPU multiplies,
//!   for 4 bytes of scale per 32 weights: on SmolLM2 it raises perplexity
//!   over f32 by 0.9% on the first 1,024 tokens of the sample text (the part
//!   `tests/test_fp8.py` gates below 1%) and by 1.32% over all 5,097, where one
//!   scale per row costs 1.94%);
//! - per block: one scale per `b x b` block (`b` = 128 in HF FP8
//!   checkpoints, whose `weight_scale_inv` has shape
//!   `[ceil(rows / b), ceil(cols / b)]` and multiplies the codes).
//!
//! Quantization divides by the scale and rounds as torch's cast does, so a
//! matrix quantized here equals `(w / scale).to(torch.float8_e4m3fn)` code
//! for code (checked in `tests.rs`). An all-zero row or block gets scale 1
//! (its codes are 0 either way; 1 keeps every scale invertible).

pub mod e4m3;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

use super::HostTensor;
use crate::error::{Error, Result};

/// Block size of HF's FP8 checkpoints (`weight_block_size: [128, 128]`).
pub const HF_BLOCK: usize = 128;

/// The layout `quantize="fp8"` gives a model's matrices.
pub const MODEL_LAYOUT: Fp8Layout = Fp8Layout::Groups(32);

/// Where an FP8 matrix's scales apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Layout {
    /// One scale per row (output channel).
    PerRow,
    /// One scale per `b x b` block, row-major over the block grid.
    Blocks(usize),
    /// One scale per run of `g` values of a row (`[rows, ceil(cols / g)]`).
    Groups(usize),
}

impl Fp8Layout {
    /// `None` -> per row, `Some(b)` -> blocks of `b` (which must be positive).
    pub fn from_block_size(block_size: Option<usize>) -> Result<Fp8Layout> {
        match block_size {
            None => Ok(Fp8Layout::PerRow),
            Some(0) => Err(Error::InvalidInput(
                "block_size must be a positive number of values (e.g. 128), or None for per-row scales"
                    .into(),
            )),
            Some(b) => Ok(Fp8Layout::Blocks(b)),
        }
    }

    /// The shape of the scales of a `[rows, cols]` matrix.
    pub fn scale_shape(self, rows: usize, cols: usize) -> Vec<usize> {
        match self {
            Fp8Layout::PerRow => vec![rows],
            Fp8Layout::Blocks(b) => vec![rows.div_ceil(b), cols.div_ceil(b)],
            Fp8Layout::Groups(g) => vec![rows, cols.div_ceil(g)],
        }
    }
}

/// A row-major `[rows, cols]` matrix of E4M3 codes and its scales.
#[derive(Debug, Clone)]
pub struct Fp8Tensor {
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    pub layout: Fp8Layout,
    /// `rows * cols` codes.
    pub codes: Vec<u8>,
    /// `layout.scale_shape(rows, cols)` scales, row-major.
    pub scales: Vec<f32>,
}

/// The scale that maps `amax` onto E4M3's largest value (1 for zeros).
fn scale_for(amax: f32) -> f32 {
    if amax > 0.0 {
        amax / e4m3::MAX
    } else {
        1.0
    }
}

fn max_abs(values: impl Iterator<Item = f32>) -> f32 {
    values.fold(0f32, |m, v| m.max(v.abs()))
}

impl Fp8Tensor {
    /// Quantizes a 2-D f32 tensor. Fails on NaN or infinite values (a scale
    /// cannot cover them).
    pub fn quantize(w: &HostTensor, layout: Fp8Layout) -> Result<Fp8Tensor> {
        let [rows, cols] = w.shape[..] else {
            return Err(Error::InvalidInput(format!(
                "FP8 quantization takes a 2-D matrix, not shape {:?}",
                w.shape
            )));
        };
        if rows == 0 || cols == 0 {
            return Err(Error::InvalidInput(format!(
                "FP8 quantization needs a non-empty matrix, not shape {:?}",
                w.shape
            )));
        }
        if let Some(i) = w.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "cannot quantize to FP8: value {} at [{}, {}] is not finite",
                w.data[i],
                i / cols,
                i % cols
            )));
        }
        let mut codes = vec![0u8; rows * cols];
        let scales = match layout {
            Fp8Layout::PerRow => {
                let mut scales = vec![0f32; rows];
                codes.par_chunks_mut(cols).zip(w.data.par_chunks(cols)).zip(&mut scales).for_each(
                    |((q, row), s)| {
                        *s = scale_for(max_abs(row.iter().copied()));
                        encode_into(row, *s, q);
                    },
                );
                scales
            }
            Fp8Layout::Blocks(b) => {
                let grid_cols = cols.div_ceil(b);
                let mut scales = vec![0f32; rows.div_ceil(b) * grid_cols];
                // One task per band of `b` rows: it owns those rows' codes and scales.
                codes
                    .par_chunks_mut(b * cols)
                    .zip(w.data.par_chunks(b * cols))
                    .zip(scales.par_chunks_mut(grid_cols))
                    .for_each(|((q, band), s)| {
                        for (j, s) in s.iter_mut().enumerate() {
                            let span = j * b..((j + 1) * b).min(cols);
                            let block = || band.chunks(cols).map(|row| &row[span.clone()]);
                            *s = scale_for(max_abs(block().flatten().copied()));
                            for (q, row) in q.chunks_mut(cols).zip(block()) {
                                encode_into(row, *s, &mut q[span.clone()]);
                            }
                        }
                    });
                scales
            }
            Fp8Layout::Groups(g) => {
                let groups = cols.div_ceil(g);
                let mut scales = vec![0f32; rows * groups];
                codes
                    .par_chunks_mut(cols)
                    .zip(w.data.par_chunks(cols))
                    .zip(scales.par_chunks_mut(groups))
                    .for_each(|((q, row), s)| {
                        for ((q, run), s) in q.chunks_mut(g).zip(row.chunks(g)).zip(s) {
                            *s = scale_for(max_abs(run.iter().copied()));
                            encode_into(run, *s, q);
                        }
                    });
                scales
            }
        };
        Ok(Fp8Tensor { shape: [rows, cols], layout, codes, scales })
    }

    /// An FP8 matrix from its parts: `codes` of shape `shape` (2-D) and
    /// `scales` of shape `layout.scale_shape(rows, cols)`.
    pub fn from_parts(
        shape: &[usize],
        codes: Vec<u8>,
        layout: Fp8Layout,
        scales: HostTensor,
    ) -> Result<Fp8Tensor> {
        let &[rows, cols] = shape else {
            return Err(Error::InvalidInput(format!("codes must be a 2-D matrix, not shape {shape:?}")));
        };
        if codes.len() != rows * cols {
            return Err(Error::InvalidInput(format!(
                "codes hold {} values but shape [{rows}, {cols}] needs {}",
                codes.len(),
                rows * cols
            )));
        }
        let expected = layout.scale_shape(rows, cols);
        if scales.shape != expected {
            let per = match layout {
                Fp8Layout::PerRow => "one per row".to_string(),
                Fp8Layout::Blocks(b) => format!("one per {b}x{b} block"),
                Fp8Layout::Groups(g) => format!("one per 1x{g} group"),
            };
            return Err(Error::InvalidInput(format!(
                "scales for codes of shape [{rows}, {cols}] must have shape {expected:?} ({per}), not {:?}; \
                 pass the block_size they were made with",
                scales.shape
            )));
        }
        Ok(Fp8Tensor { shape: [rows, cols], layout, codes, scales: scales.data })
    }

    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    pub fn cols(&self) -> usize {
        self.shape[1]
    }

    /// The codes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.codes[r * self.cols()..(r + 1) * self.cols()]
    }

    /// The scale of row `r` (per-row layout only).
    pub fn row_scale(&self, r: usize) -> f32 {
        assert_eq!(self.layout, Fp8Layout::PerRow, "row_scale of a block-scaled FP8 matrix");
        self.scales[r]
    }

    /// The scale of element `[r, c]`.
    fn scale_at(&self, r: usize, c: usize) -> f32 {
        match self.layout {
            Fp8Layout::PerRow => self.scales[r],
            Fp8Layout::Blocks(b) => self.scales[(r / b) * self.cols().div_ceil(b) + c / b],
            Fp8Layout::Groups(g) => self.scales[r * self.cols().div_ceil(g) + c / g],
        }
    }

    /// The group scales of row `r` (group layout only).
    pub fn group_scales(&self, r: usize) -> &[f32] {
        let Fp8Layout::Groups(g) = self.layout else {
            panic!("group_scales of an FP8 matrix without groups")
        };
        let n = self.cols().div_ceil(g);
        &self.scales[r * n..(r + 1) * n]
    }

    /// `decode(code) * scale` of every value, as f32.
    pub fn dequantize(&self) -> Result<HostTensor> {
        let mut out = crate::error::try_zeroed(self.rows() * self.cols(), "dequantized FP8 matrix")?;
        out.par_chunks_mut(self.cols().max(1)).enumerate().for_each(|(r, o)| self.dequantize_row(r, o));
        HostTensor::new(self.shape.to_vec(), out)
    }

    /// Row `r` of [`Fp8Tensor::dequantize`] into `out`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (c, (o, &q)) in out.iter_mut().zip(self.row(r)).enumerate() {
            *o = e4m3::decode(q) * self.scale_at(r, c);
        }
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }
}

/// `q[i] = encode(x[i] / scale)`: division, as `(w / scale).to(float8)`.
fn encode_into(x: &[f32], scale: f32, q: &mut [u8]) {
    for (q, &v) in q.iter_mut().zip(x) {
        *q = e4m3::encode(v / scale);
    }
}

/// `w` quantized as a model's FP8 matrix ([`MODEL_LAYOUT`]) and back: the
/// values an FP8 model computes with, for backends that keep weights in
/// another dtype.
pub fn round_trip(w: &HostTensor) -> Result<HostTensor> {
    Fp8Tensor::quantize(w, MODEL_LAYOUT)?.dequantize()
}
