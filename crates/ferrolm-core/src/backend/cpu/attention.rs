//! Causal (optionally sliding-window) attention over the paged CPU cache,
//! computed as HF's eager attention does: scores in f32, scaled by
//! 1/sqrt(head_dim), softmax in f32, then the weighted sum of values. Keys
//! and values are read through each sequence's block table.
//!
//! One task per (sequence, key/value head, chunk of up to [`ROWS_PER_TASK`]
//! query rows): the task gathers the keys and values its rows can see once
//! (widened to f32 from f16 pages), and every query head of the group reads
//! them from there.

use rayon::prelude::*;

use super::kv::CpuKv;
use super::matmul::{dot_f32, with_spare, OutPtr};
use crate::backend::{AttentionShape, SeqSpan};

/// Query rows per task: a prompt's rows share the keys gathered once.
const ROWS_PER_TASK: usize = 32;

pub(super) fn attend(
    kv: &CpuKv,
    layer: usize,
    spans: &[SeqSpan],
    shape: AttentionShape,
    q: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::quant::x86_simd() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { attend_avx2(kv, layer, spans, shape, q, out) };
    }
    attend_any(kv, layer, spans, shape, q, out)
}

/// [`attend_any`] compiled for AVX2 (closures inherit the target features):
/// the same operations, eight lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    kv: &CpuKv,
    layer: usize,
    spans: &[SeqSpan],
    shape: AttentionShape,
    q: &[f32],
    out: &mut [f32],
) {
    attend_any(kv, layer, spans, shape, q, out)
}

#[inline(always)]
fn attend_any(
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
    // The first position row `i` of `span` may attend to.
    let first =
        |span: &SeqSpan, i: usize| sliding_window.map_or(0, |w| (span.start_pos + i + 1).saturating_sub(w));

    let tasks: Vec<(&SeqSpan, usize, usize)> = spans
        .iter()
        .flat_map(|s| {
            (0..num_kv_heads).flat_map(move |h| (0..s.len).step_by(ROWS_PER_TASK).map(move |r| (s, h, r)))
        })
        .collect();
    let out_ptr = OutPtr(out.as_mut_ptr());
    tasks.into_par_iter().for_each(|(span, kvh, r0)| {
        let r1 = (r0 + ROWS_PER_TASK).min(span.len);
        let (lo, hi) = (first(span, r0), span.start_pos + r1);
        let cols = kvh * head_dim..(kvh + 1) * head_dim;
        // Keys and values of positions lo..hi (this head only), then scores
        // and one output row, all in this thread's scratch.
        let n = hi - lo;
        with_spare(2 * n * head_dim + n + head_dim, |spare| {
            let (keys, rest) = spare.split_at_mut(n * head_dim);
            let (values, rest) = rest.split_at_mut(n * head_dim);
            let (scores, acc) = rest.split_at_mut(n);
            for (j, (k, v)) in
                keys.chunks_exact_mut(head_dim).zip(values.chunks_exact_mut(head_dim)).enumerate()
            {
                kv.head_into(span.pages, layer, false, lo + j, cols.clone(), k);
                kv.head_into(span.pages, layer, true, lo + j, cols.clone(), v);
            }
            for i in r0..r1 {
                let row = span.row + i;
                let (from, to) = (first(span, i) - lo, span.start_pos + i + 1 - lo);
                for g in 0..group {
                    let head = kvh * group + g;
                    let qh = &q[row * q_width + head * head_dim..][..head_dim];
                    let s = &mut scores[from..to];
                    for (s, k) in s.iter_mut().zip(keys[from * head_dim..].chunks_exact(head_dim)) {
                        *s = dot_f32(qh, k) * scale;
                    }
                    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for v in s.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    acc.fill(0.0);
                    for (p, v) in s.iter().zip(values[from * head_dim..].chunks_exact(head_dim)) {
                        let p = p / sum;
                        for (o, v) in acc.iter_mut().zip(v) {
                            *o += p * v;
                        }
                    }
                    for (d, &a) in acc.iter().enumerate() {
                        // SAFETY: each (row, head) belongs to exactly one task.
                        unsafe { out_ptr.write(row * q_width + head * head_dim + d, a) };
                    }
                }
            }
        });
    });
}
