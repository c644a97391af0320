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

    // Decode steps of few sequences have fewer (sequence, head) tasks than
    // threads can share: split their positions instead.
    let tasks_per_thread = spans.len() * num_kv_heads / rayon::current_num_threads().max(1);
    if spans.iter().all(|s| s.len == 1) && tasks_per_thread < 2 {
        return attend_split(kv, layer, spans, shape, q, out, first);
    }

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
        // Keys and values of positions lo..hi (this head only), then scores
        // and one output row, all in this thread's scratch.
        let n = hi - lo;
        with_spare(2 * n * head_dim + n + head_dim, |spare| {
            let (keys, rest) = spare.split_at_mut(n * head_dim);
            let (values, rest) = rest.split_at_mut(n * head_dim);
            let (scores, acc) = rest.split_at_mut(n);
            kv.gather(span.pages, layer, false, head_dim, kvh, lo..hi, keys);
            kv.gather(span.pages, layer, true, head_dim, kvh, lo..hi, values);
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

/// Decode rows (one query per sequence) with each (sequence, kv head)'s
/// positions split into chunks that run in parallel; each chunk keeps its
/// softmax unnormalized (max, sum of exponentials, weighted values), and the
/// chunks are merged after (the split-K scheme of GPU decode attention).
#[inline(always)]
fn attend_split(
    kv: &CpuKv,
    layer: usize,
    spans: &[SeqSpan],
    shape: AttentionShape,
    q: &[f32],
    out: &mut [f32],
    first: impl Fn(&SeqSpan, usize) -> usize + Sync,
) {
    let AttentionShape { num_heads, num_kv_heads, head_dim, .. } = shape;
    let (q_width, group) = (num_heads * head_dim, num_heads / num_kv_heads);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let threads = rayon::current_num_threads().max(1);
    let split = (2 * threads).div_ceil(spans.len() * num_kv_heads).max(1);
    // Per (span, kv head, chunk), per query head of the group: max, sum, values.
    let part = 2 + head_dim;
    let mut partials = vec![0f32; spans.len() * num_kv_heads * split * group * part];
    partials.par_chunks_mut(group * part).enumerate().for_each(|(task, partial)| {
        let (span, kvh, c) =
            (&spans[task / (num_kv_heads * split)], task / split % num_kv_heads, task % split);
        let lo = first(span, 0);
        let n = span.start_pos + 1 - lo;
        let (a, b) = (lo + n * c / split, lo + n * (c + 1) / split);
        for p in partial.chunks_exact_mut(part) {
            p[0] = f32::NEG_INFINITY;
        }
        if a == b {
            return;
        }
        with_spare(2 * (b - a) * head_dim + (b - a), |spare| {
            let (keys, rest) = spare.split_at_mut((b - a) * head_dim);
            let (values, scores) = rest.split_at_mut((b - a) * head_dim);
            kv.gather(span.pages, layer, false, head_dim, kvh, a..b, keys);
            kv.gather(span.pages, layer, true, head_dim, kvh, a..b, values);
            for (g, p) in partial.chunks_exact_mut(part).enumerate() {
                let head = kvh * group + g;
                let qh = &q[span.row * q_width + head * head_dim..][..head_dim];
                for (s, k) in scores.iter_mut().zip(keys.chunks_exact(head_dim)) {
                    *s = dot_f32(qh, k) * scale;
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (stats, acc) = p.split_at_mut(2);
                let mut sum = 0.0;
                acc.fill(0.0);
                for (s, v) in scores.iter().zip(values.chunks_exact(head_dim)) {
                    let e = (s - max).exp();
                    sum += e;
                    for (o, v) in acc.iter_mut().zip(v) {
                        *o += e * v;
                    }
                }
                stats.copy_from_slice(&[max, sum]);
            }
        });
    });
    for (i, span) in spans.iter().enumerate() {
        for head in 0..num_heads {
            let (kvh, g) = (head / group, head % group);
            let chunk = |c: usize| {
                let at = (((i * num_kv_heads + kvh) * split + c) * group + g) * part;
                &partials[at..at + part]
            };
            let max = (0..split).map(|c| chunk(c)[0]).fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[span.row * q_width + head * head_dim..][..head_dim];
            o.fill(0.0);
            let mut sum = 0.0;
            for c in (0..split).filter(|&c| chunk(c)[0] > f32::NEG_INFINITY) {
                let w = (chunk(c)[0] - max).exp();
                sum += w * chunk(c)[1];
                for (o, v) in o.iter_mut().zip(&chunk(c)[2..]) {
                    *o += w * v;
                }
            }
            o.iter_mut().for_each(|v| *v /= sum);
        }
    }
}
