//! Linear layers on the CPU: `out = x @ w^T` for every weight format.
//!
//! - f32 weights (f32 checkpoints, or any model in exact mode) go through
//!   the `gemm` crate.
//! - Packed weights stay packed. The input rows are prepared once (quantized
//!   to [`Q8Block`]s, or kept f32 for halves) for every weight that reads
//!   them, then one parallel pass covers the output rows of all those
//!   weights: each task takes a range of weight rows and multiplies every
//!   row by the input rows four at a time (GEMM-shaped for a prompt; a
//!   GEMV split by rows over the threads for one decode token).
//! - FP8 E4M3 weights (`quantize="fp8"`) are dequantized on the fly against
//!   f32 activations, like halves: a dot product per row for one input row;
//!   for several, each task widens its weight rows to f32 and multiplies
//!   them with all input rows in one (serial) `gemm` call.

use std::borrow::Cow;
use std::cell::RefCell;

use rayon::prelude::*;

use super::quant::interleave::{Interleaved, ROWS};
use super::quant::{self, Isa, Q8Block, QK};
use crate::formats::fp8::{Fp8Layout, Fp8Tensor};
use crate::formats::{HostTensor, PackedTensor};

/// A parameter on the CPU: f32, or packed as the checkpoint stores it.
#[derive(Debug, Clone)]
pub enum CpuWeight {
    F32(HostTensor),
    Packed(PackedTensor),
    /// Q4_0/Q4_1/Q8_0 rows in groups of eight (SIMD kernels only).
    Interleaved(Interleaved),
    /// FP8 E4M3 codes with scales per row or per group of a row (`quantize="fp8"`: groups of 32).
    Fp8(Fp8Tensor),
}

impl CpuWeight {
    pub fn shape(&self) -> &[usize] {
        match self {
            CpuWeight::F32(t) => &t.shape,
            CpuWeight::Packed(p) => &p.shape,
            CpuWeight::Interleaved(w) => &w.shape,
            CpuWeight::Fp8(w) => &w.shape,
        }
    }

    /// The matrix the quantized kernels multiply; `None` for f32 weights.
    pub(super) fn matrix(&self) -> Option<Matrix<'_>> {
        match self {
            CpuWeight::F32(_) => None,
            CpuWeight::Packed(p) => Some(Matrix::Rows(p)),
            CpuWeight::Interleaved(w) => Some(Matrix::Groups(w)),
            CpuWeight::Fp8(w) => Some(Matrix::Fp8(w)),
        }
    }

    /// The f32 data of a 1-D parameter (norm weights and biases are always f32).
    pub fn f32_data(&self) -> &[f32] {
        match self {
            CpuWeight::F32(t) => &t.data,
            other => panic!("packed tensor {:?} used as an f32 vector", other.shape()),
        }
    }
}

/// Input rows prepared for packed weights: quantized blocks for integer
/// kernels, the f32 rows themselves for halves.
pub(super) struct Prepared<'a> {
    /// The f32 rows: normalized when a norm was given and a half weight
    /// reads them, else the input as given (integer kernels read `q8`).
    pub x: Cow<'a, [f32]>,
    pub rows: usize,
    pub k: usize,
    pub q8: Vec<Q8Block>,
}

