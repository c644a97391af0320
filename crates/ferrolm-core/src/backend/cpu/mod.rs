//! The CPU backend.
//!
//! Weights keep the format they were stored in: GGUF blocks and f16/bf16
//! halves are multiplied as they are by the kernels in [`quant`] (integer
//! dot products against 8-bit quantized activations, SIMD chosen at run
//! time), f32 weights through the `gemm` crate. [`CpuOptions::exact`] turns
//! this off: every weight is widened to f32 at load and the KV cache is
//! f32, the dequantized reference path that HF's numbers are compared with.
//! [`CpuOptions::quantize`] converts matrices at load (ggml blocks, or FP8
//! E4M3 for the layers' linear projections).
//! Work runs on the backend's own thread pool ([`CpuOptions::threads`]).

mod attention;
mod kv;
mod matmul;
mod memory;
pub mod quant;
#[cfg(test)]
mod tests;
mod vmath;

use std::sync::Arc;

use rayon::prelude::*;

pub use self::kv::CpuKv;
pub use self::matmul::CpuWeight;
use self::matmul::{rms_norm_row, with_spare, Matrix, OutPtr, Prepared};
pub use self::memory::host_memory_available;
use self::quant::interleave::Interleaved;
use self::quant::Isa;
use super::{AttentionShape, Backend, Device, KvGeometry, KvPart, SeqSpan};
use crate::error::{try_zeroed, Error, Result};
use crate::formats::fp8::{Fp8Tensor, MODEL_LAYOUT};
use crate::formats::{Bytes, DType, GgmlType, HostTensor, PackedTensor, Quantize, StoredTensor};

/// How the CPU backend runs.
#[derive(Debug, Clone, Default)]
pub struct CpuOptions {
    /// Worker threads; `None`: `FERROLM_NUM_THREADS`, else the number of
    /// physical cores.
    pub threads: Option<usize>,
    /// Widen every weight to f32 at load and keep the KV cache in f32: the
    /// dequantized reference path (slower, more memory).
    pub exact: bool,
    /// Kernel instruction set; `None`: the best this CPU runs (tests pin it).
    pub isa: Option<Isa>,
}

/// The CPU backend.
#[derive(Debug, Clone)]
pub struct Cpu {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    isa: Isa,
    exact: bool,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new(CpuOptions::default()).expect("the default CPU backend")
    }
}

/// `FERROLM_NUM_THREADS`, else the physical core count.
pub fn default_threads() -> Result<usize> {
    match std::env::var("FERROLM_NUM_THREADS") {
        Ok(v) => v.trim().parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            Error::InvalidInput(format!("FERROLM_NUM_THREADS={v:?} is not a positive whole number"))
        }),
        Err(_) => Ok(num_cpus::get_physical().max(1)),
    }
}

impl Cpu {
    pub fn new(options: CpuOptions) -> Result<Cpu> {
        let threads = match options.threads {
            Some(0) => return Err(Error::InvalidInput("threads must be at least 1".into())),
            Some(n) => n,
            None => default_threads()?,
        };
        let isa = options.isa.unwrap_or_else(Isa::detect);
        if !Isa::available().contains(&isa) {
            return Err(Error::Unsupported(format!("this CPU cannot run the {isa:?} kernels")));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ferrolm-cpu-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("cannot start {threads} CPU threads: {e}")))?;
        Ok(Cpu { pool: Arc::new(pool), threads, isa, exact: options.exact })
    }

    /// The dequantized f32 reference path (see [`CpuOptions::exact`]).
    pub fn exact() -> Cpu {
        Cpu::new(CpuOptions { exact: true, ..Default::default() }).expect("the exact CPU backend")
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// `out = x @ w^T` with an f32 weight, through the `gemm` crate.
    fn gemm_f32(&self, x: &[f32], w: &HostTensor, out: &mut [f32]) {
        let (n, k) = (w.shape[0], w.shape[1]);
        let m = x.len() / k;
        let parallelism = if m * n * k >= 1 << 16 && self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        };
        matmul::gemm_xwt(x, &w.data, k, out, parallelism);
    }

    /// All output rows of several quantized matrices over one prepared
    /// input, in one parallel pass.
    fn packed_linears(&self, p: &Prepared, weights: &[Matrix], outs: &mut [&mut Vec<f32>]) {
        let mut jobs = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            assert_eq!(outs[i].len(), p.rows * w.rows(), "linear: output size does not match");
            let step = w.task_rows(self.threads, p.rows);
            jobs.extend((0..w.rows()).step_by(step).map(|r| (i, r..(r + step).min(w.rows()))));
        }
        let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
        jobs.into_par_iter().for_each(|(i, rows)| {
            let (w, out, n) = (weights[i], ptrs[i], weights[i].rows());
            // SAFETY: `out` holds p.rows * n values (asserted above) and
            // each job writes only its own rows' columns.
            w.compute(self.isa, p, rows, |t, r, v| unsafe { out.write(t * n + r, v) });
        });
    }

    /// Fused projections of one input: prepares it once (normalizing it
    /// first when `norm` is given), then all outputs in one pass. `None`
    /// when a weight is f32 (the caller takes the unfused path).
    fn fused_linears(
        &self,
        x: &[f32],
        norm: Option<(&[f32], f32)>,
        projs: &[(&CpuWeight, Option<&CpuWeight>)],
        outs: &mut [&mut Vec<f32>],
    ) -> Option<()> {
        let matrices: Vec<Matrix> = projs.iter().map(|(w, _)| w.matrix()).collect::<Option<_>>()?;
        let p = Prepared::new(x, matrices[0].cols(), norm, &matrices);
        self.packed_linears(&p, &matrices, outs);
        for ((_, bias), out) in projs.iter().zip(outs.iter_mut()) {
            if let Some(b) = bias {
                add_bias(out, b.f32_data());
            }
        }
        Some(())
    }
}

