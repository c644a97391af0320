//! x86-64 kernels: AVX2 (`vpmaddubsw` + `vpmaddwd` integer dot products) and
//! AVX-512 VNNI (`vpdpbusd`, 256-bit with AVX512VL), generated from one
//! source by [`kernels!`] with the integer primitive swapped. Both add the
//! same exact integer block sums, so they agree with each other bit for bit
//! and with [`super::portable`] to rounding (the order of float additions).
//!
//! Every kernel multiplies one weight row by `T` activation rows (T = 1..4,
//! a const generic): the weight block is unpacked once and used `T` times,
//! which is what makes prefill (T = 4) cheaper per product than decode.

// The kernels are unsafe functions made of intrinsics; an unsafe block
// around every line would add nothing.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::block::Q8Block;
use crate::formats::dequantize::scale_min_k4;

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // F16C conversion (exact, like `half`'s, without its run-time dispatch).
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn load(p: *const i8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 16 bytes of 4-bit pairs -> 32 bytes: low nibbles, then high nibbles.
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(15);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m))
}

/// The bits of the u32 at `p` as 32 bytes: 0xFF where bit `i` is set for
/// byte `i`, 0 elsewhere (each byte `i` of the broadcast word is picked by
/// a shuffle, then ORed with all bits but `i % 8`).
#[inline(always)]
unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
    let word = _mm256_set1_epi32((p as *const i32).read_unaligned());
    let pick = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(_mm256_shuffle_epi8(word, pick), others), _mm256_set1_epi64x(-1))
}

/// The 32 five-bit values of a Q5_0/Q5_1 block: nibbles of `qs` with the
/// bits of `qh` on top.
#[inline(always)]
unsafe fn q5_values(qh: *const u8, qs: *const u8) -> __m256i {
    _mm256_or_si256(nibbles16(qs), _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(16)))
}

/// Each byte's bit `from` moved to bit `to` (the other bits cleared).
#[inline(always)]
unsafe fn move_bit(v: __m256i, from: u32, to: u32) -> __m256i {
    let moved = if from <= to {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128((to - from) as i32))
    } else {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128((from - to) as i32))
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(1 << to))
}

/// AVX2: sums of 4 adjacent `u8 * i8` products as 8 i32 (no saturation for
/// the value ranges used here: |u| <= 128, |s| <= 127).
#[inline(always)]
unsafe fn mul_sum_avx2(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// AVX2: `mul_sum` with pairs weighted by i16 `scale` lanes (Q6_K's two
/// sub-block scales).
#[inline(always)]
unsafe fn mul_sum_scaled_avx2(u: __m256i, s: __m256i, scale: [i16; 2]) -> __m256i {
    let sc = _mm256_set_m128i(_mm_set1_epi16(scale[1]), _mm_set1_epi16(scale[0]));
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), sc)
}

#[inline(always)]
unsafe fn mul_sum_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

#[inline(always)]
unsafe fn mul_sum_scaled_vnni(u: __m256i, s: __m256i, scale: [i16; 2]) -> __m256i {
    let sc = _mm256_set_m128i(_mm_set1_epi32(scale[1] as i32), _mm_set1_epi32(scale[0] as i32));
    _mm256_mullo_epi32(mul_sum_vnni(u, s), sc)
}

/// Runs `$body` for every step `0..$n`, alternating between two sets of
/// accumulators so that consecutive steps do not wait on each other's FMA;
/// the sets are added at the end. Yields the `T` sums.
macro_rules! two_chains {
    ($n:expr, $i:ident, $acc:ident, $offs:ident, $body:block) => {{
        let n = $n;
        let (mut acc_a, mut offs_a) = ([_mm256_setzero_ps(); T], [0f32; T]);
        let (mut acc_b, mut offs_b) = ([_mm256_setzero_ps(); T], [0f32; T]);
        let mut $i = 0;
        while $i < n {
            {
                let ($acc, $offs) = (&mut acc_a, &mut offs_a);
                $body
            }
            if $i + 1 < n {
                $i += 1;
                let ($acc, $offs) = (&mut acc_b, &mut offs_b);
                $body
            }
            $i += 1;
        }
        let mut sums = [0f32; T];
        for t in 0..T {
            sums[t] = hsum(_mm256_add_ps(acc_a[t], acc_b[t])) + (offs_a[t] + offs_b[t]);
        }
        sums
    }};
}

