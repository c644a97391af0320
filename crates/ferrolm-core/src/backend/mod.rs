//! The compute seam: the few operations the decoder needs, behind a trait.
//!
//! The model is written once against [`Backend`]; each backend decides how
//! its buffers and weights live and how each op runs. [`cpu::Cpu`] is the
//! reference, always built and tested. A CUDA backend slots in beside it
//! and is selected through [`Device`].

mod any;
pub mod cpu;
pub mod cuda;
mod device;
mod kv_page;
pub mod sample;

pub use any::{AnyBackend, OnDevice};
pub use device::Device;
pub use kv_page::{check_page, check_page_access, rows_of, KvGeometry, KvKind, KvPart};
pub use sample::RowSampling;

use crate::error::Result;
use crate::formats::{DType, Quantize, StoredTensor};

/// Static shape of the attention computation for one model.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Attend only to keys at most `window - 1` positions back.
    pub sliding_window: Option<usize>,
}

/// One sequence's share of a ragged batch: rows `row..row + len` of the
/// batch's activations are its tokens at positions `start_pos..start_pos + len`.
/// Position `p` of the sequence lives at offset `p % page_size` of page
/// `pages[p / page_size]` (its block table, long enough for every position
/// up to `start_pos + len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan<'a> {
    pub pages: &'a [u32],
    pub start_pos: usize,
    pub row: usize,
    pub len: usize,
}

/// The operations a decoder needs. Buffers are row-major `[rows, width]` f32
/// activations; weights are whatever the backend stores.
pub trait Backend: Send + Sync {
    /// Activations (a row-major matrix of f32).
    type Buf: Send + Sync;
    /// A parameter tensor resident on the device.
    type Weight: Send + Sync;
    /// Key/value storage: a pool of pages, each holding `page_size`
    /// positions of every layer.
    type Kv: Send + Sync;

    fn device(&self) -> Device;

    /// Bytes this backend can still allocate (host memory available, or
    /// the GPU's free memory); `None` when it cannot tell. Sizes taken
    /// from untrusted input (a context length, a pool size) are checked
    /// against it before anything that large is promised.
    fn memory_available(&self) -> Option<usize>;

    /// Runs a whole forward pass (many ops) where the backend wants it run:
    /// the CPU runs it on its thread pool, so that each op's parallel split
    /// is a cheap local fork instead of a hand-off from an outside thread.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Takes a parameter as the checkpoint stores it, converted to
    /// `quantize` when the loader asks (it decides which parameters are);
    /// otherwise the backend keeps the format it computes with best
    /// (packed blocks, halves or f32). A backend that cannot hold a format
    /// refuses it.
    fn upload(&self, tensor: StoredTensor, quantize: Option<Quantize>) -> Result<Self::Weight>;
    /// The precision weights take here when it is fixed (the GPU's dtype,
    /// the CPU's exact f32 path); `None` when they stay as stored.
    fn weight_dtype(&self) -> Option<DType>;
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    fn to_host(&self, buf: &Self::Buf) -> Result<Vec<f32>>;

