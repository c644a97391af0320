//! Block dequantizers for the ggml tensor types ferrolm reads, written from
//! ggml's `dequantize_row_*` (ggml-quants.c) with the same f32 arithmetic,
//! so results equal ggml's (and gguf-py's `gguf.quants.dequantize`) bit for bit.
//!
//! Each `dequantize_*` function is standalone: `src` holds whole blocks of
//! the type, `dst` receives `BLOCK` values per block (it panics if the
//! lengths disagree, like `copy_from_slice`). [`dequantize`] checks the
//! lengths, dispatches on the type and splits large tensors over threads.
//!
//! Layouts (all little-endian, `f16` scales):
//!
//! | type | values/block | bytes | layout |
//! |------|-----|-----|--------|
//! | Q4_0 | 32  | 18  | `d: f16, qs: [u8; 16]`; `x = d * (q - 8)` |
//! | Q4_1 | 32  | 20  | `d: f16, m: f16, qs: [u8; 16]`; `x = d * q + m` |
//! | Q5_0 | 32  | 22  | `d: f16, qh: u32, qs: [u8; 16]`; `x = d * (q - 16)`, bit `j` of `qh` the fifth bit of value `j` |
//! | Q5_1 | 32  | 24  | `d: f16, m: f16, qh: u32, qs: [u8; 16]`; `x = d * q + m` |
//! | Q8_0 | 32  | 34  | `d: f16, qs: [i8; 32]`; `x = d * q` |
//! | Q4_K | 256 | 144 | `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: 8 sub-blocks of 32 with 6-bit scale and min |
//! | Q5_K | 256 | 176 | `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`: Q4_K plus a fifth bit, bit `j` of `qh[l]` for value `l` of sub-block `j` |
//! | Q6_K | 256 | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`: 16 sub-blocks of 16, 6-bit values |
//!
//! In the 4-bit types, byte `j` of a 32-value group holds value `j` in its
//! low nibble and value `j + 16` (Q4_0/Q4_1) or `j + 32` (Q4_K, next group) in its high nibble.

use half::{bf16, f16};
use rayon::prelude::*;

use super::GgmlType;
use crate::error::{Error, Result};

pub const QK4_0: usize = 32;
pub const QK4_1: usize = 32;
pub const QK5_0: usize = 32;
pub const QK5_1: usize = 32;
pub const QK8_0: usize = 32;
/// Values per K-quant super-block.
pub const QK_K: usize = 256;

pub const BLOCK_Q4_0_BYTES: usize = 2 + QK4_0 / 2;
pub const BLOCK_Q4_1_BYTES: usize = 2 + 2 + QK4_1 / 2;
pub const BLOCK_Q5_0_BYTES: usize = 2 + 4 + QK5_0 / 2;
pub const BLOCK_Q5_1_BYTES: usize = 2 + 2 + 4 + QK5_1 / 2;
pub const BLOCK_Q8_0_BYTES: usize = 2 + QK8_0;
pub const BLOCK_Q4_K_BYTES: usize = 2 + 2 + 12 + QK_K / 2;
pub const BLOCK_Q5_K_BYTES: usize = 2 + 2 + 12 + QK_K / 8 + QK_K / 2;
pub const BLOCK_Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// Blocks per parallel task: large enough to amortise scheduling.
const BLOCKS_PER_TASK: usize = 1024;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn check(src: usize, dst: usize, block_bytes: usize, block: usize) {
    assert!(
        src.is_multiple_of(block_bytes) && src / block_bytes * block == dst,
        "{src} bytes of {block_bytes}-byte blocks do not make {dst} values"
    );
}

/// `F32`: little-endian floats.
pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), 4, 1);
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// `F16`: IEEE half floats.
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), 2, 1);
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// `BF16`: the upper half of an f32.
pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), 2, 1);
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// `Q4_0` (ggml `dequantize_row_q4_0`).
pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q4_0_BYTES, QK4_0);
    for (x, y) in src.chunks_exact(BLOCK_Q4_0_BYTES).zip(dst.chunks_exact_mut(QK4_0)) {
        let d = f16_at(x, 0);
        let qs = &x[2..];
        for j in 0..QK4_0 / 2 {
            let x0 = (qs[j] & 0x0F) as i32 - 8;
            let x1 = (qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + QK4_0 / 2] = x1 as f32 * d;
        }
    }
}

