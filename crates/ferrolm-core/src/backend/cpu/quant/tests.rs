//! Every kernel variant this CPU runs against the portable reference, and
//! the portable kernels against the formats' own dequantizers.
//!
//! Bounds: a kernel adds `n` block products in f32 (in whatever order), so
//! its result differs from the exact sum by at most about `n * eps * M`,
//! where `M = Σ |w_i * x_i|` (the magnitude of the terms). The tests allow
//! `(n + 8) * eps * M`: the order of additions is the only freedom a
//! variant has, since integer block sums are exact.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::formats::dequantize;

const TYPES: [GgmlType; 8] = INTERLEAVED;

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// A row of `cols` values of `ty`: random bytes (every bit pattern of the
/// quants) with finite random scales.
pub(in crate::backend::cpu) fn random_row(ty: GgmlType, cols: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (block, bytes) = ty.block_layout().unwrap();
    let mut row: Vec<u8> = (0..cols / block * bytes).map(|_| rng.random()).collect();
    for b in row.chunks_exact_mut(bytes) {
        let mut scale = |at: usize, rng: &mut ChaCha8Rng| {
            b[at..at + 2].copy_from_slice(&f16_bytes(rng.random_range(-0.05f32..0.05)));
        };
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => scale(0, rng),
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
                scale(0, rng);
                scale(2, rng);
            }
            GgmlType::Q6_K => scale(208, rng),
            _ => unreachable!(),
        }
    }
    row
}

fn random_acts(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<Q8Block>> {
    (0..rows)
        .map(|_| {
            let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let mut q = vec![Q8Block::default(); cols / QK];
            quantize_rows(&x, &mut q);
            q
        })
        .collect()
}

/// The exact dot product (f64) of the dequantized row with the dequantized
/// activations, and the magnitude `M` of its terms.
fn reference(ty: GgmlType, w: &[u8], a: &[Q8Block], cols: usize) -> (f64, f64) {
    let mut wf = vec![0f32; cols];
    dequantize::dequantize(ty, w, &mut wf).unwrap();
    let x = a.iter().flat_map(|b| b.qs.iter().map(move |&q| b.d as f64 * q as f64));
    wf.iter().zip(x).fold((0.0, 0.0), |(s, m), (&w, x)| (s + w as f64 * x, m + (w as f64 * x).abs()))
}

fn bound(cols: usize, magnitude: f64) -> f64 {
    (cols / QK + 8) as f64 * f32::EPSILON as f64 * magnitude
}

#[test]
fn portable_kernels_equal_the_dequantized_product() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for ty in TYPES {
        for cols in [256, 576, 1536] {
            let cols = cols / ty.block_layout().unwrap().0 * ty.block_layout().unwrap().0;
            let w = random_row(ty, cols, &mut rng);
            let a = random_acts(1, cols, &mut rng);
            let mut out = [0f32];
            dot_q8(Isa::Portable, ty, &w, &[&a[0]], &mut out);
            let (exact, m) = reference(ty, &w, &a[0], cols);
            assert!(
                (out[0] as f64 - exact).abs() <= bound(cols, m),
                "{ty} cols {cols}: {} vs {exact}",
                out[0]
            );
        }
    }
}

