//! The CPU ops on cases small enough to check by hand.

use super::Cpu;
use crate::backend::{AttentionShape, Backend, SeqSpan};
use crate::weights::HostTensor;

fn t(shape: &[usize], data: &[f32]) -> HostTensor {
    HostTensor::new(shape.to_vec(), data.to_vec()).unwrap()
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
    let mut kv = cpu.new_kv(4, 1, 1, 2).unwrap();
    let shape = AttentionShape { num_heads: 2, num_kv_heads: 1, head_dim: 2, sliding_window: window };
    let k = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let v = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut out = vec![0.0; 12];
    let span = SeqSpan { pages: &[2, 0, 3], start_pos: 0, row: 0, len: 3 };
    cpu.attention(&mut kv, 0, &[span], shape, &q.to_vec(), &k, &v, &mut out).unwrap();
    out
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
    let mut kv = cpu.new_kv(2, 2, 1, 1).unwrap();
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