impl<'a> Prepared<'a> {
    /// Prepares the `x.len() / k` rows of `x` for `weights`, RMS-normalizing
    /// each row first when `norm` (weight, eps) is given. Normalization and
    /// quantization are one pass: the normalized rows are only materialized
    /// when a half-precision weight needs them.
    pub fn new(x: &'a [f32], k: usize, norm: Option<(&[f32], f32)>, weights: &[Matrix]) -> Prepared<'a> {
        let rows = x.len() / k;
        let wants_q8 = weights.iter().any(Matrix::uses_q8);
        let wants_f32 = weights.iter().any(|w| !w.uses_q8());
        let x: Cow<'a, [f32]> = match norm {
            Some((weight, eps)) if wants_f32 => {
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(k).zip(x.par_chunks(k)).with_min_len(8).for_each(|(o, x)| {
                    rms_norm_row(x, weight, eps, o);
                });
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(x),
        };
        let q8 = if wants_q8 {
            let per_row = k / QK;
            let mut q8 = Q8_SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
            q8.clear();
            q8.resize(rows * per_row, Q8Block::default());
            let fused = norm.filter(|_| !wants_f32);
            q8.par_chunks_mut(per_row.max(1)).zip(x.par_chunks(k)).with_min_len(8).for_each(|(q, x)| {
                match fused {
                    Some((weight, eps)) => quantize_normed_row(x, weight, eps, q),
                    None => quant::quantize_rows(x, q),
                }
            });
            q8
        } else {
            Vec::new()
        };
        Prepared { x, rows, k, q8 }
    }

    fn q8_row(&self, t: usize) -> &[Q8Block] {
        let per_row = self.k / QK;
        &self.q8[t * per_row..(t + 1) * per_row]
    }
}

thread_local! {
    /// Quantized-activation buffer of this thread, reused by the next input.
    static Q8_SPARE: RefCell<Vec<Q8Block>> = const { RefCell::new(Vec::new()) };
    /// Scratch floats of this thread (see [`with_spare`]).
    static F32_SPARE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        let q8 = std::mem::take(&mut self.q8);
        Q8_SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if q8.capacity() > s.capacity() {
                *s = q8;
            }
        });
    }
}

/// Runs `f` on `len` floats of this thread's scratch (kept between calls,
/// so steady-state work allocates nothing; contents are left over, not zeroed).
pub(super) fn with_spare<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = F32_SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    F32_SPARE.with(|s| *s.borrow_mut() = buf);
    result
}

/// HF's `LlamaRMSNorm` of one row: `w * (x / sqrt(mean(x²) + eps))`.
pub(super) fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let inv = inv_rms(x, eps);
    for ((o, x), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (x * inv);
    }
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

/// [`rms_norm_row`] then [`quant::quantize_rows`], 32 values at a time
/// through a stack buffer (the normalized row never reaches memory).
fn quantize_normed_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [Q8Block]) {
    let inv = inv_rms(x, eps);
    let mut block = [0f32; QK];
    for ((q, x), w) in out.iter_mut().zip(x.chunks_exact(QK)).zip(weight.chunks_exact(QK)) {
        for ((b, x), w) in block.iter_mut().zip(x).zip(w) {
            *b = w * (x * inv);
        }
        quant::quantize_rows(&block, std::slice::from_mut(q));
    }
}

/// Input rows per tile: their quantized blocks stay in L2 while every
/// weight row of a task passes over them.
const TOKEN_TILE: usize = 64;

