//! The CPU ops on cases small enough to check by hand.

use super::{Cpu, CpuOptions, CpuWeight};
use crate::backend::{AttentionShape, Backend, KvGeometry, KvKind, KvPart, SeqSpan};
use crate::formats::DType;
use crate::formats::HostTensor;

fn t(shape: &[usize], data: &[f32]) -> CpuWeight {
    CpuWeight::F32(HostTensor::new(shape.to_vec(), data.to_vec()).unwrap())
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{a:?} != {b:?}");
    }
}

#[test]
fn rms_norm_per_row_and_per_head() {
    let cpu = Cpu::default();
    // Row [3, 4]: mean square 12.5, so x / sqrt(12.5) scaled by the weight.
    let mut out = vec![0.0; 4];
    cpu.rms_norm(&vec![3.0, 4.0, 1.0, 1.0], &t(&[2], &[1.0, 2.0]), 0.0, 2, &mut out).unwrap();
    let s = 12.5f32.sqrt();
    close(&out, &[3.0 / s, 8.0 / s, 1.0, 2.0]);
}

#[test]
fn linear_is_x_times_w_transposed_plus_bias() {
    let cpu = Cpu::default();
    let w = t(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); // [out=3, in=2]
    let mut out = vec![0.0; 6];
    cpu.linear(&vec![1.0, 1.0, 2.0, -1.0], &w, Some(&t(&[3], &[0.5, 0.0, -0.5])), &mut out).unwrap();
    close(&out, &[3.5, 7.0, 10.5, 0.5, 2.0, 3.5]);
}

#[test]
fn rope_rotates_each_half_pair() {
    let cpu = Cpu::default();
    // head_dim 4: pairs (0, 2) and (1, 3) with frequencies 1 and 0.5, position 2.
    let mut x = vec![1.0, 0.0, 0.0, 1.0];
    cpu.rope(&mut x, &[2], 4, &[1.0, 0.5]).unwrap();
    let (a, b) = (2.0f32, 1.0f32);
    close(&x, &[a.cos(), -b.sin(), a.sin(), b.cos()]);
}

#[test]
fn silu_mul_and_add() {
    let cpu = Cpu::default();
    let mut g = vec![0.0, 2.0];
    cpu.silu_mul(&mut g, &vec![5.0, 3.0]).unwrap();
    close(&g, &[0.0, 2.0 / (1.0 + (-2.0f32).exp()) * 3.0]);
    cpu.add(&mut g, &vec![1.0, 1.0]).unwrap();
    close(&g, &[1.0, 2.0 / (1.0 + (-2.0f32).exp()) * 3.0 + 1.0]);
}

/// One kv head of dim 2 shared by two query heads; three positions, one
/// per page, with the block table out of order.
fn attend(window: Option<usize>, q: &[f32]) -> Vec<f32> {
    let cpu = Cpu::default();
    let mut kv = cpu.new_kv(KvGeometry { pages: 4, page_size: 1, layers: 1, kv_dim: 2 }, DType::F32).unwrap();
    let shape = AttentionShape { num_heads: 2, num_kv_heads: 1, head_dim: 2, sliding_window: window };
    let k = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let v = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut out = vec![0.0; 12];
    let span = SeqSpan { pages: &[2, 0, 3], start_pos: 0, row: 0, len: 3 };
    cpu.attention(&mut kv, 0, &[span], shape, &q.to_vec(), &k, &v, &mut out).unwrap();
    out
}