macro_rules! kernels {
    ($isa:ident, $features:literal, $mul_sum:ident, $mul_sum_scaled:ident) => {
        pub mod $isa {
            use super::*;

            /// Q4_0 (`x = d * (q - 8)`), Q4_1 (`MINS`: `x = d * q + m`) and
            /// with `FIVE` Q5_0 (`x = d * (q - 16)`) and Q5_1.
            #[target_feature(enable = $features)]
            unsafe fn q4_q5<const T: usize, const MINS: bool, const FIVE: bool>(
                w: &[u8],
                a: [&[Q8Block]; T],
                out: &mut [f32],
            ) {
                // d, then m, then qh, then the quants.
                let qh = if MINS { 4 } else { 2 };
                let quants = qh + if FIVE { 4 } else { 0 };
                let offset = if FIVE { 16 } else { 8 };
                let sums = two_chains!(w.len() / (quants + 16), i, acc, offs, {
                    let b = w.as_ptr().add((quants + 16) * i);
                    let d = f16_at(b);
                    let q = if FIVE { q5_values(b.add(qh), b.add(quants)) } else { nibbles16(b.add(quants)) };
                    for t in 0..T {
                        let y = a[t].get_unchecked(i);
                        let p = _mm256_cvtepi32_ps($mul_sum(q, load(y.qs.as_ptr())));
                        let dd = d * y.d;
                        acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(dd), acc[t]);
                        if MINS {
                            offs[t] += f16_at(b.add(2)) * y.d * y.sum as f32;
                        } else {
                            offs[t] -= dd * (offset * y.sum) as f32;
                        }
                    }
                });
                out[..T].copy_from_slice(&sums);
            }

            pub unsafe fn q4_0<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                q4_q5::<T, false, false>(w, a, out)
            }

            pub unsafe fn q4_1<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                q4_q5::<T, true, false>(w, a, out)
            }

            pub unsafe fn q5_0<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                q4_q5::<T, false, true>(w, a, out)
            }

            pub unsafe fn q5_1<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                q4_q5::<T, true, true>(w, a, out)
            }

            /// Q8_0: `x = d * q` (signed weights: `|w| * sign(y, w)`).
            #[target_feature(enable = $features)]
            pub unsafe fn q8_0<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                let sums = two_chains!(w.len() / 34, i, acc, _offs, {
                    let b = w.as_ptr().add(34 * i);
                    let d = f16_at(b);
                    let q = load(b.add(2) as *const i8);
                    let qabs = _mm256_sign_epi8(q, q);
                    for t in 0..T {
                        let y = a[t].get_unchecked(i);
                        let s = _mm256_sign_epi8(load(y.qs.as_ptr()), q);
                        let p = _mm256_cvtepi32_ps($mul_sum(qabs, s));
                        acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * y.d), acc[t]);
                    }
                });
                out[..T].copy_from_slice(&sums);
            }

            /// Q4_K (and Q5_K with `FIVE`: a fifth bit per value, bit `j` of
            /// `qh[l]`): super-blocks of 256, eight sub-blocks of 32 with
            /// 6-bit scale and min: `x = d * sc * q - dmin * m`. One step per
            /// sub-block.
            #[target_feature(enable = $features)]
            unsafe fn q4k_q5k<const T: usize, const FIVE: bool>(
                w: &[u8],
                a: [&[Q8Block]; T],
                out: &mut [f32],
            ) {
                let block = if FIVE { 176 } else { 144 };
                let qs = if FIVE { 48 } else { 16 };
                let mask = _mm256_set1_epi8(15);
                let sums = two_chains!(w.len() / block * 8, s, acc, offs, {
                    let (i, j) = (s / 8, s % 8);
                    let b = &w[block * i..block * (i + 1)];
                    let (d, dmin) = (f16_at(b.as_ptr()), f16_at(b.as_ptr().add(2)));
                    // Sub-block j: the low (even j) or high (odd j) nibbles of 32 bytes.
                    let raw = load(b.as_ptr().add(qs + 32 * (j / 2)) as *const i8);
                    let raw = if j % 2 == 0 { raw } else { _mm256_srli_epi16(raw, 4) };
                    let mut q = _mm256_and_si256(raw, mask);
                    if FIVE {
                        q = _mm256_or_si256(q, move_bit(load(b.as_ptr().add(16) as *const i8), j as u32, 4));
                    }
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    let (dsc, dm) = (d * sc as f32, dmin * m as f32);
                    for t in 0..T {
                        let y = a[t].get_unchecked(s);
                        let p = _mm256_cvtepi32_ps($mul_sum(q, load(y.qs.as_ptr())));
                        acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(dsc * y.d), acc[t]);
                        offs[t] -= dm * y.d * y.sum as f32;
                    }
                });
                out[..T].copy_from_slice(&sums);
            }

            pub unsafe fn q4_k<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                q4k_q5k::<T, false>(w, a, out)
            }

            pub unsafe fn q5_k<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                q4k_q5k::<T, true>(w, a, out)
            }

            /// Q6_K: super-blocks of 256, sixteen sub-blocks of 16 with i8
            /// scales: `x = d * sc * (q - 32)`, q of 6 bits (4 in `ql`, 2 in
            /// `qh`). One step per group of 32 values (two sub-blocks).
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k<const T: usize>(w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
                let (m15, m3, m32) = (_mm256_set1_epi8(15), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
                let sums = two_chains!(w.len() / 210 * 8, s, acc, _offs, {
                    let (i, half, g) = (s / 8, s % 8 / 4, s % 4);
                    let b = w.as_ptr().add(210 * i);
                    let d = f16_at(b.add(208));
                    let ql = load(b.add(64 * half + 32 * (g % 2)) as *const i8);
                    let low = if g < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
                    let low = _mm256_and_si256(low, m15);
                    let qh = load(b.add(128 + 32 * half) as *const i8);
                    let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)), m3);
                    let q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), m32);
                    let qabs = _mm256_sign_epi8(q, q);
                    let sc = b.add(192 + 8 * half) as *const i8;
                    let scale = [*sc.add(2 * g) as i16, *sc.add(2 * g + 1) as i16];
                    for t in 0..T {
                        let y = a[t].get_unchecked(s);
                        let sy = _mm256_sign_epi8(load(y.qs.as_ptr()), q);
                        let p = _mm256_cvtepi32_ps($mul_sum_scaled(qabs, sy, scale));
                        acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * y.d), acc[t]);
                    }
                });
                out[..T].copy_from_slice(&sums);
            }
        }
    };
}