/// A quantized matrix as the kernels see it: rows as stored, groups of
/// eight interleaved rows, or FP8 rows with their scales.
#[derive(Clone, Copy)]
pub(super) enum Matrix<'a> {
    Rows(&'a PackedTensor),
    Groups(&'a Interleaved),
    Fp8(&'a Fp8Tensor),
}

impl Matrix<'_> {
    /// Whether the kernels read the input as [`Q8Block`]s (else as f32).
    pub fn uses_q8(&self) -> bool {
        match self {
            Matrix::Rows(p) => quant::uses_q8(p.ty),
            Matrix::Groups(w) => quant::uses_q8(w.ty),
            Matrix::Fp8(_) => false,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Matrix::Rows(p) => p.rows(),
            Matrix::Groups(w) => w.rows(),
            Matrix::Fp8(w) => w.rows(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::Rows(p) => p.cols(),
            Matrix::Groups(w) => w.cols(),
            Matrix::Fp8(w) => w.cols(),
        }
    }

    /// Rows per parallel task: see [`rows_per_task`]; whole groups for
    /// interleaved matrices.
    pub fn task_rows(&self, threads: usize, tokens: usize) -> usize {
        let n = rows_per_task(self.rows(), threads, tokens);
        match self {
            Matrix::Rows(_) | Matrix::Fp8(_) => n,
            Matrix::Groups(_) => n.next_multiple_of(ROWS),
        }
    }

    /// Calls `write(t, r, dot(row r, input row t))` for every weight row `r`
    /// in `rows` (whole groups for interleaved matrices) and every input row `t`.
    pub fn compute(
        &self,
        isa: Isa,
        p: &Prepared,
        rows: std::ops::Range<usize>,
        write: impl FnMut(usize, usize, f32),
    ) {
        match self {
            Matrix::Rows(w) => packed_rows(isa, w, p, rows, write),
            Matrix::Groups(w) => grouped_rows(isa, w, p, rows, write),
            Matrix::Fp8(w) => fp8_rows(isa, w, p, rows, write),
        }
    }
}

fn grouped_rows(
    isa: Isa,
    w: &Interleaved,
    p: &Prepared,
    rows: std::ops::Range<usize>,
    mut write: impl FnMut(usize, usize, f32),
) {
    let mut dots = [[0f32; ROWS]; 4];
    // Tiles of more than four input rows unpack each group's values once.
    let unpacked_len = quant::unpacked_len(isa, w.ty, w.group_bytes()).filter(|_| p.rows > 4);
    let mut pre = vec![0u8; unpacked_len.unwrap_or(0)];
    for tile in (0..p.rows).step_by(TOKEN_TILE) {
        let tile_end = (tile + TOKEN_TILE).min(p.rows);
        for g in rows.start / ROWS..rows.end.div_ceil(ROWS) {
            let group = w.group(g);
            if unpacked_len.is_some() {
                quant::unpack_x8(isa, w.ty, group, &mut pre);
            }
            for t0 in (tile..tile_end).step_by(4) {
                let n = (tile_end - t0).min(4);
                let acts: [&[Q8Block]; 4] = std::array::from_fn(|i| p.q8_row(t0 + i.min(n - 1)));
                if unpacked_len.is_some() {
                    quant::dot_x8_unpacked(isa, w.ty, group, &pre, &acts[..n], &mut dots[..n]);
                } else {
                    quant::dot_x8(isa, w.ty, group, &acts[..n], &mut dots[..n]);
                }
                for (i, row) in dots[..n].iter().enumerate() {
                    for (j, &d) in row.iter().enumerate() {
                        write(t0 + i, g * ROWS + j, d);
                    }
                }
            }
        }
    }
}

/// Calls `write(t, r, dot(w.row(r), input row t))` for every weight row `r`
/// in `rows` and every input row `t`: integer dot products against the
/// quantized input rows, or (halves) f32 ones against the rows themselves,
/// four input rows at a time. Each row's sum runs the same operations
/// whichever rows share the call, so a row's result does not depend on the
/// batch (a GEMM's would).
fn packed_rows(
    isa: Isa,
    w: &PackedTensor,
    p: &Prepared,
    rows: std::ops::Range<usize>,
    mut write: impl FnMut(usize, usize, f32),
) {
    let q8 = quant::uses_q8(w.ty);
    let mut dots = [0f32; 4];
    for tile in (0..p.rows).step_by(TOKEN_TILE) {
        let tile_end = (tile + TOKEN_TILE).min(p.rows);
        for r in rows.clone() {
            let wr = w.row(r);
            for t0 in (tile..tile_end).step_by(4) {
                let n = (tile_end - t0).min(4);
                let row = |i: usize| t0 + i.min(n - 1);
                if q8 {
                    let acts: [&[Q8Block]; 4] = std::array::from_fn(|i| p.q8_row(row(i)));
                    quant::dot_q8(isa, w.ty, wr, &acts[..n], &mut dots[..n]);
                } else {
                    let xs: [&[f32]; 4] = std::array::from_fn(|i| &p.x[row(i) * p.k..][..p.k]);
                    quant::dot_half_rows(isa, w.ty, wr, &xs[..n], &mut dots[..n]);
                }
                for (i, &d) in dots[..n].iter().enumerate() {
                    write(t0 + i, r, d);
                }
            }
        }
    }
}

/// [`packed_rows`] for FP8 rows: a row's scale (or each group's) multiplies
/// its dot product, or each widened value.
fn fp8_rows(
    isa: Isa,
    w: &Fp8Tensor,
    p: &Prepared,
    rows: std::ops::Range<usize>,
    mut write: impl FnMut(usize, usize, f32),
) {
    match w.layout {
        Fp8Layout::PerRow if p.rows == 1 => {
            let mut r = rows.start;
            while r + 4 <= rows.end {
                let dots = quant::dot_fp8_x4(isa, std::array::from_fn(|i| w.row(r + i)), &p.x);
                for (i, d) in dots.into_iter().enumerate() {
                    write(0, r + i, w.row_scale(r + i) * d);
                }
                r += 4;
            }
            for r in r..rows.end {
                write(0, r, w.row_scale(r) * quant::dot_fp8(isa, w.row(r), &p.x));
            }
        }
        Fp8Layout::PerRow => {
            widened_rows(p, rows, |r, wide| quant::widen_fp8(isa, w.row(r), w.row_scale(r), wide), write)
        }
        Fp8Layout::Groups(g) if p.rows == 1 => {
            for r in rows {
                write(0, r, quant::dot_fp8_groups(isa, w.row(r), &p.x, w.group_scales(r), g));
            }
        }
        Fp8Layout::Groups(g) => widened_rows(
            p,
            rows,
            |r, wide| {
                for ((q, out), &s) in w.row(r).chunks(g).zip(wide.chunks_mut(g)).zip(w.group_scales(r)) {
                    quant::widen_fp8(isa, q, s, out);
                }
            },
            write,
        ),
        Fp8Layout::Blocks(_) => {
            unreachable!("the CPU keeps FP8 matrices per row or per group (quantize=\"fp8\")")
        }
    }
}

/// Several input rows (f32): widens the weight rows to f32 (`widen(r,
/// out)`), then multiplies them with every input row in one GEMM.
fn widened_rows(
    p: &Prepared,
    rows: std::ops::Range<usize>,
    widen: impl Fn(usize, &mut [f32]),
    mut write: impl FnMut(usize, usize, f32),
) {
    let n = rows.len();
    let mut wide = vec![0f32; n * p.k + p.rows * n];
    let (wide, out) = wide.split_at_mut(n * p.k);
    for (r, w) in rows.clone().zip(wide.chunks_exact_mut(p.k)) {
        widen(r, w);
    }
    // Each task is one of many run in parallel: its GEMM runs serially.
    gemm_xwt(&p.x, wide, p.k, out, gemm::Parallelism::None);
    for (t, o) in out.chunks_exact(n).enumerate() {
        for (r, &v) in rows.clone().zip(o) {
            write(t, r, v);
        }
    }
}

/// `out = x @ w^T` for row-major `x` (`[m, k]`), `w` (`[n, k]`) and `out`
/// (`[m, n]`), through the `gemm` crate.
pub(super) fn gemm_xwt(x: &[f32], w: &[f32], k: usize, out: &mut [f32], parallelism: gemm::Parallelism) {
    let (m, n) = (x.len() / k, w.len() / k);
    assert_eq!(x.len(), m * k, "linear: input width does not match weight");
    assert_eq!(w.len(), n * k, "linear: weight is not whole rows");
    assert_eq!(out.len(), m * n, "linear: output size does not match");
    // SAFETY: the pointers cover m*k (x), n*k (w) and m*n (out) f32s, as
    // asserted above; strides describe row-major x and out, and w read
    // as its transpose (k x n with column stride k).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A shared pointer to an output matrix that parallel tasks write at
/// disjoint positions.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub *mut f32);
// SAFETY: tasks write disjoint elements (each owns a range of columns).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` is inside the buffer and no other task writes it.
    pub unsafe fn write(self, i: usize, v: f32) {
        unsafe { *self.0.add(i) = v }
    }

    /// # Safety
    /// `i..i + v.len()` is inside the buffer and no other task writes it.
    pub unsafe fn write_slice(self, i: usize, v: &[f32]) {
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.0.add(i), v.len()) }
    }
}

/// Weight rows per parallel task: enough tasks to balance the threads,
/// few enough that each amortises its scheduling.
pub(super) fn rows_per_task(total_rows: usize, threads: usize, tokens: usize) -> usize {
    let tasks = (threads * 8).max(1);
    let min = if tokens > 1 { 4 } else { 32 };
    total_rows.div_ceil(tasks).max(min)
}

/// `Σ a[i] * b[i]` with independent partial sums (vectorized by the compiler).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