/// A decode step (one query row, positions split across threads and the
/// softmax merged) equals the same row computed in a prompt pass, with and
/// without a sliding window, f32 and f16 pages.
#[test]
fn split_decode_attention_equals_the_prompt_pass() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (heads, kv_heads, head_dim, len) = (4, 2, 8, 77);
    for (window, dtype) in [(None, DType::F32), (Some(20), DType::F32), (None, DType::F16)] {
        let cpu = Cpu::new(CpuOptions { threads: Some(4), ..Default::default() }).unwrap();
        let shape =
            AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim, sliding_window: window };
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let (q, k, v) =
            (rand(len * heads * head_dim), rand(len * kv_heads * head_dim), rand(len * kv_heads * head_dim));
        let pages: Vec<u32> = (0..len.div_ceil(4) as u32).rev().collect();
        let mut kv = cpu
            .new_kv(
                KvGeometry { pages: pages.len(), page_size: 4, layers: 1, kv_dim: kv_heads * head_dim },
                dtype,
            )
            .unwrap();
        let mut full = vec![0.0; len * heads * head_dim];
        let span = SeqSpan { pages: &pages, start_pos: 0, row: 0, len };
        cpu.attention(&mut kv, 0, &[span], shape, &q, &k, &v, &mut full).unwrap();
        // The last position again, as a decode step over the cached keys.
        let (w, qw) = (kv_heads * head_dim, heads * head_dim);
        let mut step = vec![0.0; qw];
        let span = SeqSpan { pages: &pages, start_pos: len - 1, row: 0, len: 1 };
        let (q1, k1, v1) = (&q[(len - 1) * qw..], &k[(len - 1) * w..], &v[(len - 1) * w..]);
        cpu.attention(&mut kv, 0, &[span], shape, &q1.to_vec(), &k1.to_vec(), &v1.to_vec(), &mut step)
            .unwrap();
        close(&step, &full[(len - 1) * qw..]);
    }
}

#[test]
fn attention_is_causal_softmax_weighted() {
    // Zero queries: uniform weights over the visible prefix.
    let out = attend(None, &[0.0; 12]);
    close(&out[0..4], &[1.0, 2.0, 1.0, 2.0]);
    close(&out[4..8], &[2.0, 3.0, 2.0, 3.0]);
    close(&out[8..12], &[3.0, 4.0, 3.0, 4.0]);

    // A query aligned with key 0 at position 1: weights softmax([s, 0]).
    let mut q = vec![0.0; 12];
    q[4] = 2.0;
    let out = attend(None, &q);
    let s = 2.0 / 2f32.sqrt();
    let p0 = s.exp() / (s.exp() + 1.0);
    close(&out[4..6], &[p0 * 1.0 + (1.0 - p0) * 3.0, p0 * 2.0 + (1.0 - p0) * 4.0]);
    close(&out[6..8], &[2.0, 3.0]); // the other head has a zero query
}

#[test]
fn sliding_window_drops_old_positions() {
    // Window 2: position 2 sees positions 1 and 2 only.
    let out = attend(Some(2), &[0.0; 12]);
    close(&out[8..12], &[4.0, 5.0, 4.0, 5.0]);
    close(&out[4..8], &[2.0, 3.0, 2.0, 3.0]);
}

#[test]
fn copied_pages_hold_the_same_keys_and_values() {
    let cpu = Cpu::default();
    let mut kv = cpu.new_kv(KvGeometry { pages: 2, page_size: 2, layers: 1, kv_dim: 1 }, DType::F32).unwrap();
    let shape = AttentionShape { num_heads: 1, num_kv_heads: 1, head_dim: 1, sliding_window: None };
    let mut out = vec![0.0; 2];
    let span = SeqSpan { pages: &[0], start_pos: 0, row: 0, len: 2 };
    cpu.attention(&mut kv, 0, &[span], shape, &vec![0.0; 2], &vec![1.0, 2.0], &vec![3.0, 5.0], &mut out)
        .unwrap();
    cpu.copy_page(&mut kv, 0, 1).unwrap();
    // Reading position 1 through the copy: uniform weights over values 3 and 5.
    let span = SeqSpan { pages: &[1], start_pos: 1, row: 0, len: 1 };
    let mut out = vec![0.0; 1];
    cpu.attention(&mut kv, 0, &[span], shape, &vec![0.0], &vec![2.0], &vec![5.0], &mut out).unwrap();
    close(&out, &[4.0]);
}

