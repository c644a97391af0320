//! Causal (optionally sliding-window) attention over the paged CPU cache,
//! computed as HF's eager attention does: scores in f32, scaled by
//! 1/sqrt(head_dim), softmax in f32, then the weighted sum of values. Keys
//! and values are read in place through each sequence's block table.

use rayon::prelude::*;

use super::kv::CpuKv;
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

    // Each output row belongs to one span; work row by row in parallel.
    let row_span: Vec<&SeqSpan> = spans.iter().flat_map(|s| std::iter::repeat_n(s, s.len)).collect();
    out.par_chunks_mut(q_width).enumerate().for_each(|(row, out_row)| {
        let span = row_span[row];
        let pos = span.start_pos + (row - span.row);
        let first = sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let rows: Vec<(&[f32], &[f32])> = (first..=pos).map(|j| kv.row(span.pages, layer, j)).collect();
        let mut scores = vec![0f32; rows.len()];
        for h in 0..num_heads {
            let kvh = (h / group) * head_dim;
            let qh = &q[row * q_width + h * head_dim..][..head_dim];
            for ((kj, _), s) in rows.iter().zip(scores.iter_mut()) {
                *s = qh.iter().zip(&kj[kvh..kvh + head_dim]).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out_row[h * head_dim..][..head_dim];
            o.fill(0.0);
            for ((_, vj), s) in rows.iter().zip(&scores) {
                let p = s / sum;
                for (o, v) in o.iter_mut().zip(&vj[kvh..kvh + head_dim]) {
                    *o += p * v;
                }
            }
        }
    });
}
