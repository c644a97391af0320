//! Vectorized f32 math (x86-64 AVX2/FMA): `exp` of eight values, SiLU
//! gating built on it, and attention's softmax chunks (the dot products of
//! one query with eight keys at a time). Only called where the CPU has the
//! features.

#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

/// `exp` of eight values, Cephes' `expf` (a degree-6 polynomial after range
/// reduction by ln 2, within 2 ulp of the true value over the normal range;
/// results below 2^-126 are flushed to zero, inputs above ln f32::MAX are
/// clamped there; NaN stays NaN).
#[inline(always)]
pub unsafe fn exp8(x: __m256) -> __m256 {
    let lowest = _mm256_set1_ps(-87.336_55); // ln 2^-126
    let underflow = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
    // min/max return their second operand where one is NaN: x, so NaN passes.
    let x = _mm256_max_ps(lowest, _mm256_min_ps(_mm256_set1_ps(88.376_26), x));
    let n =
        _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
    // x - n ln 2, with ln 2 split in two so the product's error cancels.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(scale)))
}

/// `g[i] = g[i] / (1 + exp(-g[i])) * u[i]`. The tail goes through the same
/// vector code (padded), so each value's result does not depend on where
/// it falls in the slice.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let one = _mm256_set1_ps(1.0);
    let eight = |x: __m256, u: __m256| {
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), u)
    };
    let mut i = 0;
    while i + 8 <= n {
        let y = eight(_mm256_loadu_ps(g.as_ptr().add(i)), _mm256_loadu_ps(u.as_ptr().add(i)));
        _mm256_storeu_ps(g.as_mut_ptr().add(i), y);
        i += 8;
    }
    if i < n {
        let (mut x, mut y) = ([0f32; 8], [0f32; 8]);
        x[..n - i].copy_from_slice(&g[i..n]);
        y[..n - i].copy_from_slice(&u[i..n]);
        _mm256_storeu_ps(x.as_mut_ptr(), eight(_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr())));
        g[i..n].copy_from_slice(&x[..n - i]);
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// The sums of four vectors' lanes (pairs, then pairs of pairs, then the
/// two halves), as the four lanes of one vector.
#[inline(always)]
unsafe fn reduce4(a: [__m256; 4]) -> __m128 {
    let u = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1))
}