    /// Copies the listed rows of `x` (rows of width `width`) into a new buffer.
    fn select_rows(&self, x: &Self::Buf, width: usize, rows: &[usize]) -> Result<Self::Buf>;
    /// `out[i] = table[ids[i]]` (ids already checked against the vocabulary).
    fn embedding(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Buf) -> Result<()>;
    /// RMSNorm over consecutive groups of `dim` values (HF's `LlamaRMSNorm`;
    /// a group is a row, or one head of a row).
    fn rms_norm(
        &self,
        x: &Self::Buf,
        weight: &Self::Weight,
        eps: f32,
        dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `out = x @ w^T + bias`, with `w` of shape `[out_features, in_features]`.
    fn linear(
        &self,
        x: &Self::Buf,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// Rotates each head of each row by its position (HF's rotate_half convention).
    fn rope(&self, x: &mut Self::Buf, positions: &[u32], head_dim: usize, inv_freq: &[f32]) -> Result<()>;
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf) -> Result<()>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<()>;

    /// The residual add and the next norm: `x += y; out = rms_norm(x)`.
    /// Backends may fuse them.
    fn add_rms_norm(
        &self,
        x: &mut Self::Buf,
        y: &Self::Buf,
        weight: &Self::Weight,
        eps: f32,
        dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.add(x, y)?;
        self.rms_norm(x, weight, eps, dim, out)
    }

    /// Several projections of one input: `outs[i] = x @ w_i^T + bias_i`.
    /// Backends may prepare `x` once and run them together.
    fn linears(
        &self,
        x: &Self::Buf,
        projs: &[(&Self::Weight, Option<&Self::Weight>)],
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        for ((w, bias), out) in projs.iter().zip(outs.iter_mut()) {
            self.linear(x, w, *bias, out)?;
        }
        Ok(())
    }

    /// [`Backend::linears`] of `rms_norm(x)` (rows of `dim`). Backends may
    /// fuse the norm with preparing the input.
    #[allow(clippy::too_many_arguments)]
    fn norm_linears(
        &self,
        x: &Self::Buf,
        norm: &Self::Weight,
        eps: f32,
        dim: usize,
        projs: &[(&Self::Weight, Option<&Self::Weight>)],
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        let mut h = self.zeros(self.len(x))?;
        self.rms_norm(x, norm, eps, dim, &mut h)?;
        self.linears(&h, projs, outs)
    }

    /// The gated MLP's first half:
    /// `out = silu(x @ gate^T + gate_bias) * (x @ up^T + up_bias)`, each
    /// projection given as `(weight, bias)` (biases with `mlp_bias`).
    fn swiglu(
        &self,
        x: &Self::Buf,
        gate: (&Self::Weight, Option<&Self::Weight>),
        up: (&Self::Weight, Option<&Self::Weight>),
        out: &mut Self::Buf,
    ) -> Result<()> {
        let mut up_out = self.zeros(self.len(out))?;
        self.linears(x, &[gate, up], &mut [&mut *out, &mut up_out])?;
        self.silu_mul(out, &up_out)
    }

    /// Qwen3's per-head q/k RMSNorm followed by RoPE, in place. Backends may fuse them.
    fn head_norm_rope(
        &self,
        x: &mut Self::Buf,
        weight: &Self::Weight,
        eps: f32,
        positions: &[u32],
        head_dim: usize,
        inv_freq: &[f32],
    ) -> Result<()> {
        let mut normed = self.zeros(positions.len() * (self.len(x) / positions.len()))?;
        self.rms_norm(x, weight, eps, head_dim, &mut normed)?;
        *x = normed;
        self.rope(x, positions, head_dim, inv_freq)
    }

    /// Picks a token for each row of `logits` (rows of `vocab`) by its
    /// [`RowSampling`] (temperature 0: the argmax, first on ties), returning
    /// the token and its log-softmax. Runs on the host unless the backend
    /// overrides it (see [`Backend::samples_on_device`]).
    fn sample_rows(&self, logits: &Self::Buf, vocab: usize, rows: &[RowSampling]) -> Result<Vec<(u32, f32)>> {
        let host = self.to_host(logits)?;
        Ok(host.chunks(vocab).zip(rows).map(|(row, p)| sample::sample_row(row, p)).collect())
    }

    /// Whether [`Backend::sample_rows`] runs where the logits are, so that
    /// sampled (not only greedy) requests are worth picking there.
    fn samples_on_device(&self) -> bool {
        false
    }

    /// Number of f32 values in a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;

    /// Allocates storage for `pages` pages holding `dtype` values.
    fn new_kv(&self, geometry: KvGeometry, dtype: DType) -> Result<Self::Kv>;
    /// Copies every layer of page `src` into page `dst` (copy-on-write); a
    /// page that was never written copies as zeros. A page outside the pool
    /// is an error.
    fn copy_page(&self, kv: &mut Self::Kv, src: u32, dst: u32) -> Result<()>;
    /// Reads `part` of page `page` as f32 `[page_size, kv_heads, head_dim]`
    /// (positions never written read as zeros).
    fn read_kv_page(&self, kv: &Self::Kv, page: u32, part: KvPart) -> Result<Vec<f32>>;
    /// Writes `data` (f32 `[rows, kv_heads, head_dim]`) to positions
    /// `offset..offset + rows` of `part` of page `page`, stored in the
    /// pool's precision (an f16 pool rounds each value to f16).
    fn write_kv_page(
        &self,
        kv: &mut Self::Kv,
        page: u32,
        part: KvPart,
        offset: usize,
        data: &[f32],
    ) -> Result<()>;
    /// Stores the rows' keys and values at their positions in `layer`, then
    /// computes causal attention of `q` over each sequence's cached keys,
    /// read in place through its block table.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        spans: &[SeqSpan],
        shape: AttentionShape,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn devices_parse_from_names_and_gpu_indices() {
        assert_eq!(Device::parse(" CPU ").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:2").unwrap(), Device::Cuda(2));
        assert_eq!(Device::parse("1").unwrap(), Device::Cuda(1), "the session API's device=1");
        for bad in ["tpu", "cuda:x", "-1", ""] {
            let e = Device::parse(bad).unwrap_err().to_string();
            assert!(e.contains("a GPU index"), "{bad}: {e}");
        }
    }
}
