//! Causal (optionally sliding-window) attention over the paged CPU cache,
//! computed as HF's eager attention does: scores in f32, scaled by
//! 1/sqrt(head_dim), softmax in f32, then the weighted sum of values. Keys
//! and values are read through each sequence's block table (in place from
//! f32 pages, widened head by head from f16 ones).
//!
//! One task per (row, key/value head): the query heads that share a
//! key/value head read each cached row once.

use rayon::prelude::*;

use super::kv::CpuKv;
use super::matmul::dot_f32;
use crate::backend::{AttentionShape, SeqSpan};

pub(super) fn attend(
    kv: &CpuKv,
    layer: usize,
    spans: &[SeqSpan],
    shape: AttentionShape,
    q: &[f32],
    out: &mut [f32],
) {
    let AttentionShape { num_heads, num_kv_heads, head_dim, sliding_window } = shape;
    let q_width = num_heads * head_dim;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();

    let row_span: Vec<&SeqSpan> = spans.iter().flat_map(|s| std::iter::repeat_n(s, s.len)).collect();
    out.par_chunks_mut(group * head_dim).enumerate().for_each(|(task, out)| {
        let (row, kvh) = (task / num_kv_heads, task % num_kv_heads);
        let span = row_span[row];
        let pos = span.start_pos + (row - span.row);
        let first = sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let n = pos + 1 - first;
        let cols = kvh * head_dim..(kvh + 1) * head_dim;
        let queries = &q[row * q_width + kvh * group * head_dim..][..group * head_dim];
        let mut scratch = vec![0f32; head_dim];
        let mut scores = vec![0f32; group * n];
        for j in 0..n {
            let key = kv.head(span.pages, layer, false, first + j, cols.clone(), &mut scratch);
            for (g, qh) in queries.chunks_exact(head_dim).enumerate() {
                scores[g * n + j] = dot_f32(qh, key) * scale;
            }
        }
        let mut sums = vec![0f32; group];
        for (s, sum) in scores.chunks_exact_mut(n).zip(sums.iter_mut()) {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                *sum += *v;
            }
        }
        out.fill(0.0);
        for j in 0..n {
            let value = kv.head(span.pages, layer, true, first + j, cols.clone(), &mut scratch);
            for (g, o) in out.chunks_exact_mut(head_dim).enumerate() {
                let p = scores[g * n + j] / sums[g];
                for (o, v) in o.iter_mut().zip(value) {
                    *o += p * v;
                }
            }
        }
    });
}