/// `Q4_1` (ggml `dequantize_row_q4_1`).
pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q4_1_BYTES, QK4_1);
    for (x, y) in src.chunks_exact(BLOCK_Q4_1_BYTES).zip(dst.chunks_exact_mut(QK4_1)) {
        let d = f16_at(x, 0);
        let m = f16_at(x, 2);
        let qs = &x[4..];
        for j in 0..QK4_1 / 2 {
            let x0 = (qs[j] & 0x0F) as f32;
            let x1 = (qs[j] >> 4) as f32;
            y[j] = x0 * d + m;
            y[j + QK4_1 / 2] = x1 * d + m;
        }
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block: nibbles of `qs` (value `j` low,
/// `j + 16` high) with bit `j` of `qh` on top.
#[inline]
pub fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4) as u8;
        q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
    }
    q
}

/// `Q5_0` (ggml `dequantize_row_q5_0`).
pub fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q5_0_BYTES, QK5_0);
    for (x, y) in src.chunks_exact(BLOCK_Q5_0_BYTES).zip(dst.chunks_exact_mut(QK5_0)) {
        let d = f16_at(x, 0);
        for (y, q) in y.iter_mut().zip(q5_values(&x[2..6], &x[6..])) {
            *y = (q as i32 - 16) as f32 * d;
        }
    }
}

/// `Q5_1` (ggml `dequantize_row_q5_1`).
pub fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q5_1_BYTES, QK5_1);
    for (x, y) in src.chunks_exact(BLOCK_Q5_1_BYTES).zip(dst.chunks_exact_mut(QK5_1)) {
        let (d, m) = (f16_at(x, 0), f16_at(x, 2));
        for (y, q) in y.iter_mut().zip(q5_values(&x[4..8], &x[8..])) {
            *y = q as f32 * d + m;
        }
    }
}

/// `Q8_0` (ggml `dequantize_row_q8_0`).
pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q8_0_BYTES, QK8_0);
    for (x, y) in src.chunks_exact(BLOCK_Q8_0_BYTES).zip(dst.chunks_exact_mut(QK8_0)) {
        let d = f16_at(x, 0);
        for (v, &q) in y.iter_mut().zip(&x[2..]) {
            *v = q as i8 as f32 * d;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block
/// (ggml `get_scale_min_k4`): sub-blocks 0..4 keep theirs in the low 6 bits
/// of bytes `j` and `j + 4`; sub-blocks 4..8 split theirs between a nibble
/// of byte `j + 4` and the top 2 bits of bytes `j - 4` and `j`.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `Q4_K` (ggml `dequantize_row_q4_K`).
pub fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q4_K_BYTES, QK_K);
    for (x, y) in src.chunks_exact(BLOCK_Q4_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(x, 0);
        let min = f16_at(x, 2);
        let scales = &x[4..16];
        let qs = &x[16..];
        // Four groups of 64 values: 32 bytes, low nibbles then high nibbles.
        for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc, m) = scale_min_k4(2 * g, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * g + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// `Q5_K` (ggml `dequantize_row_q5_K`).
pub fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q5_K_BYTES, QK_K);
    for (x, y) in src.chunks_exact(BLOCK_Q5_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(x, 0);
        let min = f16_at(x, 2);
        let scales = &x[4..16];
        let (qh, qs) = x[16..].split_at(QK_K / 8);
        // As Q4_K, with bits 2g and 2g + 1 of `qh[l]` over the two nibbles.
        for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc, m) = scale_min_k4(2 * g, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * g + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                let lo = (q[l] & 0x0F) | (((qh[l] >> (2 * g)) & 1) << 4);
                let hi = (q[l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4);
                y[l] = d1 * lo as f32 - m1;
                y[l + 32] = d2 * hi as f32 - m2;
            }
        }
    }
}

/// `Q6_K` (ggml `dequantize_row_q6_K`).
pub fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    check(src.len(), dst.len(), BLOCK_Q6_K_BYTES, QK_K);
    for (x, y) in src.chunks_exact(BLOCK_Q6_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let (ql, rest) = x.split_at(QK_K / 2);
        let (qh, rest) = rest.split_at(QK_K / 4);
        let (sc, d) = rest.split_at(QK_K / 16);
        let d = f16_at(d, 0);
        // Two halves of 128 values: 64 bytes of ql, 32 of qh, 8 scales each.
        for n in 0..2 {
            let (ql, qh, sc, y) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..], &mut y[128 * n..]);
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let s = |k: usize| d * sc[is + k] as i8 as f32;
                y[l] = s(0) * q1 as f32;
                y[l + 32] = s(2) * q2 as f32;
                y[l + 64] = s(4) * q3 as f32;
                y[l + 96] = s(6) * q4 as f32;
            }
        }
    }
}

/// A block decoder: whole blocks in, values out.
pub type BlockDecoder = fn(&[u8], &mut [f32]);