/// `attention::chunk_partial` for the `H` query heads of `q` (`H *
/// head_dim` values) that share these keys and values, each key and value
/// vector loaded once for the `H` heads: scores four positions at a time,
/// their exponentials eight at a time, the weighted values summed in
/// registers 32 dims at a time in position order. No head's operations
/// depend on the others, so a head's partial is the same in any group.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indices run over several arrays (heads x positions, heads x dims)
unsafe fn chunk_partials_h<const H: usize>(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    partials: &mut [f32],
) {
    let hd = q.len() / H;
    let n = scores.len() / H;
    let part = 2 + hd;
    let (qp, k, v) = (q.as_ptr(), keys.as_ptr(), values.as_ptr());
    for p0 in (0..n).step_by(4) {
        let m = (n - p0).min(4);
        let mut acc = [[_mm256_setzero_ps(); 4]; H];
        for d in (0..hd).step_by(8) {
            let qv: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(qp.add(h * hd + d)));
            for j in 0..m {
                let kv = _mm256_loadu_ps(k.add((p0 + j) * hd + d));
                for h in 0..H {
                    acc[h][j] = _mm256_fmadd_ps(qv[h], kv, acc[h][j]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; 4];
            _mm_storeu_ps(lanes.as_mut_ptr(), _mm_mul_ps(reduce4(*acc), _mm_set1_ps(scale)));
            scores[h * n + p0..h * n + p0 + m].copy_from_slice(&lanes[..m]);
        }
    }
    for h in 0..H {
        let s = &mut scores[h * n..(h + 1) * n];
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sumv = _mm256_setzero_ps();
        for p0 in (0..n).step_by(8) {
            let m = (n - p0).min(8);
            let mut lanes = [f32::NEG_INFINITY; 8];
            lanes[..m].copy_from_slice(&s[p0..p0 + m]);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(lanes.as_ptr()), _mm256_set1_ps(max)));
            _mm256_storeu_ps(lanes.as_mut_ptr(), e);
            s[p0..p0 + m].copy_from_slice(&lanes[..m]);
            sumv = _mm256_add_ps(sumv, e);
        }
        partials[h * part..h * part + 2].copy_from_slice(&[max, hsum(sumv)]);
    }
    let mut d0 = 0;
    while d0 < hd {
        let regs = ((hd - d0) / 8).min(4);
        let mut acc = [[_mm256_setzero_ps(); 4]; H];
        for p in 0..n {
            let vv: [__m256; 4] = std::array::from_fn(|i| {
                if i < regs {
                    _mm256_loadu_ps(v.add(p * hd + d0 + 8 * i))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for h in 0..H {
                let ev = _mm256_set1_ps(scores[h * n + p]);
                for i in 0..regs {
                    acc[h][i] = _mm256_fmadd_ps(ev, vv[i], acc[h][i]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (i, acc) in acc.iter().enumerate().take(regs) {
                _mm256_storeu_ps(partials.as_mut_ptr().add(h * part + 2 + d0 + 8 * i), *acc);
            }
        }
        d0 += 8 * regs;
    }
}

/// `attention::chunk_partial` of every query head of a group (`q`: `group *
/// head_dim` values; `scores`: `group * n` scratch; `partials`: `group *
/// (2 + head_dim)`), up to three heads at a time sharing each load of the
/// keys and values. Each head's partial is the one it gets alone.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn chunk_partials(
    q: &[f32],
    group: usize,
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    partials: &mut [f32],
) {
    let hd = q.len() / group;
    let n = scores.len() / group;
    debug_assert!(hd.is_multiple_of(8) && keys.len() >= n * hd && values.len() >= n * hd);
    debug_assert!(partials.len() >= group * (2 + hd));
    let mut h0 = 0;
    while h0 < group {
        let h = (group - h0).min(3);
        let (q, s, p) =
            (&q[h0 * hd..(h0 + h) * hd], &mut scores[h0 * n..(h0 + h) * n], &mut partials[h0 * (2 + hd)..]);
        match h {
            3 => chunk_partials_h::<3>(q, keys, values, scale, s, p),
            2 => chunk_partials_h::<2>(q, keys, values, scale, s, p),
            _ => chunk_partials_h::<1>(q, keys, values, scale, s, p),
        }
        h0 += h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avx2() -> bool {
        super::super::quant::x86_simd()
    }

    #[test]
    fn exp8_is_within_two_ulp() {
        if !avx2() {
            return;
        }
        let mut x = -87.0f32;
        while x <= 88.0 {
            let xs: [f32; 8] = std::array::from_fn(|i| x + i as f32 * 0.0137);
            let mut got = [0f32; 8];
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr()))) };
            for (g, x) in got.iter().zip(xs) {
                let want = (x as f64).exp();
                let ulp = (want as f32).abs() * f32::EPSILON;
                assert!(((*g as f64) - want).abs() <= 2.0 * ulp as f64, "exp({x}) = {g}, want {want}");
            }
            x += 0.1;
        }
        let mut z = [0f32; 8];
        unsafe { _mm256_storeu_ps(z.as_mut_ptr(), exp8(_mm256_set1_ps(f32::NEG_INFINITY))) };
        assert_eq!(z, [0.0; 8]);
        unsafe { _mm256_storeu_ps(z.as_mut_ptr(), exp8(_mm256_set1_ps(f32::NAN))) };
        assert!(z.iter().all(|v| v.is_nan()), "NaN must stay NaN: {z:?}");
    }

    /// Against the same quantities in f64: scores, their max, the sum of
    /// exponentials and the weighted values, for chunk lengths around the
    /// vector width and head dims that are and are not whole tiles of 64.
    #[test]
    fn chunk_partial_matches_f64() {
        if !avx2() {
            return;
        }
        let mut seed = 1u32;
        let mut rand = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for hd in [8, 64, 96, 128] {
            for n in [1, 5, 8, 13, 64] {
                let q: Vec<f32> = (0..hd).map(|_| rand()).collect();
                let k: Vec<f32> = (0..n * hd).map(|_| 3.0 * rand()).collect();
                let v: Vec<f32> = (0..n * hd).map(|_| rand()).collect();
                let (mut scores, mut partial) = (vec![0f32; n], vec![0f32; 2 + hd]);
                let scale = 1.0 / (hd as f32).sqrt();
                unsafe { chunk_partials(&q, 1, &k, &v, scale, &mut scores, &mut partial) };
                let s: Vec<f64> = (0..n)
                    .map(|p| (0..hd).map(|d| q[d] as f64 * k[p * hd + d] as f64).sum::<f64>() * scale as f64)
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
                assert!((partial[0] as f64 - max).abs() < 1e-5, "hd {hd} n {n}: max");
                assert!(
                    (partial[1] as f64 - e.iter().sum::<f64>()).abs() < 1e-5 * n as f64,
                    "hd {hd} n {n}: sum"
                );
                for d in 0..hd {
                    let want: f64 = (0..n).map(|p| e[p] * v[p * hd + d] as f64).sum();
                    assert!((partial[2 + d] as f64 - want).abs() < 1e-5 * n as f64, "hd {hd} n {n} dim {d}");
                }
            }
        }
    }

    /// The grouped chunks give each head what it gets alone, bit for bit,
    /// for groups of 1 to 7 heads (sub-groups of 3, 2 and 1).
    #[test]
    fn grouped_partials_equal_one_head_at_a_time() {
        if !avx2() {
            return;
        }
        let mut seed = 5u32;
        let mut rand = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for (group, hd, n) in [(1, 64, 64), (2, 8, 5), (3, 64, 13), (4, 96, 64), (7, 128, 3)] {
            let q: Vec<f32> = (0..group * hd).map(|_| rand()).collect();
            let k: Vec<f32> = (0..n * hd).map(|_| 3.0 * rand()).collect();
            let v: Vec<f32> = (0..n * hd).map(|_| rand()).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            let (mut scores, mut got) = (vec![0f32; group * n], vec![0f32; group * (2 + hd)]);
            unsafe { chunk_partials(&q, group, &k, &v, scale, &mut scores, &mut got) };
            for h in 0..group {
                let (mut s, mut want) = (vec![0f32; n], vec![0f32; 2 + hd]);
                unsafe { chunk_partials(&q[h * hd..(h + 1) * hd], 1, &k, &v, scale, &mut s, &mut want) };
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got[h * (2 + hd)..(h + 1) * (2 + hd)]),
                    bits(&want),
                    "group {group} head {h} n {n}"
                );
            }
        }
    }
}
