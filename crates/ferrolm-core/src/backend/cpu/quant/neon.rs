//! aarch64 NEON kernels: each block's integer dot product with
//! `vmull_s8` + `vpadalq_s16` (base NEON, no dotprod extension needed), then
//! the same f32 formula per block as [`super::portable`], so results equal
//! the portable kernels bit for bit.

// The kernels are unsafe functions made of intrinsics; an unsafe block
// around every line would add nothing.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::aarch64::*;

use super::block::Q8Block;
use super::portable::{f16_at, q6_value};
use crate::formats::dequantize::scale_min_k4;
use crate::formats::GgmlType;

/// Σ w[i] * a[i] over 32 i8 pairs (two 16-lane vectors of weights).
#[inline(always)]
unsafe fn dot32(w0: int8x16_t, w1: int8x16_t, a: &[i8; 32]) -> i32 {
    let (a0, a1) = (vld1q_s8(a.as_ptr()), vld1q_s8(a.as_ptr().add(16)));
    let mut acc = vdupq_n_s32(0);
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w0), vget_low_s8(a0)));
    acc = vpadalq_s16(acc, vmull_high_s8(w0, a0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w1), vget_low_s8(a1)));
    acc = vpadalq_s16(acc, vmull_high_s8(w1, a1));
    vaddvq_s32(acc)
}

/// 16 bytes of nibble pairs -> (low nibbles, high nibbles) as i8 lanes.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (int8x16_t, int8x16_t) {
    let q = vld1q_u8(p);
    (vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15))), vreinterpretq_s8_u8(vshrq_n_u8(q, 4)))
}

/// Whether [`dot`] has a kernel for `ty` (the five-bit types run the
/// portable kernels on aarch64).
pub fn has(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)
}

/// One weight row of `ty` against one row of activation blocks.
///
/// # Safety
/// NEON must be available (always on aarch64); `w` holds whole blocks and
/// `a` at least as many activation blocks as they cover.
#[target_feature(enable = "neon")]
pub unsafe fn dot(ty: GgmlType, w: &[u8], a: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    match ty {
        GgmlType::Q4_0 => {
            for (b, y) in w.chunks_exact(18).zip(a) {
                let (lo, hi) = nibbles(b.as_ptr().add(2));
                acc += f16_at(b, 0) * y.d * (dot32(lo, hi, &y.qs) - 8 * y.sum) as f32;
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in w.chunks_exact(20).zip(a) {
                let (lo, hi) = nibbles(b.as_ptr().add(4));
                acc += f16_at(b, 0) * y.d * dot32(lo, hi, &y.qs) as f32 + f16_at(b, 2) * y.d * y.sum as f32;
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in w.chunks_exact(34).zip(a) {
                let p = b.as_ptr().add(2) as *const i8;
                acc += f16_at(b, 0) * y.d * dot32(vld1q_s8(p), vld1q_s8(p.add(16)), &y.qs) as f32;
            }
        }
        GgmlType::Q4_K => {
            for (b, a) in w.chunks_exact(144).zip(a.chunks_exact(8)) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..4 {
                    let p = b.as_ptr().add(16 + 32 * j);
                    let (q0, q1) = (vld1q_u8(p), vld1q_u8(p.add(16)));
                    let m = vdupq_n_u8(15);
                    let halves = [(vandq_u8(q0, m), vandq_u8(q1, m)), (vshrq_n_u8(q0, 4), vshrq_n_u8(q1, 4))];
                    for (half, (w0, w1)) in halves.into_iter().enumerate() {
                        let y = &a[2 * j + half];
                        let (sc, mn) = scale_min_k4(2 * j + half, &b[4..16]);
                        let dot = dot32(vreinterpretq_s8_u8(w0), vreinterpretq_s8_u8(w1), &y.qs);
                        acc += y.d * (d * sc as f32 * dot as f32 - dmin * mn as f32 * y.sum as f32);
                    }
                }
            }
        }
        _ => {
            // Q6_K: unpack each group of 32 to i8, then the vector dot.
            for (b, a) in w.chunks_exact(210).zip(a.chunks_exact(8)) {
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = (&b[64 * half..], &b[128 + 32 * half..], &b[192 + 8 * half..]);
                    for g in 0..4 {
                        let y = &a[4 * half + g];
                        // Two sub-blocks of 16, each with its own scale.
                        let sums: [i32; 2] = std::array::from_fn(|s| {
                            let q: [i8; 16] = std::array::from_fn(|l| q6_value(ql, qh, g, 16 * s + l) as i8);
                            let mut ys = [0i8; 32];
                            ys[..16].copy_from_slice(&y.qs[16 * s..16 * s + 16]);
                            dot32(vld1q_s8(q.as_ptr()), vdupq_n_s8(0), &ys)
                        });
                        let dot = sc[2 * g] as i8 as i32 * sums[0] + sc[2 * g + 1] as i8 as i32 * sums[1];
                        acc += d * y.d * dot as f32;
                    }
                }
            }
        }
    }
    acc
}
