//! Causal (optionally sliding-window) attention over the paged CPU cache:
//! scores in f32, scaled by 1/sqrt(head_dim), softmax in f32, then the
//! weighted sum of values (HF's eager attention). Keys and values are read
//! through each sequence's block table.
//!
//! Batch invariance: a query row's result depends only on its own query and
//! the keys and values it sees, never on what else shares the batch, how
//! its prompt was chunked, or how the work is split over threads. Every row
//! takes the softmax over fixed chunks of [`CHUNK`] positions aligned to
//! position 0 (each chunk: its max, its sum of exponentials and its
//! exponential-weighted values), merged in chunk order by [`merge`]. Prompt
//! rows compute their chunks one after another; decode steps of few
//! sequences spread the chunks over the threads (the split-K scheme of GPU
//! decode attention). Both run the same arithmetic.
//!
//! Prompt rows: one task per (sequence, key/value head, run of up to
//! [`ROWS_PER_TASK`] query rows): the task gathers the keys and values its
//! rows can see once (widened to f32 from f16 pages), and every query head
//! of the group reads them from there.

use rayon::prelude::*;

use super::kv::CpuKv;
use super::matmul::{dot_f32, with_spare, OutPtr};
use crate::backend::{AttentionShape, SeqSpan};

/// Query rows per task: a prompt's rows share the keys gathered once.
const ROWS_PER_TASK: usize = 32;

/// Positions per softmax chunk (chunk `j` holds positions `j * CHUNK ..`).
const CHUNK: usize = 64;

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

/// The chunks positions `from..to` fall in, each as its position range.
fn chunks(from: usize, to: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (from / CHUNK..to.div_ceil(CHUNK)).map(move |j| (j * CHUNK).max(from)..((j + 1) * CHUNK).min(to))
}

/// One chunk's share of a softmax: into `partial` (`2 + head_dim` long)
/// the max score, the sum of `exp(score - max)` and the values weighted by
/// those exponentials; `keys` and `values` are the chunk's rows, `scores`
/// scratch as long as the chunk.
#[inline(always)]
fn chunk_partial(
    qh: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    partial: &mut [f32],
) {
    let head_dim = qh.len();
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(head_dim)) {
        *s = dot_f32(qh, k) * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (stats, acc) = partial.split_at_mut(2);
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

/// [`chunk_partial`] for each of the `group` query heads in `q` (`group *
/// head_dim` values, one key/value head's group) into `partials` (`group *
/// (2 + head_dim)`), `scores` scratch of `group` times the chunk. With AVX2
/// the heads share each load of the keys and values; each head's partial is
/// [`chunk_partial`]'s bit for bit either way.
#[inline(always)]
fn chunk_partials(
    q: &[f32],
    group: usize,
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    partials: &mut [f32],
) {
    let head_dim = q.len() / group;
    #[cfg(target_arch = "x86_64")]
    if head_dim.is_multiple_of(8) && super::quant::x86_simd() {
        // SAFETY: AVX2/FMA were detected; the lengths are the caller's.
        return unsafe { super::vmath::chunk_partials(q, group, keys, values, scale, scores, partials) };
    }
    let n = scores.len() / group;
    for ((qh, s), p) in
        q.chunks_exact(head_dim).zip(scores.chunks_exact_mut(n)).zip(partials.chunks_exact_mut(2 + head_dim))
    {
        chunk_partial(qh, keys, values, scale, s, p);
    }
}

/// The softmax-weighted values from a row's chunk partials, in chunk order.
#[inline(always)]
fn merge<'a>(partials: impl Iterator<Item = &'a [f32]> + Clone, out: &mut [f32]) {
    let max = partials.clone().map(|p| p[0]).fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    let mut sum = 0.0;
    for p in partials {
        let w = (p[0] - max).exp();
        sum += w * p[1];
        for (o, v) in out.iter_mut().zip(&p[2..]) {
            *o += w * v;
        }
    }
    out.iter_mut().for_each(|v| *v /= sum);
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
        let most_chunks = n.div_ceil(CHUNK) + 1;
        let part = 2 + head_dim;
        with_spare(2 * n * head_dim + group * CHUNK + head_dim + most_chunks * group * part, |spare| {
            let (keys, rest) = spare.split_at_mut(n * head_dim);
            let (values, rest) = rest.split_at_mut(n * head_dim);
            let (scores, rest) = rest.split_at_mut(group * CHUNK);
            let (merged, partials) = rest.split_at_mut(head_dim);
            kv.gather(span.pages, layer, false, head_dim, kvh, lo..hi, keys);
            kv.gather(span.pages, layer, true, head_dim, kvh, lo..hi, values);
            for i in r0..r1 {
                let row = span.row + i;
                let (from, to) = (first(span, i), span.start_pos + i + 1);
                // The group's query heads are side by side in the row.
                let qg = &q[row * q_width + kvh * group * head_dim..][..group * head_dim];
                let mut used = 0;
                for (c, p) in chunks(from, to).zip(partials.chunks_exact_mut(group * part)) {
                    let (a, b) = ((c.start - lo) * head_dim, (c.end - lo) * head_dim);
                    chunk_partials(
                        qg,
                        group,
                        &keys[a..b],
                        &values[a..b],
                        scale,
                        &mut scores[..group * c.len()],
                        p,
                    );
                    used += 1;
                }
                for g in 0..group {
                    let head = kvh * group + g;
                    let per_chunk = partials[..used * group * part].chunks_exact(group * part);
                    merge(per_chunk.map(|p| &p[g * part..(g + 1) * part]), merged);
                    for (d, &a) in merged.iter().enumerate() {
                        // SAFETY: each (row, head) belongs to exactly one task.
                        unsafe { out_ptr.write(row * q_width + head * head_dim + d, a) };
                    }
                }
            }
        });
    });
}