/// A copy reads as its source does, zeros for a page never written (not
/// what `dst` held before); pages outside the pool are errors, not panics.
#[test]
fn copies_of_unwritten_pages_are_zeros_and_missing_pages_are_errors() {
    let cpu = Cpu::default();
    let mut kv = cpu.new_kv(KvGeometry { pages: 3, page_size: 2, layers: 1, kv_dim: 1 }, DType::F32).unwrap();
    let part = |kind| KvPart { layer: 0, kind, kv_heads: 1, head_dim: 1 };
    cpu.write_kv_page(&mut kv, 1, part(KvKind::Key), 0, &[1.0, 2.0]).unwrap();
    cpu.copy_page(&mut kv, 2, 1).unwrap();
    assert_eq!(cpu.read_kv_page(&kv, 1, part(KvKind::Key)).unwrap(), vec![0.0, 0.0]);
    for (src, dst) in [(3, 0), (0, 3)] {
        let e = cpu.copy_page(&mut kv, src, dst).unwrap_err().to_string();
        assert!(e.contains("page 3 does not exist"), "{e}");
    }
}

/// Storage grows with the pages written: a pool of every page id costs
/// nothing up front (sized by the pool it would take ~100 GB).
#[test]
fn a_pool_of_every_page_id_costs_only_the_pages_written() {
    let cpu = Cpu::default();
    let pages = u32::MAX as usize;
    let mut kv = cpu.new_kv(KvGeometry { pages, page_size: 2, layers: 1, kv_dim: 1 }, DType::F16).unwrap();
    let part = |kind| KvPart { layer: 0, kind, kv_heads: 1, head_dim: 1 };
    cpu.write_kv_page(&mut kv, 3, part(KvKind::Value), 0, &[1.0, 2.0]).unwrap();
    assert_eq!(cpu.read_kv_page(&kv, 3, part(KvKind::Value)).unwrap(), vec![1.0, 2.0]);
    assert_eq!(cpu.read_kv_page(&kv, 1 << 30, part(KvKind::Value)).unwrap(), vec![0.0, 0.0]);
    cpu.copy_page(&mut kv, 1 << 30, 3).unwrap();
    assert_eq!(cpu.read_kv_page(&kv, 3, part(KvKind::Value)).unwrap(), vec![0.0, 0.0]);
}

/// The page views see what attention stores, in MILI's `[offset][head][head_dim]`
/// order, and attention reads what the views write (f32 and f16 pages).
#[test]
fn page_views_match_what_attention_writes_and_reads() {
    let (kv_heads, head_dim, ps) = (2, 3, 4);
    let w = kv_heads * head_dim;
    let shape =
        AttentionShape { num_heads: kv_heads, num_kv_heads: kv_heads, head_dim, sliding_window: None };
    let part = |kind| KvPart { layer: 1, kind, kv_heads, head_dim };
    for dtype in [DType::F32, DType::F16] {
        let cpu = Cpu::new(CpuOptions { threads: Some(1), ..Default::default() }).unwrap();
        let stored = |x: &[f32]| -> Vec<f32> {
            x.iter().map(|&v| if dtype == DType::F16 { half::f16::from_f32(v).to_f32() } else { v }).collect()
        };
        let mut kv = cpu.new_kv(KvGeometry { pages: 4, page_size: ps, layers: 2, kv_dim: w }, dtype).unwrap();
        let k: Vec<f32> = (0..6 * w).map(|i| i as f32 * 0.1 + 0.01).collect();
        let v: Vec<f32> = (0..6 * w).map(|i| -(i as f32) * 0.3).collect();
        let span = SeqSpan { pages: &[3, 1], start_pos: 0, row: 0, len: 6 };
        let mut out = vec![0.0; 6 * w];
        cpu.attention(&mut kv, 1, &[span], shape, &vec![0.0; 6 * w], &k, &v, &mut out).unwrap();

        assert_eq!(cpu.read_kv_page(&kv, 3, part(KvKind::Key)).unwrap(), stored(&k[..ps * w]));
        assert_eq!(cpu.read_kv_page(&kv, 3, part(KvKind::Value)).unwrap(), stored(&v[..ps * w]));
        let tail = cpu.read_kv_page(&kv, 1, part(KvKind::Value)).unwrap();
        assert_eq!(tail[..2 * w], stored(&v[ps * w..]));
        assert_eq!(tail[2 * w..], vec![0.0; 2 * w], "positions 6 and 7 were never written");
        let layer0 = KvPart { layer: 0, ..part(KvKind::Key) };
        assert_eq!(cpu.read_kv_page(&kv, 3, layer0).unwrap(), vec![0.0; ps * w], "layer 0 is untouched");

        // Values written through the view at position 6 (offset 2 of page 1):
        // a zero query averages values 0..=6 uniformly, per head.
        let v6: Vec<f32> = (0..w).map(|i| 7.5 + i as f32).collect();
        cpu.write_kv_page(&mut kv, 1, part(KvKind::Value), 2, &v6).unwrap();
        cpu.write_kv_page(&mut kv, 1, part(KvKind::Key), 2, &vec![0.0; w]).unwrap();
        let span = SeqSpan { pages: &[3, 1], start_pos: 7, row: 0, len: 1 };
        let (k7, v7) = (vec![0.0; w], vec![0.0; w]);
        let mut out = vec![0.0; w];
        cpu.attention(&mut kv, 1, &[span], shape, &vec![0.0; w], &k7, &v7, &mut out).unwrap();
        let all: Vec<f32> = [stored(&v), stored(&v6), v7].concat();
        let mean: Vec<f32> = (0..w).map(|i| (0..8).map(|p| all[p * w + i]).sum::<f32>() / 8.0).collect();
        close(&out, &mean);
    }
}