kernels!(avx2, "avx2,fma,f16c", mul_sum_avx2, mul_sum_scaled_avx2);
kernels!(avx512vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", mul_sum_vnni, mul_sum_scaled_vnni);

/// [`super::portable::quantize_q8`] in AVX2, the same blocks bit for bit:
/// the same max, scale and products, and `f32::round` (half away from
/// zero) as truncation plus a step where the dropped fraction is >= 0.5
/// (exact: the values are below 2^23).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
    let sign = _mm256_set1_ps(-0.0);
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    for (block, x) in out.iter_mut().zip(x.chunks_exact(32)) {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
        // max(|v|, acc) keeps acc where v is NaN, as f32::max does.
        let mut amax = _mm256_setzero_ps();
        for v in v {
            amax = _mm256_max_ps(_mm256_andnot_ps(sign, v), amax);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            // NaN becomes 0, as `f32 as i8` makes it.
            let y = _mm256_mul_ps(v[i], id);
            let y = _mm256_and_ps(y, _mm256_cmp_ps(y, y, _CMP_ORD_Q));
            let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(y, t));
            let step = _mm256_and_ps(
                _mm256_cmp_ps(frac, half, _CMP_GE_OQ),
                _mm256_or_ps(one, _mm256_and_ps(y, sign)),
            );
            _mm256_cvttps_epi32(_mm256_add_ps(t, step))
        });
        let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        // packs work per 128-bit lane: restore the order with one permute.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, bytes);
        block.d = d;
        block.sum = _mm_cvtsi128_si32(s);
    }
}

/// Half-precision weights against `T` rows of f32 activations (no integer
/// path: the products are f32 FMAs). `BF16` selects bf16, else f16. Each
/// weight vector is widened once for all rows, and every row's sum runs
/// the same operations whatever `T` is: a row's result does not depend on
/// the rows beside it.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_half<const BF16: bool, const T: usize>(w: &[u8], xs: [&[f32]; T]) -> [f32; T] {
    let n = xs.iter().map(|x| x.len()).min().unwrap_or(0).min(w.len() / 2);
    let mut acc = [[_mm256_setzero_ps(); 4]; T];
    let mut i = 0;
    while i + 32 <= n {
        for k in 0..4 {
            let p = w.as_ptr().add(2 * (i + 8 * k)) as *const __m128i;
            let wv = if BF16 {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16))
            } else {
                _mm256_cvtph_ps(_mm_loadu_si128(p))
            };
            for (acc, x) in acc.iter_mut().zip(xs) {
                acc[k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)), acc[k]);
            }
        }
        i += 32;
    }
    let tail = &w[2 * i..2 * n];
    std::array::from_fn(|t| {
        let a = &acc[t];
        let sum = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
        sum + if BF16 {
            super::portable::dot_bf16(tail, &xs[t][i..n])
        } else {
            super::portable::dot_f16(tail, &xs[t][i..n])
        }
    })
}

