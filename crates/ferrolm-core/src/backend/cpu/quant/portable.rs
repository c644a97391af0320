//! The portable kernels: plain Rust, the reference every SIMD variant is
//! tested against. Integer sums are exact, so a SIMD kernel that adds the
//! same integer block sums and scales them the same way agrees to rounding.

use half::{bf16, f16};

use super::block::{Q8Block, QK};
use crate::formats::dequantize::{q5_values, scale_min_k4};
use crate::formats::fp8::e4m3;

#[inline]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Quantizes `x` (a multiple of 32 values) into `out`, one block per 32
/// values: `d = max|x| / 127`, `q = round(x / d)` (ggml's `quantize_row_q8_0`,
/// with `d` kept in f32; `f32::round`: half away from zero). The AVX2
/// version gives the same blocks.
pub fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
    for (block, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        block.d = d;
        block.sum = sum;
    }
}

/// Integer dot product of 4-bit values (low nibbles: values 0..16, high
/// nibbles: 16..32, as in Q4_0/Q4_1) with one activation block.
#[inline]
fn dot_nibbles(qs: &[u8], a: &Q8Block) -> i32 {
    (0..16).map(|j| (qs[j] & 15) as i32 * a.qs[j] as i32 + (qs[j] >> 4) as i32 * a.qs[j + 16] as i32).sum()
}

pub fn dot_q4_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(18).zip(a) {
        // x = d * (q - 8)
        acc += f16_at(b, 0) * a.d * (dot_nibbles(&b[2..], a) - 8 * a.sum) as f32;
    }
    acc
}

pub fn dot_q4_1(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(20).zip(a) {
        // x = d * q + m
        acc += f16_at(b, 0) * a.d * dot_nibbles(&b[4..], a) as f32 + f16_at(b, 2) * a.d * a.sum as f32;
    }
    acc
}

/// Integer dot product of a Q5_0/Q5_1 block's 5-bit values with one
/// activation block.
#[inline]
fn dot_q5(qh: &[u8], qs: &[u8], a: &Q8Block) -> i32 {
    q5_values(qh, qs).iter().zip(&a.qs).map(|(&q, &y)| q as i32 * y as i32).sum()
}

pub fn dot_q5_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(22).zip(a) {
        // x = d * (q - 16)
        acc += f16_at(b, 0) * a.d * (dot_q5(&b[2..6], &b[6..], a) - 16 * a.sum) as f32;
    }
    acc
}

pub fn dot_q5_1(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(24).zip(a) {
        // x = d * q + m
        acc += f16_at(b, 0) * a.d * dot_q5(&b[4..8], &b[8..], a) as f32 + f16_at(b, 2) * a.d * a.sum as f32;
    }
    acc
}

pub fn dot_q8_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(34).zip(a) {
        let dot: i32 = b[2..].iter().zip(&a.qs).map(|(&q, &y)| q as i8 as i32 * y as i32).sum();
        acc += f16_at(b, 0) * a.d * dot as f32;
    }
    acc
}

pub fn dot_q4_k(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(144).zip(a.chunks_exact(8)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..]);
        for j in 0..4 {
            // 32 bytes: sub-block 2j in the low nibbles, 2j + 1 in the high.
            let q = &qs[32 * j..32 * j + 32];
            for (half, a) in [(0, &a[2 * j]), (1, &a[2 * j + 1])] {
                let (sc, m) = scale_min_k4(2 * j + half, scales);
                let dot: i32 =
                    q.iter().zip(&a.qs).map(|(&q, &y)| ((q >> (4 * half)) & 15) as i32 * y as i32).sum();
                acc += a.d * (d * sc as f32 * dot as f32 - dmin * m as f32 * a.sum as f32);
            }
        }
    }
    acc
}

pub fn dot_q5_k(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(176).zip(a.chunks_exact(8)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..]);
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            for (half, a) in [(0, &a[2 * j]), (1, &a[2 * j + 1])] {
                let s = 2 * j + half;
                let (sc, m) = scale_min_k4(s, scales);
                let value = |l: usize| ((q[l] >> (4 * half)) & 15) as i32 | (((qh[l] >> s) & 1) as i32) << 4;
                let dot: i32 = (0..32).map(|l| value(l) * a.qs[l] as i32).sum();
                acc += a.d * (d * sc as f32 * dot as f32 - dmin * m as f32 * a.sum as f32);
            }
        }
    }
    acc
}

/// The 6-bit value `l` (0..32) of group `g` (0..4) of a 128-value half of a
/// Q6_K block, minus 32 (ggml's `dequantize_row_q6_K`).
#[inline]
pub(super) fn q6_value(ql: &[u8], qh: &[u8], g: usize, l: usize) -> i32 {
    let low = (ql[l + 32 * (g & 1)] >> (4 * (g >> 1))) & 15;
    let high = (qh[l] >> (2 * g)) & 3;
    (low | (high << 4)) as i32 - 32
}

pub fn dot_q6_k(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(210).zip(a.chunks_exact(8)) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let ql = &b[64 * half..];
            let qh = &b[128 + 32 * half..];
            let sc = &b[192 + 8 * half..];
            for g in 0..4 {
                let a = &a[4 * half + g];
                let mut sums = [0i32; 2];
                for l in 0..32 {
                    sums[l / 16] += q6_value(ql, qh, g, l) * a.qs[l] as i32;
                }
                let dot = sc[2 * g] as i8 as i32 * sums[0] + sc[2 * g + 1] as i8 as i32 * sums[1];
                acc += d * a.d * dot as f32;
            }
        }
    }
    acc
}

/// f16 weights against f32 activations.
pub fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2).zip(x).map(|(b, x)| f16::from_le_bytes([b[0], b[1]]).to_f32() * x).sum()
}

/// bf16 weights against f32 activations.
pub fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2).zip(x).map(|(b, x)| bf16::from_le_bytes([b[0], b[1]]).to_f32() * x).sum()
}

/// FP8 E4M3 codes against f32 activations: `Σ decode(w[i]) * x[i]` (the
/// row's scale is applied by the caller).
pub fn dot_fp8(w: &[u8], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(&c, x)| e4m3::decode(c) * x).sum()
}

/// A row of FP8 codes with one scale per run of `g` values: `Σ_runs scale *
/// dot_fp8(run)`.
pub fn dot_fp8_groups(w: &[u8], x: &[f32], scales: &[f32], g: usize) -> f32 {
    w.chunks(g).zip(x.chunks(g)).zip(scales).map(|((w, x), s)| s * dot_fp8(w, x)).sum()
}

/// `out[i] = decode(w[i]) * scale`.
pub fn widen_fp8(w: &[u8], scale: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(w) {
        *o = e4m3::decode(c) * scale;
    }
}