/// Decode rows (one query per sequence) with each (sequence, kv head)'s
/// chunks computed in parallel, then merged per head: what the prompt path
/// computes for a row, spread over the threads.
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
    let part = 2 + head_dim;
    // Per span: its chunks, and where its partials start (per kv head, per
    // chunk, per query head of the group: max, sum, values).
    let spans_chunks: Vec<Vec<std::ops::Range<usize>>> =
        spans.iter().map(|s| chunks(first(s, 0), s.start_pos + 1).collect()).collect();
    let tasks: Vec<(usize, usize, usize)> = spans_chunks
        .iter()
        .enumerate()
        .flat_map(|(i, c)| (0..num_kv_heads).flat_map(move |h| (0..c.len()).map(move |j| (i, h, j))))
        .collect();
    let mut partials = vec![0f32; tasks.len() * group * part];
    partials.par_chunks_mut(group * part).zip(&tasks).for_each(|(partial, &(i, kvh, j))| {
        let (span, c) = (&spans[i], spans_chunks[i][j].clone());
        let n = c.len();
        with_spare(2 * n * head_dim + group * n, |spare| {
            let (keys, rest) = spare.split_at_mut(n * head_dim);
            let (values, scores) = rest.split_at_mut(n * head_dim);
            kv.gather(span.pages, layer, false, head_dim, kvh, c.clone(), keys);
            kv.gather(span.pages, layer, true, head_dim, kvh, c, values);
            let qg = &q[span.row * q_width + kvh * group * head_dim..][..group * head_dim];
            chunk_partials(qg, group, keys, values, scale, scores, partial);
        });
    });
    let mut base = 0;
    for (span, span_chunks) in spans.iter().zip(&spans_chunks) {
        let n = span_chunks.len();
        for head in 0..num_heads {
            let (kvh, g) = (head / group, head % group);
            let at = |j: usize| base + ((kvh * n + j) * group + g) * part;
            let o = &mut out[span.row * q_width + head * head_dim..][..head_dim];
            merge((0..n).map(|j| &partials[at(j)..at(j) + part]), o);
        }
        base += num_kv_heads * n * group * part;
    }
}