/// 16 FP8 E4M3 codes at `p` widened to f32, each value times 2^-8 exactly
/// (see `e4m3::to_f16_bits_scaled`): sign-extending a code to 16 bits and
/// shifting it left by 7 puts the sign in bit 15 and the exponent and
/// mantissa in bits 7..13; clearing bit 14 (a second copy of the sign)
/// leaves the f16 bits, which F16C widens. NaN codes widen to 480 * 2^-8
/// (the quantizer never makes them from finite weights).
#[inline(always)]
unsafe fn fp8x16(p: *const u8) -> (__m256, __m256) {
    (fp8x8(p), fp8x8(p.add(8)))
}

/// 8 codes of [`fp8x16`] (one 128-bit sign extension each, which costs
/// less than a 256-bit one and a lane extraction).
#[inline(always)]
unsafe fn fp8x8(p: *const u8) -> __m256 {
    let wide = _mm_cvtepi8_epi16(_mm_loadl_epi64(p as *const __m128i));
    _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(wide, 7), _mm_set1_epi16(0xbfffu16 as i16)))
}

/// FP8 E4M3 codes against f32 activations: `Σ decode(w[i]) * x[i]`
/// (products are f32 FMAs; the 2^8 of [`fp8x16`] is applied once at the end).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_fp8(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (half, acc) in acc.chunks_exact_mut(2).enumerate() {
            let j = i + 16 * half;
            let (lo, hi) = fp8x16(w.as_ptr().add(j));
            acc[0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x.as_ptr().add(j)), acc[0]);
            acc[1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x.as_ptr().add(j + 8)), acc[1]);
        }
        i += 32;
    }
    let sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    sum * 256.0 + super::portable::dot_fp8(&w[i..n], &x[i..n])
}

/// A row of FP8 codes with one scale per run of `g` values against f32
/// activations: `Σ_runs scale * Σ decode(w[i]) * x[i]`. Each run's sum stays
/// in two vectors and is scaled into the total with one FMA, so the group
/// scales cost one instruction per run (`g` a multiple of 16; a shorter
/// last run goes through the portable kernel).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_fp8_groups(w: &[u8], x: &[f32], scales: &[f32], g: usize) -> f32 {
    debug_assert!(g.is_multiple_of(16));
    let n = x.len().min(w.len());
    let mut total = [_mm256_setzero_ps(); 2];
    let mut start = 0;
    for &scale in scales {
        if start + g > n {
            break;
        }
        let mut acc = [_mm256_setzero_ps(); 2];
        for j in (start..start + g).step_by(16) {
            let (lo, hi) = fp8x16(w.as_ptr().add(j));
            acc[0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x.as_ptr().add(j)), acc[0]);
            acc[1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x.as_ptr().add(j + 8)), acc[1]);
        }
        let s = _mm256_set1_ps(scale * 256.0);
        total[0] = _mm256_fmadd_ps(acc[0], s, total[0]);
        total[1] = _mm256_fmadd_ps(acc[1], s, total[1]);
        start += g;
    }
    let tail =
        scales.get(start / g).map_or(0.0, |&s| s * super::portable::dot_fp8(&w[start..n], &x[start..n]));
    hsum(_mm256_add_ps(total[0], total[1])) + tail
}

/// [`dot_fp8`] of four rows against the same activations: each activation
/// vector is loaded once for the four, and the rows' sums run side by side.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_fp8_x4(w: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    let n = w.iter().fold(x.len(), |n, w| n.min(w.len()));
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut i = 0;
    while i + 16 <= n {
        let (x0, x1) = (_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(x.as_ptr().add(i + 8)));
        for (acc, w) in acc.iter_mut().zip(&w) {
            let (lo, hi) = fp8x16(w.as_ptr().add(i));
            acc[0] = _mm256_fmadd_ps(lo, x0, acc[0]);
            acc[1] = _mm256_fmadd_ps(hi, x1, acc[1]);
        }
        i += 16;
    }
    std::array::from_fn(|r| {
        hsum(_mm256_add_ps(acc[r][0], acc[r][1])) * 256.0 + super::portable::dot_fp8(&w[r][i..n], &x[i..n])
    })
}

/// `out[i] = decode(w[i]) * scale`, equal bit for bit to the portable
/// [`super::portable::widen_fp8`]: `(decode * 2^-8) * (scale * 2^8)` is the
/// same real product, rounded once.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn widen_fp8(w: &[u8], scale: f32, out: &mut [f32]) {
    let n = out.len().min(w.len());
    let s = _mm256_set1_ps(scale * 256.0);
    let mut i = 0;
    while i + 16 <= n {
        let (lo, hi) = fp8x16(w.as_ptr().add(i));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(lo, s));
        _mm256_storeu_ps(out.as_mut_ptr().add(i + 8), _mm256_mul_ps(hi, s));
        i += 16;
    }
    super::portable::widen_fp8(&w[i..n], scale, &mut out[i..n]);
}