#[test]
fn every_isa_matches_portable_for_one_to_four_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for isa in Isa::available() {
        for ty in TYPES {
            // An odd block count exercises the two alternating accumulators.
            for cols in [256, 768, 1536] {
                let w = random_row(ty, cols, &mut rng);
                let acts = random_acts(4, cols, &mut rng);
                for n in 1..=4 {
                    let rows: Vec<&[Q8Block]> = acts[..n].iter().map(|a| a.as_slice()).collect();
                    let mut got = [0f32; 4];
                    dot_q8(isa, ty, &w, &rows, &mut got[..n]);
                    for t in 0..n {
                        let mut want = [0f32];
                        dot_q8(Isa::Portable, ty, &w, &[rows[t]], &mut want);
                        let (_, m) = reference(ty, &w, rows[t], cols);
                        let err = (got[t] - want[0]).abs() as f64;
                        assert!(
                            err <= bound(cols, m),
                            "{isa:?} {ty} cols {cols} n {n} row {t}: {} vs {}",
                            got[t],
                            want[0]
                        );
                        if isa == Isa::Neon {
                            assert_eq!(got[t], want[0], "NEON keeps the portable order");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn vnni_equals_avx2_bit_for_bit() {
    if !Isa::available().contains(&Isa::Avx512Vnni) {
        return; // nothing to compare on this CPU
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for ty in TYPES {
        let w = random_row(ty, 1536, &mut rng);
        let acts = random_acts(4, 1536, &mut rng);
        let rows: Vec<&[Q8Block]> = acts.iter().map(|a| a.as_slice()).collect();
        let (mut a, mut b) = ([0f32; 4], [0f32; 4]);
        dot_q8(Isa::Avx2, ty, &w, &rows, &mut a);
        dot_q8(Isa::Avx512Vnni, ty, &w, &rows, &mut b);
        assert_eq!(a, b, "{ty}");
    }
}

#[test]
fn half_rows_match_portable() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for ty in [GgmlType::F16, GgmlType::BF16] {
        for cols in [7, 64, 577] {
            let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let wf: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let w: Vec<u8> = wf
                .iter()
                .flat_map(|&v| match ty {
                    GgmlType::F16 => half::f16::from_f32(v).to_le_bytes(),
                    _ => half::bf16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let want = dot_half(Isa::Portable, ty, &w, &x);
            let mut wide = vec![0f32; cols];
            dequantize::dequantize(ty, &w, &mut wide).unwrap();
            let m: f64 = wide.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum();
            for isa in Isa::available() {
                let got = dot_half(isa, ty, &w, &x);
                assert!(
                    ((got - want).abs() as f64) <= (cols as f64 + 8.0) * f32::EPSILON as f64 * m,
                    "{isa:?} {ty} {cols}"
                );
            }
        }
    }
}

#[test]
fn simd_activation_quantization_equals_portable() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // Exact ties (k + 0.5 steps) are where rounding modes differ.
    let mut x: Vec<f32> = (0..4096).map(|_| rng.random_range(-10.0f32..10.0)).collect();
    for (i, v) in x.iter_mut().enumerate().step_by(7) {
        *v = (i % 255) as f32 - 127.0 + 0.5;
    }
    x[100] = f32::NAN; // quantized to 0 by both
    x[200] = f32::INFINITY; // a block whose scale is infinite
    let (mut a, mut b) = (vec![Q8Block::default(); 128], vec![Q8Block::default(); 128]);
    quantize_rows(&x, &mut a);
    quantize_rows_portable(&x, &mut b);
    for (a, b) in a.iter().zip(&b) {
        assert_eq!((a.d.to_bits(), a.sum, a.qs), (b.d.to_bits(), b.sum, b.qs));
    }
}

#[test]
fn activation_quantization_rounds_to_the_nearest_step() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut x: Vec<f32> = (0..128).map(|_| rng.random_range(-10.0f32..10.0)).collect();
    x[32..64].fill(0.0); // an all-zero block
    x[64] = 1e6; // one huge value
    let mut q = vec![Q8Block::default(); 4];
    quantize_rows(&x, &mut q);
    assert_eq!(q[1].d, 0.0);
    assert!(q[1].qs.iter().all(|&v| v == 0));
    for (b, x) in q.iter().zip(x.chunks(QK)) {
        assert_eq!(b.sum, b.qs.iter().map(|&v| v as i32).sum::<i32>());
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(b.qs.iter().any(|&v| v.unsigned_abs() == 127) || amax == 0.0);
        for (&v, &x) in b.qs.iter().zip(x) {
            // |x - d q| <= d/2, plus the rounding of d itself.
            assert!((x - b.d * v as f32).abs() <= b.d * 0.5 * (1.0 + 1e-5), "{x} vs {}", b.d * v as f32);
        }
    }
}

/// `γ_n M`: the most that adding `n` terms of total magnitude `M` in f32,
/// one rounding of relative size `u = 2^-24` per operation, in any order
/// (with or without FMA), can move the sum (Higham, Accuracy and Stability
/// of Numerical Algorithms, eq. 3.5).
pub(in crate::backend::cpu) fn gamma(n: usize, m: f64) -> f64 {
    let nu = n as f64 * (f32::EPSILON as f64 / 2.0);
    nu / (1.0 - nu) * m
}

/// Random FP8 codes (every finite pattern; NaN codes are never stored).
pub(in crate::backend::cpu) fn fp8_codes(n: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    (0..n).map(|_| rng.random::<u8>()).map(|c| if c & 0x7f == 0x7f { c ^ 1 } else { c }).collect()
}

/// Each FP8 kernel against the exact sum: decoded values have 4 significant
/// bits, so every product `decode(w) * x` is exact in f64 and the f64 sum of
/// `cols` < 2^20 terms is within `cols * 2^-53 M` of exact. A kernel adds
/// `cols` products, then the SIMD one adds its tail once more: γ_{cols+2}.
#[test]
fn fp8_kernels_equal_the_exact_sum_within_f32_rounding() {
    use crate::formats::fp8::e4m3::decode;
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for cols in [1, 15, 16, 31, 32, 33, 576, 1536 + 7] {
        let w = fp8_codes(cols, &mut rng);
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let exact: f64 = w.iter().zip(&x).map(|(&c, &x)| decode(c) as f64 * x as f64).sum();
        let m: f64 = w.iter().zip(&x).map(|(&c, &x)| (decode(c) as f64 * x as f64).abs()).sum();
        let bound = gamma(cols + 2, m) + cols as f64 * f64::EPSILON * m;
        let mut portable_wide = vec![0f32; cols];
        widen_fp8(Isa::Portable, &w, 0.37, &mut portable_wide);
        for isa in Isa::available() {
            let got = dot_fp8(isa, &w, &x) as f64;
            assert!((got - exact).abs() <= bound, "{isa:?} cols {cols}: {got} vs {exact} (bound {bound})");
            // Four rows at once: row i is `w` rotated by i codes.
            let rows: Vec<Vec<u8>> =
                (0..4).map(|i| [&w[i.min(cols)..], &w[..i.min(cols)]].concat()).collect();
            let four = dot_fp8_x4(isa, std::array::from_fn(|i| &rows[i][..]), &x);
            for (row, got) in rows.iter().zip(four) {
                let exact: f64 = row.iter().zip(&x).map(|(&c, &x)| decode(c) as f64 * x as f64).sum();
                let m: f64 = row.iter().zip(&x).map(|(&c, &x)| (decode(c) as f64 * x as f64).abs()).sum();
                let bound = gamma(cols + 2, m) + cols as f64 * f64::EPSILON * m;
                assert!((got as f64 - exact).abs() <= bound, "{isa:?} x4 cols {cols}: {got} vs {exact}");
            }
            let mut wide = vec![0f32; cols];
            widen_fp8(isa, &w, 0.37, &mut wide);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide), bits(&portable_wide), "{isa:?} cols {cols}: widening differs");
            assert!(wide.iter().zip(&w).all(|(&v, &c)| v == decode(c) * 0.37));
        }
    }
}

/// Each interleaved kernel against the portable row kernel, row by row, for
/// one to four activation rows: the same integer block sums, so the two
/// differ only by the order of float additions (the bound of the row test).
/// Groups unpacked once give the packed kernels' results bit for bit.
#[test]
fn interleaved_groups_match_portable_rows() {
    use crate::formats::{Bytes, PackedTensor};
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for isa in Isa::available().into_iter().filter(|&isa| interleaves(isa)) {
        for ty in INTERLEAVED {
            let cols = 768;
            let rows: Vec<Vec<u8>> = (0..16).map(|_| random_row(ty, cols, &mut rng)).collect();
            let p = PackedTensor::new(vec![16, cols], ty, Bytes::Owned(rows.concat())).unwrap();
            let w = interleave::Interleaved::new(&p);
            let acts = random_acts(4, cols, &mut rng);
            for n in 1..=4 {
                let a: Vec<&[Q8Block]> = acts[..n].iter().map(|a| a.as_slice()).collect();
                for g in 0..2 {
                    let mut got = [[0f32; 8]; 4];
                    dot_x8(isa, ty, w.group(g), &a, &mut got[..n]);
                    if let Some(len) = unpacked_len(isa, ty, w.group_bytes()) {
                        let mut pre = vec![0u8; len];
                        unpack_x8(isa, ty, w.group(g), &mut pre);
                        let mut same = [[0f32; 8]; 4];
                        dot_x8_unpacked(isa, ty, w.group(g), &pre, &a, &mut same[..n]);
                        assert_eq!(same, got, "{isa:?} {ty} n {n}: unpacked values change the sums");
                    }
                    for (t, a) in a.iter().enumerate() {
                        for i in 0..8 {
                            let row = &rows[8 * g + i];
                            let mut want = [0f32];
                            dot_q8(Isa::Portable, ty, row, &[a], &mut want);
                            let (_, m) = reference(ty, row, a, cols);
                            assert!(
                                ((got[t][i] - want[0]).abs() as f64) <= bound(cols, m),
                                "{isa:?} {ty} n {n} act {t} row {}: {} vs {}",
                                8 * g + i,
                                got[t][i],
                                want[0]
                            );
                        }
                    }
                }
            }
        }
    }
}
