//! The CPU backend: the reference implementation of every op.
//!
//! Weights are f32 in host memory (upcast at load); linear layers run through
//! the `gemm` crate, everything else is plain loops parallelised with rayon.

mod attention;
mod kv;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

pub use self::kv::CpuKv;
use super::{AttentionShape, Backend, Device, SeqSpan};
use crate::error::{try_zeroed, Result};
use crate::weights::HostTensor;

/// The CPU backend. `threads` bounds the GEMM's parallelism (rayon's pool
/// size bounds the rest).
#[derive(Debug, Clone)]
pub struct Cpu {
    threads: usize,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu { threads: rayon::current_num_threads() }
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Weight = HostTensor;
    type Kv = CpuKv;

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload(&self, tensor: HostTensor) -> Result<HostTensor> {
        Ok(tensor)
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

    fn embedding(&self, table: &HostTensor, ids: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let dim = table.shape[1];
        out.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(row, &id)| {
            let id = id as usize;
            row.copy_from_slice(&table.data[id * dim..(id + 1) * dim]);
        });
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        weight: &HostTensor,
        eps: f32,
        dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        out.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(|(o, x)| {
            let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let inv = 1.0 / (mean_sq + eps).sqrt();
            for ((o, x), w) in o.iter_mut().zip(x).zip(&weight.data) {
                *o = w * (x * inv);
            }
        });
        Ok(())
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        w: &HostTensor,
        bias: Option<&HostTensor>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (n, k) = (w.shape[0], w.shape[1]);
        let m = x.len() / k;
        assert_eq!(x.len(), m * k, "linear: input width does not match weight");
        assert_eq!(out.len(), m * n, "linear: output size does not match");
        let parallelism = if m * n * k >= 1 << 16 && self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        };
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
                w.data.as_ptr(),
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
        if let Some(b) = bias {
            out.par_chunks_mut(n).for_each(|row| {
                for (o, b) in row.iter_mut().zip(&b.data) {
                    *o += b;
                }
            });
        }
        Ok(())
    }

    fn rope(&self, x: &mut Vec<f32>, positions: &[u32], head_dim: usize, inv_freq: &[f32]) -> Result<()> {
        let width = x.len() / positions.len();
        let half = head_dim / 2;
        x.par_chunks_mut(width).zip(positions.par_iter()).for_each(|(row, &pos)| {
            // Angles are rounded to f32 before cos/sin, as HF computes them.
            let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
                .iter()
                .map(|f| {
                    let angle = pos as f32 * f;
                    (angle.cos(), angle.sin())
                })
                .unzip();
            for head in row.chunks_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * cos[i] - x2 * sin[i];
                    b[i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        });
        Ok(())
    }

    fn silu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>) -> Result<()> {
        gate.par_iter_mut().zip(up.par_iter()).for_each(|(g, u)| {
            *g = *g / (1.0 + (-*g).exp()) * u;
        });
        Ok(())
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<()> {
        x.par_iter_mut().zip(y.par_iter()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn new_kv(&self, pages: usize, page_size: usize, layers: usize, kv_dim: usize) -> Result<CpuKv> {
        Ok(CpuKv::new(pages, page_size, layers, kv_dim))
    }

    fn copy_page(&self, kv: &mut CpuKv, src: u32, dst: u32) -> Result<()> {
        kv.copy_page(src, dst)
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
        kv.write(layer, spans, k, v)?;
        attention::attend(kv, layer, spans, shape, q, out);
        Ok(())
    }
}