/// Kernels over eight interleaved rows (see `interleave.rs`): every 32-bit
/// lane is one row, so a block's eight integer sums are converted and
/// scaled by one instruction each. AVX2 (AVX-512 VNNI CPUs run them too).
pub mod x8 {
    use super::*;
    use crate::formats::GgmlType;

    #[inline(always)]
    unsafe fn bcast(q: *const i8, chunk: usize) -> __m256i {
        _mm256_set1_epi32((q as *const i32).add(chunk).read_unaligned())
    }

    /// Σ over chunks `cs` (4 or 8 of them) of `maddubs(w[c], activation chunk
    /// c)` in i16, added as a tree (short dependency chains; integer sums, so
    /// the order does not change them).
    #[inline(always)]
    unsafe fn sum16(w: &[__m256i], q: *const i8, cs: std::ops::Range<usize>) -> __m256i {
        let p: [__m256i; 8] = std::array::from_fn(|i| {
            if i < cs.len() {
                _mm256_maddubs_epi16(w[cs.start + i], bcast(q, cs.start + i))
            } else {
                _mm256_setzero_si256()
            }
        });
        let quad = |i: usize| {
            _mm256_add_epi16(_mm256_add_epi16(p[i], p[i + 1]), _mm256_add_epi16(p[i + 2], p[i + 3]))
        };
        if cs.len() == 4 {
            quad(0)
        } else {
            debug_assert_eq!(cs.len(), 8);
            _mm256_add_epi16(quad(0), quad(4))
        }
    }