/// The resident form of a packed matrix: interleaved in groups of eight
/// rows when the kernels have that layout, as stored otherwise.
fn resident(isa: Isa, p: PackedTensor) -> CpuWeight {
    if quant::interleaves(isa) && Interleaved::fits(&p) {
        CpuWeight::Interleaved(Interleaved::new(&p))
    } else {
        CpuWeight::Packed(p)
    }
}

/// `tensor` quantized to `ty` (falling back from Q4_K to Q8_0 for rows that
/// are not whole super-blocks); unchanged when already quantized or when
/// rows are not whole blocks of 32.
fn quantize_matrix(tensor: StoredTensor, ty: GgmlType) -> Result<StoredTensor> {
    if let StoredTensor::Packed(p) = &tensor {
        if quant::uses_q8(p.ty) {
            return Ok(tensor);
        }
    }
    let cols = tensor.shape()[1];
    let ty = if ty == GgmlType::Q4_K && !cols.is_multiple_of(256) { GgmlType::Q8_0 } else { ty };
    if !cols.is_multiple_of(quant::QK) {
        return Ok(tensor);
    }
    let host = tensor.into_host()?;
    let data = crate::formats::quantize::quantize(ty, &host.data)?;
    PackedTensor::new(host.shape, ty, Bytes::Owned(data)).map(StoredTensor::Packed)
}