mod packed {
    //! Linear layers on packed weights against the same weights widened to
    //! f32. The only difference allowed is the activation rounding: each
    //! input value moves by at most half its block's step `d`, so an output
    //! moves by at most `Σ_i |w_i| * d_i / 2` (plus f32 rounding).

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::super::quant::interleave::Interleaved;
    use super::super::quant::tests::random_row;
    use super::super::quant::{self, Isa, Q8Block, QK};
    use super::super::{CpuOptions, CpuWeight};
    use super::Cpu;
    use crate::backend::Backend;
    use crate::formats::GgmlType;
    use crate::formats::{Bytes, PackedTensor};

    fn packed(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> PackedTensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
        PackedTensor::new(vec![rows, cols], ty, Bytes::Owned(data)).unwrap()
    }

    /// `Σ_i |w_i| * d_i / 2` for each (token, row), the bound on what
    /// activation rounding can change.
    fn rounding_bound(x: &[f32], wide: &[f32], cols: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for xr in x.chunks(cols) {
            let mut q = vec![Q8Block::default(); cols / QK];
            super::super::quant::quantize_rows(xr, &mut q);
            for wr in wide.chunks(cols) {
                let b: f32 = wr.iter().enumerate().map(|(i, w)| w.abs() * q[i / QK].d / 2.0).sum();
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn packed_linear_equals_f32_up_to_activation_rounding() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (rows, cols) = (40, 512);
        for isa in Isa::available() {
            let cpu =
                Cpu::new(CpuOptions { threads: Some(2), isa: Some(isa), ..Default::default() }).unwrap();
            for ty in quant::INTERLEAVED {
                let p = packed(ty, rows, cols, ty.0 as u64);
                let wide = p.dequantize().unwrap();
                for tokens in [1, 5, 70] {
                    let x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    let mut want = vec![0.0; tokens * rows];
                    cpu.linear(&x, &CpuWeight::F32(wide.clone()), None, &mut want).unwrap();
                    let bound = rounding_bound(&x, &wide.data, cols);
                    // Rows as stored, and (where this ISA has the kernels) in groups of eight.
                    let mut layouts = vec![CpuWeight::Packed(p.clone())];
                    if quant::interleaves(isa) && Interleaved::fits(&p) {
                        let w = Interleaved::new(&p);
                        assert!((0..rows).all(|r| w.row(r) == p.row(r)), "{ty}: interleaving loses bytes");
                        layouts.push(CpuWeight::Interleaved(w));
                    }
                    for weight in &layouts {
                        let mut got = vec![0.0; tokens * rows];
                        cpu.linear(&x, weight, None, &mut got).unwrap();
                        let what = if matches!(weight, CpuWeight::Packed(_)) { "rows" } else { "groups" };
                        for (i, ((g, w), b)) in got.iter().zip(&want).zip(&bound).enumerate() {
                            let slop = 1e-4 * (1.0 + w.abs());
                            assert!(
                                (g - w).abs() <= b + slop,
                                "{isa:?} {ty} {what} tokens {tokens} out {i}: {g} vs {w} (bound {b})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fused_norm_projections_and_swiglu_equal_the_unfused_ops() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let cpu = Cpu::new(CpuOptions { threads: Some(2), ..Default::default() }).unwrap();
        let (hidden, inter, tokens) = (256, 96, 6);
        let x: Vec<f32> = (0..tokens * hidden).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let norm_w: Vec<f32> = (0..hidden).map(|_| rng.random_range(0.5f32..1.5)).collect();
        let norm = super::t(&[hidden], &norm_w);
        let (a, b) = (
            CpuWeight::Packed(packed(GgmlType::Q4_1, inter, hidden, 1)),
            CpuWeight::Packed(packed(GgmlType::Q8_0, inter, hidden, 2)),
        );
        let bias = super::t(&[inter], &vec![0.25; inter]);

        let mut h = vec![0.0; x.len()];
        cpu.rms_norm(&x, &norm, 1e-5, hidden, &mut h).unwrap();
        let (mut ua, mut ub) = (vec![0.0; tokens * inter], vec![0.0; tokens * inter]);
        cpu.linear(&h, &a, Some(&bias), &mut ua).unwrap();
        cpu.linear(&h, &b, None, &mut ub).unwrap();

        let (mut fa, mut fb) = (vec![0.0; tokens * inter], vec![0.0; tokens * inter]);
        cpu.norm_linears(&x, &norm, 1e-5, hidden, &[(&a, Some(&bias)), (&b, None)], &mut [&mut fa, &mut fb])
            .unwrap();
        // The fused pass quantizes the normalized values as it computes
        // them: the same numbers up to the last bit of the norm.
        for (f, u) in fa.iter().chain(&fb).zip(ua.iter().chain(&ub)) {
            assert!((f - u).abs() <= 1e-3 * (1.0 + u.abs()), "{f} vs {u}");
        }

        // With biases (`mlp_bias`), each added to its projection before the gate.
        let up_bias = super::t(&[inter], &(0..inter).map(|i| i as f32 * 0.01 - 0.3).collect::<Vec<_>>());
        let mut swi = vec![0.0; tokens * inter];
        cpu.swiglu(&h, (&a, Some(&bias)), (&b, Some(&up_bias)), &mut swi).unwrap();
        cpu.linear(&h, &b, Some(&up_bias), &mut ub).unwrap();
        for ((s, g), u) in swi.iter().zip(&ua).zip(&ub) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!((s - want).abs() <= 1e-6 * (1.0 + want.abs()), "{s} vs {want}");
        }
    }
}

mod fp8 {
    //! Linear layers on FP8 weights against the exact product of the values
    //! they hold, and through the fused paths.

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::super::quant::tests::gamma;
    use super::super::quant::Isa;
    use super::super::{CpuOptions, CpuWeight};
    use super::Cpu;
    use crate::backend::Backend;
    use crate::formats::fp8::{Fp8Layout, Fp8Tensor, MODEL_LAYOUT};
    use crate::formats::GgmlType;
    use crate::formats::HostTensor;

    fn fp8(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Fp8Tensor {
        fp8_in(rows, cols, rng, MODEL_LAYOUT)
    }

    fn fp8_in(rows: usize, cols: usize, rng: &mut ChaCha8Rng, layout: Fp8Layout) -> Fp8Tensor {
        let data = (0..rows * cols).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        Fp8Tensor::quantize(&HostTensor::new(vec![rows, cols], data).unwrap(), layout).unwrap()
    }

    /// One token: `scale * Σ decode(w) x` (a sum of `cols` terms, then the
    /// scale; per group: a scaled sum per group, then their sum); several:
    /// `Σ (decode(w) * scale) x`. Against the exact sum of the dequantized
    /// values, all are within γ_{cols+4} of the terms' magnitude (the sums'
    /// roundings, the scale's and the SIMD tail's).
    #[test]
    fn fp8_linear_equals_the_exact_product_of_its_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // 42 rows: decode takes them four at a time, then a remainder; 577
        // columns: the last group is short.
        let (rows, cols) = (42, 577);
        for layout in [Fp8Layout::PerRow, MODEL_LAYOUT] {
            let w = fp8_in(rows, cols, &mut rng, layout);
            let wide = w.dequantize().unwrap();
            for isa in Isa::available() {
                let cpu =
                    Cpu::new(CpuOptions { threads: Some(2), isa: Some(isa), ..Default::default() }).unwrap();
                for tokens in [1, 5, 70] {
                    let x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    let mut got = vec![0.0; tokens * rows];
                    cpu.linear(&x, &CpuWeight::Fp8(w.clone()), None, &mut got).unwrap();
                    for (t, xt) in x.chunks(cols).enumerate() {
                        for (r, wr) in wide.data.chunks(cols).enumerate() {
                            let exact: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let m: f64 = wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                            let g = got[t * rows + r] as f64;
                            let bound = gamma(cols + 4, m);
                            assert!(
                                (g - exact).abs() <= bound,
                                "{layout:?} {isa:?} tokens {tokens} [{t}, {r}]: {g} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// FP8 weights next to integer ones in one fused pass (the input is
    /// prepared both as f32 rows and as 8-bit blocks) give what the unfused
    /// ops give, and the gated MLP multiplies FP8 gate and up weights.
    #[test]
    fn fp8_weights_take_the_fused_paths() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let cpu = Cpu::new(CpuOptions { threads: Some(2), ..Default::default() }).unwrap();
        let (hidden, inter, tokens) = (256, 96, 6);
        let x: Vec<f32> = (0..tokens * hidden).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let norm =
            super::t(&[hidden], &(0..hidden).map(|_| rng.random_range(0.5f32..1.5)).collect::<Vec<_>>());
        let (a, up) =
            (CpuWeight::Fp8(fp8(inter, hidden, &mut rng)), CpuWeight::Fp8(fp8(inter, hidden, &mut rng)));
        let q8 = {
            let data: Vec<f32> = (0..inter * hidden).map(|_| rng.random_range(-0.5f32..0.5)).collect();
            let bytes = crate::formats::quantize::quantize(GgmlType::Q8_0, &data).unwrap();
            let p = crate::formats::PackedTensor::new(
                vec![inter, hidden],
                GgmlType::Q8_0,
                crate::formats::Bytes::Owned(bytes),
            );
            CpuWeight::Packed(p.unwrap())
        };
        let bias = super::t(&[inter], &vec![0.25; inter]);

        let mut h = vec![0.0; x.len()];
        cpu.rms_norm(&x, &norm, 1e-5, hidden, &mut h).unwrap();
        let (mut ua, mut ub) = (vec![0.0; tokens * inter], vec![0.0; tokens * inter]);
        cpu.linear(&h, &a, Some(&bias), &mut ua).unwrap();
        cpu.linear(&h, &q8, None, &mut ub).unwrap();
        let (mut fa, mut fb) = (vec![0.0; tokens * inter], vec![0.0; tokens * inter]);
        cpu.norm_linears(&x, &norm, 1e-5, hidden, &[(&a, Some(&bias)), (&q8, None)], &mut [&mut fa, &mut fb])
            .unwrap();
        // The same normalized rows feed both: FP8 outputs are bit for bit
        // the unfused ones; the Q8_0 ones differ by the norm's last bit.
        assert_eq!(fa, ua);
        for (f, u) in fb.iter().zip(&ub) {
            assert!((f - u).abs() <= 1e-3 * (1.0 + u.abs()), "{f} vs {u}");
        }

        let mut swi = vec![0.0; tokens * inter];
        cpu.swiglu(&h, (&a, None), (&up, None), &mut swi).unwrap();
        cpu.linear(&h, &a, None, &mut ua).unwrap();
        cpu.linear(&h, &up, None, &mut ub).unwrap();
        cpu.silu_mul(&mut ua, &ub).unwrap();
        assert_eq!(swi, ua, "the fused gated MLP is the unfused one bit for bit");
        // Biases are added to each product as `linear` adds them.
        let up_bias = super::t(&[inter], &(0..inter).map(|i| i as f32 * 0.01 - 0.3).collect::<Vec<_>>());
        cpu.swiglu(&h, (&a, Some(&bias)), (&up, Some(&up_bias)), &mut swi).unwrap();
        cpu.linear(&h, &a, Some(&bias), &mut ua).unwrap();
        cpu.linear(&h, &up, Some(&up_bias), &mut ub).unwrap();
        cpu.silu_mul(&mut ua, &ub).unwrap();
        assert_eq!(swi, ua);
    }
}