    /// A block's integer sums for eight rows (i32 lanes): eight chunks'
    /// products in i16, all at once for 4-bit values, in two halves for
    /// 5-bit ones (whose eight would overflow i16).
    #[inline(always)]
    unsafe fn block_sum<const FIVE: bool>(w: &[__m256i; 8], q: *const i8) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        if FIVE {
            let low = _mm256_madd_epi16(sum16(w, q, 0..4), ones);
            _mm256_add_epi32(low, _mm256_madd_epi16(sum16(w, q, 4..8), ones))
        } else {
            _mm256_madd_epi16(sum16(w, q, 0..8), ones)
        }
    }

    /// Bytes of a Q4_0/Q4_1 (`MINS`) group block, or Q5_0/Q5_1 (`FIVE`), and
    /// the offsets of its `qh` words and quants.
    const fn q4_q5_layout(mins: bool, five: bool) -> (usize, usize, usize) {
        let units = if mins { 32 } else { 16 };
        let quants = units + if five { 32 } else { 0 };
        (quants + 128, units, quants)
    }

    /// The values of one group block at `p` as eight vectors of bytes: the
    /// low nibbles of chunks 0..4 (with their fifth bits for `FIVE`), then
    /// the high ones; vector `c` meets activation chunk `c`.
    #[inline(always)]
    unsafe fn q4_q5_values<const MINS: bool, const FIVE: bool>(p: *const u8) -> [__m256i; 8] {
        let (_, units, quants) = q4_q5_layout(MINS, FIVE);
        let m4 = _mm256_set1_epi8(15);
        let mut w = [_mm256_setzero_si256(); 8];
        // The transposed qh words (see `interleave.rs`): bits c and 4 + c.
        let qh = if FIVE { load(p.add(units) as *const i8) } else { _mm256_setzero_si256() };
        for c in 0..4 {
            let raw = load(p.add(quants + 32 * c) as *const i8);
            w[c] = _mm256_and_si256(raw, m4);
            w[4 + c] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if FIVE {
                w[c] = _mm256_or_si256(w[c], move_bit(qh, c as u32, 4));
                w[4 + c] = _mm256_or_si256(w[4 + c], move_bit(qh, 4 + c as u32, 4));
            }
        }
        w
    }

    /// Q4_0 (x = d (q - 8)), Q4_1 (`MINS`: x = d q + m) and with `FIVE` their
    /// five-bit kin Q5_0 (x = d (q - 16)) and Q5_1: chunks of nibble pairs.
    /// Products of 4-bit and 8-bit values are summed in i16 over the whole
    /// block (8 x 2 x 15 x 128 = 30720 < 32767); 5-bit ones over half
    /// blocks (4 x 2 x 31 x 127 = 31496). With `PRE`, the values come from
    /// `pre` (what [`unpack`] made of `g`, 256 bytes a block) instead of
    /// being unpacked again: the same sums, bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_q5<const T: usize, const MINS: bool, const FIVE: bool, const PRE: bool>(
        g: &[u8],
        pre: &[u8],
        a: [&[Q8Block]; T],
        out: &mut [[f32; 8]; T],
    ) {
        let (block, ..) = q4_q5_layout(MINS, FIVE);
        let offset = if FIVE { -16.0 } else { -8.0 };
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..g.len() / block {
            let p = g.as_ptr().add(block * b);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let m = if MINS { _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i)) } else { d };
            let w = if PRE {
                std::array::from_fn(|c| load(pre.as_ptr().add(256 * b + 32 * c) as *const i8))
            } else {
                q4_q5_values::<MINS, FIVE>(p)
            };
            for t in 0..T {
                let y = a[t].get_unchecked(b);
                let q = y.qs.as_ptr();
                let s = block_sum::<FIVE>(&w, q);
                // Q4_1/Q5_1: + m * d_y * Σq_y; Q4_0/Q5_0: - 8 (16) d * d_y * Σq_y.
                let k = if MINS { y.d * y.sum as f32 } else { offset * y.d * y.sum as f32 };
                let scaled = _mm256_fmadd_ps(m, _mm256_set1_ps(k), acc[t]);
                acc[t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(y.d)), scaled);
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// The values of every block of a Q5_0/Q5_1 group as bytes, 256 a
    /// block, for [`q4_q5`] with `PRE` (a tile of many input rows unpacks
    /// each group once instead of once per four rows).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack_q5<const MINS: bool>(g: &[u8], out: &mut [u8]) {
        let (block, ..) = q4_q5_layout(MINS, true);
        for b in 0..g.len() / block {
            let w = q4_q5_values::<MINS, true>(g.as_ptr().add(block * b));
            for (c, w) in w.iter().enumerate() {
                _mm256_storeu_si256(out[256 * b + 32 * c..].as_mut_ptr() as *mut __m256i, *w);
            }
        }
    }

    /// Bytes [`unpack`] writes for a group of `ty` (`None`: not unpacked).
    pub fn unpacked_len(ty: GgmlType, group: usize) -> Option<usize> {
        let five = matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1);
        let mins = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
        let (block, ..) = q4_q5_layout(mins, five);
        // Q4_0/Q4_1 values cost two instructions a vector to unpack: loading
        // them back is no faster (measured), so only the five- and six-bit
        // types are.
        if ty == GgmlType::Q6_K {
            return Some(group / 1680 * 8 * 512);
        }
        five.then(|| group / block * 256)
    }

    /// # Safety
    /// AVX2/FMA/F16C available; `out` holds [`unpacked_len`] bytes.
    pub unsafe fn unpack(ty: GgmlType, g: &[u8], out: &mut [u8]) {
        match ty {
            GgmlType::Q5_0 => unpack_q5::<false>(g, out),
            GgmlType::Q5_1 => unpack_q5::<true>(g, out),
            GgmlType::Q6_K => unpack_q6_k(g, out),
            _ => unreachable!("{ty} groups are not unpacked"),
        }
    }

    /// [`q4_q5`] or [`q6_k_any`] of a group `g` of `ty` with its values in
    /// `pre` ([`unpack`]).
    ///
    /// # Safety
    /// AVX2/FMA/F16C available; `pre` is `unpack(ty, g)`; activations cover the blocks.
    pub unsafe fn unpacked<const T: usize>(
        ty: GgmlType,
        g: &[u8],
        pre: &[u8],
        a: [&[Q8Block]; T],
        out: &mut [[f32; 8]; T],
    ) {
        match ty {
            GgmlType::Q6_K => q6_k_any::<T, true>(g, pre, a, out),
            GgmlType::Q5_0 => q4_q5::<T, false, true, true>(g, pre, a, out),
            GgmlType::Q5_1 => q4_q5::<T, true, true, true>(g, pre, a, out),
            _ => unreachable!("{ty} groups are not unpacked"),
        }
    }

    pub unsafe fn q4_0<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        q4_q5::<T, false, false, false>(g, &[], a, out)
    }

    pub unsafe fn q4_1<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        q4_q5::<T, true, false, false>(g, &[], a, out)
    }

    pub unsafe fn q5_0<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        q4_q5::<T, false, true, false>(g, &[], a, out)
    }

    pub unsafe fn q5_1<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        q4_q5::<T, true, true, false>(g, &[], a, out)
    }

    /// The eight rows' 6-bit scales and mins of a Q4_K/Q5_K super-block from
    /// its 12 one-byte units at `p` (`[byte][row]`, see `get_scale_min_k4`):
    /// `(scales, mins)`, byte `8 j + r` for sub-block `j` of row `r`.
    #[inline(always)]
    unsafe fn k_scales(p: *const u8) -> ([u8; 64], [u8; 64]) {
        let b = [load(p as *const i8), load(p.add(32) as *const i8), load(p.add(64) as *const i8)];
        let (m63, m15, top) = (_mm256_set1_epi8(63), _mm256_set1_epi8(15), _mm256_set1_epi8(0x30));
        // Sub-blocks 0..4 keep theirs in bytes 0..8; 4..8 split them between
        // the nibbles of bytes 8..12 and the top two bits of bytes 0..8.
        let top_of = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16(v, 2), top);
        let sc_high = _mm256_or_si256(_mm256_and_si256(b[2], m15), top_of(b[0]));
        let m_high = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b[2], 4), m15), top_of(b[1]));
        let (mut sc, mut m) = ([0u8; 64], [0u8; 64]);
        _mm256_storeu_si256(sc.as_mut_ptr() as *mut __m256i, _mm256_and_si256(b[0], m63));
        _mm256_storeu_si256(sc.as_mut_ptr().add(32) as *mut __m256i, sc_high);
        _mm256_storeu_si256(m.as_mut_ptr() as *mut __m256i, _mm256_and_si256(b[1], m63));
        _mm256_storeu_si256(m.as_mut_ptr().add(32) as *mut __m256i, m_high);
        (sc, m)
    }

    /// Eight bytes at `p` widened to eight f32 lanes.
    #[inline(always)]
    unsafe fn u8x8_ps(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// Q4_K (and Q5_K with `FIVE`): per sub-block of 32, `x = d sc q - dmin m`.
    /// Sub-block `j` is the low (even `j`) or high nibbles of chunks
    /// `8 (j / 2)..`, summed in i16 as Q4_0 (Q5_K: as Q5_0, in halves).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4k_q5k<const T: usize, const FIVE: bool>(
        g: &[u8],
        a: [&[Q8Block]; T],
        out: &mut [[f32; 8]; T],
    ) {
        let qs_at = if FIVE { 384 } else { 128 };
        let block = qs_at + 1024;
        let m4 = _mm256_set1_epi8(15);
        let mut acc = [_mm256_setzero_ps(); T];
        for i in 0..g.len() / block {
            let p = g.as_ptr().add(block * i);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
            let (sc, mins) = k_scales(p.add(32));
            for j in 0..8 {
                let dsc = _mm256_mul_ps(d, u8x8_ps(sc.as_ptr().add(8 * j)));
                let dm = _mm256_mul_ps(dmin, u8x8_ps(mins.as_ptr().add(8 * j)));
                let mut w = [_mm256_setzero_si256(); 8];
                for (c, w) in w.iter_mut().enumerate() {
                    let raw = load(p.add(qs_at + 32 * (8 * (j / 2) + c)) as *const i8);
                    let raw = if j % 2 == 0 { raw } else { _mm256_srli_epi16(raw, 4) };
                    *w = _mm256_and_si256(raw, m4);
                    if FIVE {
                        let qh = load(p.add(128 + 32 * c) as *const i8);
                        *w = _mm256_or_si256(*w, move_bit(qh, j as u32, 4));
                    }
                }
                for t in 0..T {
                    let y = a[t].get_unchecked(8 * i + j);
                    let q = y.qs.as_ptr();
                    let s = block_sum::<FIVE>(&w, q);
                    let mins = _mm256_fmadd_ps(dm, _mm256_set1_ps(-y.d * y.sum as f32), acc[t]);
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dsc, _mm256_set1_ps(y.d)), mins);
                }
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    pub unsafe fn q4_k<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        q4k_q5k::<T, false>(g, a, out)
    }

    pub unsafe fn q5_k<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        q4k_q5k::<T, true>(g, a, out)
    }

    /// Eight i8 scales at `p` as eight lanes of two equal i16 (for
    /// `madd_epi16` against a lane's two i16 sums).
    #[inline(always)]
    unsafe fn i8x8_pairs(p: *const u8) -> __m256i {
        let x = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i));
        _mm256_or_si256(_mm256_and_si256(x, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(x, 16))
    }

    /// The signed values of activation block `k` of the Q6_K super-block at
    /// `p` (eight vectors, one per activation chunk) and their magnitudes.
    /// Block `k` (values `32 k..`) is group `k % 4` of half `k / 4` in
    /// ggml's order: low bits from `ql` chunks `16 h + 8 (k % 2)..` (low
    /// nibbles for groups 0, 1), high bits from bits `2 g, 2 g + 1` of `qh`
    /// chunks `8 h..`.
    #[inline(always)]
    unsafe fn q6_k_values(p: *const u8, k: usize) -> ([__m256i; 8], [__m256i; 8]) {
        let (m4, m32, top) = (_mm256_set1_epi8(15), _mm256_set1_epi8(32), _mm256_set1_epi8(0x30));
        let (h, gi) = (k / 4, k % 4);
        let (mut w, mut wabs) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
        for c in 0..8 {
            let ql = load(p.add(144 + 32 * (16 * h + 8 * (gi % 2) + c)) as *const i8);
            let low = _mm256_and_si256(if gi < 2 { ql } else { _mm256_srli_epi16(ql, 4) }, m4);
            let qh = load(p.add(1168 + 32 * (8 * h + c)) as *const i8);
            let high = if gi < 3 {
                _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - 2 * gi as i32))
            } else {
                _mm256_srli_epi16(qh, 2)
            };
            w[c] = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_and_si256(high, top)), m32);
            wabs[c] = _mm256_sign_epi8(w[c], w[c]);
        }
        (w, wabs)
    }

    /// Q6_K: `x = d sc (q - 32)` with an i8 scale per 16 values. The signed
    /// values meet the activations as `|w| * sign(y, w)`, summed in i16 per
    /// 16 values (4 x 2 x 32 x 127 = 32512 < 32767) and scaled in `madd`.
    /// With `PRE`, the values and magnitudes come from `pre` (what
    /// [`unpack`] made of `g`, 512 bytes an activation block).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_any<const T: usize, const PRE: bool>(
        g: &[u8],
        pre: &[u8],
        a: [&[Q8Block]; T],
        out: &mut [[f32; 8]; T],
    ) {
        let mut acc = [_mm256_setzero_ps(); T];
        for i in 0..g.len() / 1680 {
            let p = g.as_ptr().add(1680 * i);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            for k in 0..8 {
                let (w, wabs) = if PRE {
                    let at = pre.as_ptr().add(512 * (8 * i + k));
                    (
                        std::array::from_fn(|c| load(at.add(32 * c) as *const i8)),
                        std::array::from_fn(|c| load(at.add(256 + 32 * c) as *const i8)),
                    )
                } else {
                    q6_k_values(p, k)
                };
                let (h, gi) = (k / 4, k % 4);
                let scales = [
                    i8x8_pairs(p.add(16 + 8 * (8 * h + 2 * gi))),
                    i8x8_pairs(p.add(16 + 8 * (8 * h + 2 * gi + 1))),
                ];
                for t in 0..T {
                    let y = a[t].get_unchecked(8 * i + k);
                    let q = y.qs.as_ptr();
                    let half = |c0: usize| {
                        let mut s = _mm256_setzero_si256();
                        for c in c0..c0 + 4 {
                            let sy = _mm256_sign_epi8(bcast(q, c), w[c]);
                            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wabs[c], sy));
                        }
                        s
                    };
                    let s = _mm256_add_epi32(
                        _mm256_madd_epi16(half(0), scales[0]),
                        _mm256_madd_epi16(half(4), scales[1]),
                    );
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(y.d)), acc[t]);
                }
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    pub unsafe fn q6_k<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        q6_k_any::<T, false>(g, &[], a, out)
    }

    /// The values and magnitudes of every block of a Q6_K group, 512 bytes
    /// an activation block, for [`q6_k_any`] with `PRE`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack_q6_k(g: &[u8], out: &mut [u8]) {
        for i in 0..g.len() / 1680 {
            for k in 0..8 {
                let (w, wabs) = q6_k_values(g.as_ptr().add(1680 * i), k);
                let at = out.as_mut_ptr().add(512 * (8 * i + k));
                for c in 0..8 {
                    _mm256_storeu_si256(at.add(32 * c) as *mut __m256i, w[c]);
                    _mm256_storeu_si256(at.add(256 + 32 * c) as *mut __m256i, wabs[c]);
                }
            }
        }
    }

    /// Q8_0: signed weights, `|w| * sign(y, w)` per chunk, summed in i32
    /// (one chunk's pairs reach 2 x 128 x 127, too much for i16 sums).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0<const T: usize>(g: &[u8], a: [&[Q8Block]; T], out: &mut [[f32; 8]; T]) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..g.len() / 272 {
            let p = g.as_ptr().add(272 * b);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let mut s32 = [_mm256_setzero_si256(); T];
            for c in 0..8 {
                let w = load(p.add(16 + 32 * c) as *const i8);
                let wabs = _mm256_sign_epi8(w, w);
                for t in 0..T {
                    let y = _mm256_sign_epi8(bcast(a[t].get_unchecked(b).qs.as_ptr(), c), w);
                    s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, y), ones));
                }
            }
            for t in 0..T {
                let yd = _mm256_set1_ps(a[t].get_unchecked(b).d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[t]), _mm256_mul_ps(d, yd), acc[t]);
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}