fn add_bias(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_mut(bias.len()) {
        for (o, b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// `g[i] = silu(g[i]) * u[i]`, `silu(x) = x / (1 + exp(-x))` (eight at a
/// time with AVX2, whose `exp` is within 2 ulp of libm's).
fn silu_mul_in_place(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if quant::x86_simd() {
        // SAFETY: AVX2/FMA were detected.
        return unsafe { vmath::silu_mul(g, u) };
    }
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Largest head_dim / 2 the CPU's RoPE handles (its angle table is on the stack).
const MAX_HALF_HEAD: usize = 512;

/// Elementwise ops below this many values run on the calling thread.
const SERIAL_BELOW: usize = 1 << 14;

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type Kv = CpuKv;

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn memory_available(&self) -> Option<usize> {
        host_memory_available()
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Matrices the kernels multiply stay packed (unless exact); everything
    /// else becomes f32. `quantize`: FP8 E4M3 with one scale per 32 weights
    /// of a row, or ggml blocks (Q8_0 / Q4_K, see [`quantize_matrix`]).
    fn upload(&self, tensor: StoredTensor, quantize: Option<Quantize>) -> Result<CpuWeight> {
        let tensor = match quantize {
            Some(Quantize::Fp8) => {
                return Ok(CpuWeight::Fp8(Fp8Tensor::quantize(&tensor.into_host()?, MODEL_LAYOUT)?));
            }
            Some(Quantize::Ggml(ty)) if tensor.shape().len() == 2 => quantize_matrix(tensor, ty)?,
            _ => tensor,
        };
        match tensor {
            StoredTensor::Packed(p) if !self.exact && p.shape.len() == 2 && quant::is_supported(p.ty) => {
                let k = p.cols();
                let block = p.ty.block_layout().map_or(1, |b| b.0);
                if quant::uses_q8(p.ty) && (k % quant::QK != 0 || k % block != 0) {
                    return Ok(CpuWeight::F32(p.dequantize()?));
                }
                Ok(resident(self.isa, p))
            }
            other => Ok(CpuWeight::F32(other.into_host()?)),
        }
    }

    fn weight_dtype(&self) -> Option<DType> {
        self.exact.then_some(DType::F32)
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        try_zeroed(len, "activations")
    }

    fn to_host(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn select_rows(&self, x: &Vec<f32>, width: usize, rows: &[usize]) -> Result<Vec<f32>> {
        let mut out = try_zeroed(rows.len() * width, "activations")?;
        for (o, &r) in out.chunks_mut(width).zip(rows) {
            o.copy_from_slice(&x[r * width..(r + 1) * width]);
        }
        Ok(out)
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn embedding(&self, table: &CpuWeight, ids: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let dim = table.shape()[1];
        self.pool.install(|| {
            out.par_chunks_mut(dim).zip(ids.par_iter()).with_min_len(16).try_for_each(|(row, &id)| {
                let id = id as usize;
                match table {
                    CpuWeight::F32(t) => {
                        row.copy_from_slice(&t.data[id * dim..(id + 1) * dim]);
                        Ok(())
                    }
                    CpuWeight::Packed(p) => crate::formats::dequantize::dequantize(p.ty, p.row(id), row),
                    CpuWeight::Interleaved(w) => {
                        crate::formats::dequantize::dequantize(w.ty, &w.row(id), row)
                    }
                    CpuWeight::Fp8(w) => {
                        w.dequantize_row(id, row);
                        Ok(())
                    }
                }
            })
        })
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        eps: f32,
        dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let w = weight.f32_data();
        self.pool.install(|| {
            out.par_chunks_mut(dim)
                .zip(x.par_chunks(dim))
                .with_min_len(SERIAL_BELOW / dim + 1)
                .for_each(|(o, x)| rms_norm_row(x, w, eps, o));
        });
        Ok(())
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        w: &CpuWeight,
        bias: Option<&CpuWeight>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.linears(x, &[(w, bias)], &mut [out])
    }

    fn linears(
        &self,
        x: &Vec<f32>,
        projs: &[(&CpuWeight, Option<&CpuWeight>)],
        outs: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        self.pool.install(|| {
            if self.fused_linears(x, None, projs, outs).is_some() {
                return;
            }
            // Some weight is f32: each projection on its own path.
            for (proj, out) in projs.iter().zip(outs.iter_mut()) {
                if let (CpuWeight::F32(t), bias) = proj {
                    self.gemm_f32(x, t, out);
                    if let Some(b) = bias {
                        add_bias(out, b.f32_data());
                    }
                } else {
                    self.fused_linears(x, None, std::slice::from_ref(proj), std::slice::from_mut(out));
                }
            }
        });
        Ok(())
    }

    fn norm_linears(
        &self,
        x: &Vec<f32>,
        norm: &CpuWeight,
        eps: f32,
        dim: usize,
        projs: &[(&CpuWeight, Option<&CpuWeight>)],
        outs: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        if self.pool.install(|| self.fused_linears(x, Some((norm.f32_data(), eps)), projs, outs)).is_some() {
            return Ok(());
        }
        let mut h = self.zeros(x.len())?;
        self.rms_norm(x, norm, eps, dim, &mut h)?;
        self.linears(&h, projs, outs)
    }

    fn swiglu(
        &self,
        x: &Vec<f32>,
        (gate, gate_bias): (&CpuWeight, Option<&CpuWeight>),
        (up, up_bias): (&CpuWeight, Option<&CpuWeight>),
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (Some(g), Some(u)) = (gate.matrix(), up.matrix()) else {
            let mut up_out = self.zeros(out.len())?;
            self.linears(x, &[(gate, gate_bias), (up, up_bias)], &mut [&mut *out, &mut up_out])?;
            return self.silu_mul(out, &up_out);
        };
        let (gate_bias, up_bias) = (gate_bias.map(CpuWeight::f32_data), up_bias.map(CpuWeight::f32_data));
        // Row `r`'s bias, added to the product as `linear` adds it.
        let bias = |b: Option<&[f32]>, r: usize| b.map_or(0.0, |b| b[r]);
        let n = g.rows();
        self.pool.install(|| {
            let p = Prepared::new(x, g.cols(), None, &[g, u]);
            assert_eq!(out.len(), p.rows * n, "swiglu: output size does not match");
            let step = g.task_rows(self.threads, p.rows).max(u.task_rows(self.threads, p.rows));
            let ptr = OutPtr(out.as_mut_ptr());
            (0..n).into_par_iter().step_by(step).for_each(|r0| {
                let rows = r0..(r0 + step).min(n);
                let width = rows.len();
                with_spare(2 * p.rows * width, |spare| {
                    let (gate_out, up_out) = spare.split_at_mut(p.rows * width);
                    g.compute(self.isa, &p, rows.clone(), |t, r, v| {
                        gate_out[t * width + r - r0] = v + bias(gate_bias, r)
                    });
                    u.compute(self.isa, &p, rows, |t, r, v| {
                        up_out[t * width + r - r0] = v + bias(up_bias, r)
                    });
                    for (t, (g, u)) in gate_out.chunks_mut(width).zip(up_out.chunks(width)).enumerate() {
                        silu_mul_in_place(g, u);
                        // SAFETY: `out` holds p.rows * n values (asserted above);
                        // this task writes only columns r0..r0 + width.
                        unsafe { ptr.write_slice(t * n + r0, g) };
                    }
                });
            });
        });
        Ok(())
    }

    fn rope(&self, x: &mut Vec<f32>, positions: &[u32], head_dim: usize, inv_freq: &[f32]) -> Result<()> {
        let width = x.len() / positions.len();
        let half = head_dim / 2;
        if half > MAX_HALF_HEAD {
            return Err(Error::Unsupported(format!(
                "head_dim {head_dim} is larger than the CPU's RoPE supports"
            )));
        }
        self.pool.install(|| {
            x.par_chunks_mut(width).zip(positions.par_iter()).with_min_len(16).for_each(|(row, &pos)| {
                // Angles are rounded to f32 before cos/sin, as HF computes them.
                let (mut cos, mut sin) = ([0f32; MAX_HALF_HEAD], [0f32; MAX_HALF_HEAD]);
                for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
                    (*s, *c) = (pos as f32 * f).sin_cos();
                }
                for head in row.chunks_mut(head_dim) {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x1, x2) = (a[i], b[i]);
                        a[i] = x1 * cos[i] - x2 * sin[i];
                        b[i] = x2 * cos[i] + x1 * sin[i];
                    }
                }
            });
        });
        Ok(())
    }

    fn silu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>) -> Result<()> {
        self.pool.install(|| {
            gate.par_chunks_mut(SERIAL_BELOW)
                .zip(up.par_chunks(SERIAL_BELOW))
                .for_each(|(g, u)| silu_mul_in_place(g, u));
        });
        Ok(())
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<()> {
        self.pool.install(|| {
            x.par_iter_mut().zip(y.par_iter()).with_min_len(SERIAL_BELOW).for_each(|(a, b)| *a += b);
        });
        Ok(())
    }

    fn new_kv(&self, geometry: KvGeometry, dtype: DType) -> Result<CpuKv> {
        CpuKv::new(geometry, dtype)
    }

    fn copy_page(&self, kv: &mut CpuKv, src: u32, dst: u32) -> Result<()> {
        kv.copy_page(src, dst)
    }

    fn read_kv_page(&self, kv: &CpuKv, page: u32, part: KvPart) -> Result<Vec<f32>> {
        kv.read_page(page, part)
    }

    fn write_kv_page(
        &self,
        kv: &mut CpuKv,
        page: u32,
        part: KvPart,
        offset: usize,
        data: &[f32],
    ) -> Result<()> {
        kv.write_page(page, part, offset, data)
    }

    fn attention(
        &self,
        kv: &mut CpuKv,
        layer: usize,
        spans: &[SeqSpan],
        shape: AttentionShape,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        kv.write(layer, spans, k, v, shape.head_dim)?;
        self.pool.install(|| attention::attend(kv, layer, spans, shape, q, out));
        Ok(())
    }
}