/// The block decoder of a supported type, with its block layout.
fn decoder(ty: GgmlType) -> Option<(BlockDecoder, usize, usize)> {
    Some(match ty {
        GgmlType::F32 => (dequantize_f32 as BlockDecoder, 1, 4),
        GgmlType::F16 => (dequantize_f16, 1, 2),
        GgmlType::BF16 => (dequantize_bf16, 1, 2),
        GgmlType::Q4_0 => (dequantize_q4_0, QK4_0, BLOCK_Q4_0_BYTES),
        GgmlType::Q4_1 => (dequantize_q4_1, QK4_1, BLOCK_Q4_1_BYTES),
        GgmlType::Q5_0 => (dequantize_q5_0, QK5_0, BLOCK_Q5_0_BYTES),
        GgmlType::Q5_1 => (dequantize_q5_1, QK5_1, BLOCK_Q5_1_BYTES),
        GgmlType::Q8_0 => (dequantize_q8_0, QK8_0, BLOCK_Q8_0_BYTES),
        GgmlType::Q4_K => (dequantize_q4_k, QK_K, BLOCK_Q4_K_BYTES),
        GgmlType::Q5_K => (dequantize_q5_k, QK_K, BLOCK_Q5_K_BYTES),
        GgmlType::Q6_K => (dequantize_q6_k, QK_K, BLOCK_Q6_K_BYTES),
        _ => return None,
    })
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`, in parallel for
/// large tensors. Errors if the type is not supported or the lengths do
/// not match.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let (f, block, bytes) = decoder(ty).ok_or_else(|| {
        Error::Unsupported(format!("ggml type {ty} ({}) cannot be dequantized by ferrolm", ty.0))
    })?;
    if !src.len().is_multiple_of(bytes) || src.len() / bytes * block != dst.len() {
        return Err(Error::InvalidWeights(format!(
            "{} bytes of {ty} data do not make {} values",
            src.len(),
            dst.len()
        )));
    }
    let (task_bytes, task_values) = (bytes * BLOCKS_PER_TASK, block * BLOCKS_PER_TASK);
    if dst.len() <= task_values {
        f(src, dst);
    } else {
        src.par_chunks(task_bytes).zip(dst.par_chunks_mut(task_values)).for_each(|(s, d)| f(s, d));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_0_block_by_hand() {
        let mut b = vec![0u8; BLOCK_Q4_0_BYTES];
        b[..2].copy_from_slice(&f16_bytes(0.5));
        b[2] = 0xF0; // value 0: 0 - 8, value 16: 15 - 8
        let mut y = [0f32; 32];
        dequantize_q4_0(&b, &mut y);
        assert_eq!((y[0], y[16], y[1], y[17]), (-4.0, 3.5, -4.0, -4.0));
    }

    #[test]
    fn q4_1_and_q8_0_by_hand() {
        let mut b = vec![0u8; BLOCK_Q4_1_BYTES];
        b[..2].copy_from_slice(&f16_bytes(2.0));
        b[2..4].copy_from_slice(&f16_bytes(-1.0));
        b[4] = 0x31;
        let mut y = [0f32; 32];
        dequantize_q4_1(&b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (1.0, 5.0, -1.0));

        let mut b = vec![0u8; BLOCK_Q8_0_BYTES];
        b[..2].copy_from_slice(&f16_bytes(0.25));
        b[2] = (-128i8) as u8;
        b[33] = 127;
        dequantize_q8_0(&b, &mut y);
        assert_eq!((y[0], y[31], y[1]), (-32.0, 31.75, 0.0));
    }

    #[test]
    fn k_quant_scales_unpack() {
        // Sub-block 5: low nibble of byte 9 and the top bits of byte 1 (scale),
        // high nibble of byte 9 and the top bits of byte 5 (min).
        let mut s = [0u8; 12];
        s[9] = 0xA7;
        s[1] = 0b1100_0000;
        s[5] = 0b0100_0000;
        assert_eq!(scale_min_k4(5, &s), (0x37, 0x1A));
        s[2] = 0x3F | 0xC0;
        s[6] = 0x21;
        assert_eq!(scale_min_k4(2, &s), (0x3F, 0x21));
    }

    #[test]
    fn dispatcher_checks_lengths_and_types() {
        let mut y = vec![0f32; 64];
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut y).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 36], &mut y).is_ok());
        let err = dequantize(GgmlType(11), &[0u8; 110], &mut vec![0f32; 256]).unwrap_err();
        assert!(err.to_string().contains("Q3_K"), "{err}");
    }
}
