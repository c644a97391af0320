//! Block quantizers (f32 -> Q8_0, Q4_0, Q4_1, Q4_K): ports of ggml's
//! reference quantizers in ggml-quants.c (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`, `quantize_row_q4_1_ref`, and
//! `quantize_row_q4_K_ref` with its helpers `make_qkx2_quants` and
//! `nearest_int`), for quantizing an f32/f16/bf16 checkpoint in place as it
//! is loaded (`quantize="q8_0"` / `"q4_k"`).
//!
//! The ports keep ggml's f32 arithmetic operation for operation (the same
//! order of additions, `roundf` where ggml rounds half away from zero, the
//! `12582912` bit trick of `nearest_int`, the casts to `int8_t`/`uint8_t`,
//! round-to-nearest-even f16 scales), so each block is byte-identical to
//! the one `llama-quantize` (the `_ref` path, without an importance matrix)
//! or gguf-py's `gguf.quants.quantize` writes. That matters because a model
//! quantized here then computes exactly what the same model converted by
//! llama.cpp computes: the GGUF and the in-situ paths can be compared token
//! for token, and the matmul kernels can be tested on blocks that are the
//! real thing. The tests check this against blocks made by gguf-py (Q8_0,
//! Q4_0, Q4_1) and by ggml itself (all four), in `tests/fixtures/quantize`.
//! (The ggml that made them, llama-cpp-python's `libggml-base`, contains no
//! FMA instructions; a `-march=native` build lets the C compiler fuse
//! multiply-adds, which could change a rare Q4_K block by a rounding. Rust
//! never fuses.)
//!
//! Each `quantize_*` function is standalone: `src` holds whole blocks of
//! values, `dst` receives the blocks' bytes (it panics if the lengths
//! disagree, like `copy_from_slice`). [`quantize`] / [`quantize_into`]
//! check the lengths, dispatch on the type and split large tensors over
//! threads by whole blocks (blocks are independent, so the result is the
//! same as the serial one). Block layouts are in [`super::quants`].

use half::f16;
use rayon::prelude::*;

use super::dequantize::{
    scale_min_k4, BLOCK_Q4_0_BYTES, BLOCK_Q4_1_BYTES, BLOCK_Q4_K_BYTES, BLOCK_Q8_0_BYTES, QK4_0, QK4_1,
    QK8_0, QK_K,
};
use super::GgmlType;
use crate::error::{Error, Result};

/// Values per parallel task: 1024 Q8_0/Q4_0/Q4_1 blocks or 128 Q4_K
/// super-blocks, enough to amortise scheduling.
const VALUES_PER_TASK: usize = 32 * 1024;

/// The types [`quantize`] can produce.
pub const QUANTIZABLE: [GgmlType; 4] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K];

/// ggml's `GGML_FP32_TO_FP16`: round to nearest, ties to even (what F16C's
/// `vcvtps2ph` and ggml's software fallback both do).
#[inline]
fn put_f16(dst: &mut [u8], v: f32) {
    dst[..2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// ggml's `GGML_FP16_TO_FP32` applied to what [`put_f16`] stored.
#[inline]
fn f16_round_trip(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// ggml's `nearest_int`: adding 1.5 * 2^23 leaves `round-half-even(fval)`
/// in the low mantissa bits (valid for |fval| <= 2^22 - 1, which ggml only
/// asserts in debug builds; outside that it returns the same garbage as
/// ggml, never panics).
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// C's float -> `int8_t` conversion as compiled for x86-64 (`cvttss2si` to
/// 32 bits, then the low byte): truncation toward zero. Rust's `as i32`
/// saturates where C is undefined (NaN, |v| >= 2^31), which only differs
/// for inputs ggml itself makes no promise about.
#[inline]
fn c_f32_to_i8(v: f32) -> i8 {
    v as i32 as i8
}

fn check(src: usize, dst: usize, block: usize, block_bytes: usize) {
    assert!(
        src.is_multiple_of(block) && src / block * block_bytes == dst,
        "{src} values in blocks of {block} do not make {dst} bytes of {block_bytes}-byte blocks"
    );
}

/// `Q8_0` (ggml `quantize_row_q8_0_ref`): `d = amax / 127`, `q = roundf(x / d)`.
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    check(src.len(), dst.len(), QK8_0, BLOCK_Q8_0_BYTES);
    for (x, y) in src.chunks_exact(QK8_0).zip(dst.chunks_exact_mut(BLOCK_Q8_0_BYTES)) {
        // C's MAX(amax, fabsf(v)), which (unlike f32::max) lets a NaN through.
        let amax = x.iter().fold(0f32, |m, v| if m > v.abs() { m } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(y, d);
        for (q, &v) in y[2..].iter_mut().zip(x) {
            // roundf: half away from zero, as f32::round.
            *q = c_f32_to_i8((v * id).round()) as u8;
        }
    }
}

/// `Q4_0` (ggml `quantize_row_q4_0_ref`): `d = max / -8` where `max` is the
/// value of largest magnitude (first one on a tie), `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    check(src.len(), dst.len(), QK4_0, BLOCK_Q4_0_BYTES);
    for (x, y) in src.chunks_exact(QK4_0).zip(dst.chunks_exact_mut(BLOCK_Q4_0_BYTES)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(y, d);
        let q = |v: f32| c_f32_to_i8(v * id + 8.5).min(15) as u8;
        for j in 0..QK4_0 / 2 {
            y[2 + j] = q(x[j]) | (q(x[j + QK4_0 / 2]) << 4);
        }
    }
}

/// `Q4_1` (ggml `quantize_row_q4_1_ref`): `d = (max - min) / 15`, `m = min`,
/// `q = min(15, trunc((x - min) / d + 0.5))`.
pub fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    check(src.len(), dst.len(), QK4_1, BLOCK_Q4_1_BYTES);
    for (x, y) in src.chunks_exact(QK4_1).zip(dst.chunks_exact_mut(BLOCK_Q4_1_BYTES)) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(y, d);
        put_f16(&mut y[2..], min);
        let q = |v: f32| c_f32_to_i8((v - min) * id + 0.5).min(15) as u8;
        for j in 0..QK4_1 / 2 {
            y[4 + j] = q(x[j]) | (q(x[j + QK4_1 / 2]) << 4);
        }
    }
}

/// ggml's `make_qkx2_quants` with `use_mad = false`: fits `x ~ scale * l - the_min`
/// with `l` in `0..=nmax` by weighted least squares, trying `nstep + 1`
/// inverse scales `(rmin + rdelta * is + nmax) / (max - min)` besides the
/// plain `nmax / (max - min)`. Writes the levels into `l_out` and returns
/// `(scale, the_min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * l_aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `Q4_K` (ggml `quantize_row_q4_K_ref`): per sub-block of 32 a scale and a
/// min fitted by `make_qkx2_quants` (weights `sqrt(mean(x^2)) + |x|`), both
/// stored as 6-bit multiples of the super-block's f16 `d` and `dmin`; then
/// each value's 4-bit level is recomputed against the stored scale and min.
pub fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    check(src.len(), dst.len(), QK_K, BLOCK_Q4_K_BYTES);
    const SUB: usize = 32;
    let mut levels = [0u8; QK_K];
    let mut l_aux = [0u8; SUB];
    let mut weights = [0f32; SUB];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(BLOCK_Q4_K_BYTES)) {
        let mut scales = [0f32; QK_K / SUB];
        let mut mins = [0f32; QK_K / SUB];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..QK_K / SUB {
            let xs = &x[SUB * j..SUB * (j + 1)];
            let mut sum_x2 = 0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / SUB as f32).sqrt();
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let l = &mut levels[SUB * j..SUB * (j + 1)];
            (scales[j], mins[j]) = make_qkx2_quants(15, xs, &weights, l, &mut l_aux, -1.0, 0.1, 20);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }

        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let packed = &mut y[4..16];
        packed.fill(0);
        for j in 0..QK_K / SUB {
            // `uint8_t ls = nearest_int(...)`: the int is cut to its low byte first.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                packed[j - 4] |= (ls >> 4) << 6;
                packed[j] |= (lm >> 4) << 6;
            }
        }
        put_f16(y, max_scale / 63.0);
        put_f16(&mut y[2..], max_min / 63.0);
        let (d_all, dmin_all) = (f16_round_trip(max_scale / 63.0), f16_round_trip(max_min / 63.0));

        for j in 0..QK_K / SUB {
            let (sc, m) = scale_min_k4(j, &y[4..16]);
            let d = d_all * sc as f32;
            if d == 0.0 {
                // ggml keeps the levels make_qkx2_quants chose.
                continue;
            }
            let dm = dmin_all * m as f32;
            for i in SUB * j..SUB * (j + 1) {
                levels[i] = nearest_int((x[i] + dm) / d).clamp(0, 15) as u8;
            }
        }

        // Four groups of 64: value l in the low nibble of byte l, value l + 32 in its high nibble.
        for (q, l) in y[16..].chunks_exact_mut(32).zip(levels.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = l[i] | (l[i + 32] << 4);
            }
        }
    }
}

/// A block encoder: whole blocks of values in, their bytes out.
pub type BlockEncoder = fn(&[f32], &mut [u8]);

/// The encoder of a quantizable type, with its block layout (values, bytes).
fn encoder(ty: GgmlType) -> Option<(BlockEncoder, usize, usize)> {
    Some(match ty {
        GgmlType::Q8_0 => (quantize_q8_0 as BlockEncoder, QK8_0, BLOCK_Q8_0_BYTES),
        GgmlType::Q4_0 => (quantize_q4_0, QK4_0, BLOCK_Q4_0_BYTES),
        GgmlType::Q4_1 => (quantize_q4_1, QK4_1, BLOCK_Q4_1_BYTES),
        GgmlType::Q4_K => (quantize_q4_k, QK_K, BLOCK_Q4_K_BYTES),
        _ => return None,
    })
}

/// Whether [`quantize`] can produce `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    encoder(ty).is_some()
}

/// Bytes that `values` values of `ty` quantize to, after the same checks
/// as [`quantize`] (a quantizable type, a whole number of blocks).
pub fn quantized_len(ty: GgmlType, values: usize) -> Result<usize> {
    let (_, block, bytes) = layout(ty)?;
    if !values.is_multiple_of(block) {
        return Err(Error::InvalidInput(format!(
            "cannot quantize {values} values to {ty}: the count must be a multiple of {block} \
             (the {ty} block size)"
        )));
    }
    Ok(values / block * bytes)
}

fn layout(ty: GgmlType) -> Result<(BlockEncoder, usize, usize)> {
    encoder(ty).ok_or_else(|| {
        let known: Vec<String> = QUANTIZABLE.iter().map(|t| t.to_string()).collect();
        Error::Unsupported(format!(
            "ferrolm cannot quantize to ggml type {ty} ({}); it quantizes to {}",
            ty.0,
            known.join(", ")
        ))
    })
}

/// Quantizes `src` to `ty` (see [`QUANTIZABLE`]), byte-identical to ggml's
/// reference quantizer. `src.len()` must be a multiple of the type's block
/// size (32, or 256 for Q4_K): [`Error::InvalidInput`] otherwise, and
/// [`Error::Unsupported`] for a type without a quantizer.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let mut dst = vec![0u8; quantized_len(ty, src.len())?];
    quantize_into(ty, src, &mut dst)?;
    Ok(dst)
}

/// [`quantize`] into a caller's buffer of exactly [`quantized_len`] bytes.
pub fn quantize_into(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let (f, block, bytes) = layout(ty)?;
    let need = quantized_len(ty, src.len())?;
    if dst.len() != need {
        return Err(Error::InvalidInput(format!(
            "{} values of {ty} take {need} bytes, not the {} given",
            src.len(),
            dst.len()
        )));
    }
    let blocks_per_task = (VALUES_PER_TASK / block).max(1);
    let (task_values, task_bytes) = (block * blocks_per_task, bytes * blocks_per_task);
    if src.len() <= task_values {
        f(src, dst);
    } else {
        src.par_chunks(task_values).zip(dst.par_chunks_mut(task_bytes)).for_each(|(s, d)| f(s, d));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    use super::super::dequantize::{dequantize_q4_0, dequantize_q4_1, dequantize_q4_k, dequantize_q8_0};
    use super::*;

    /// f32's unit roundoff: one rounding moves a value by at most `|v| * U`.
    const U: f32 = f32::EPSILON / 2.0;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../../tests/fixtures/quantize/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `input.f32` of the fixtures: 32 super-blocks of 256 values, each an
    /// edge case or a kind of data (see `tests/fixtures/quantize/make.py`).
    fn fixture_input() -> Vec<f32> {
        fixture("input.f32").chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// 400 super-blocks of normal data, each at its own scale (1e-6 .. 1e3,
    /// log-uniform), a few with an outlier.
    fn random_input() -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let normal = Normal::new(0f32, 1.0).unwrap();
        let mut x = Vec::with_capacity(400 * QK_K);
        for sb in 0..400 {
            let scale = 10f32.powf(rng.random_range(-6.0..3.0));
            let start = x.len();
            x.extend((0..QK_K).map(|_| normal.sample(&mut rng) * scale));
            if sb % 10 == 0 {
                let at = start + rng.random_range(0..QK_K);
                x[at] *= 100.0;
            }
        }
        x
    }

    fn f16_at(b: &[u8], i: usize) -> f32 {
        f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
    }

    fn ty_name(ty: GgmlType) -> &'static str {
        match ty {
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q4_K => "q4_k",
            _ => unreachable!(),
        }
    }

    /// Byte-for-byte equality with the blocks ggml's `quantize_row_*_ref`
    /// wrote for the fixture input; for Q8_0, Q4_0 and Q4_1 these are also
    /// gguf-py's `gguf.quants.quantize` bytes (make.py refuses to write them
    /// otherwise). gguf-py has no Q4_K quantizer: Q4_K is ggml's alone.
    #[test]
    fn blocks_equal_ggml_and_gguf_py() {
        let x = fixture_input();
        for ty in QUANTIZABLE {
            let want = fixture(&format!("{}.bin", ty_name(ty)));
            let got = quantize(ty, &x).unwrap();
            assert_eq!(got.len(), want.len(), "{ty}");
            let (block, bytes) = ty.block_layout().unwrap();
            for (i, (g, w)) in got.chunks(bytes).zip(want.chunks(bytes)).enumerate() {
                assert_eq!(g, w, "{ty} block {i} (values {}..{})", i * block, (i + 1) * block);
            }
        }
    }

    /// Q8_0 round trip. Per block ggml computes `d = amax / 127`, stores
    /// `d16 = f16(d)` and `q = roundf(x * (1 / d))`, |q| <= 127; the value
    /// read back is `q * d16`. So
    /// `|x - q d16| <= |x - q d| + |q| |d - d16| + |q d16| U`, and
    /// `|x - q d| <= d/2 + |x - (x * (1/d)) d| <= d/2 + 2.0001 U amax`
    /// (two roundings, in `1/d` and in the product). With `|q d16| <=
    /// 1.001 amax` the f32 slack is below `4 U amax`:
    /// `|x - x'| <= d/2 + 127 |d - d16| + 4 U amax`.
    /// The `|d - d16|` term is the whole error where f16 cannot hold `d`
    /// (the tiny fixture blocks, whose `d16` is 0 or subnormal).
    #[test]
    fn q8_0_round_trip_within_half_a_step() {
        for x in [fixture_input(), random_input()] {
            let q = quantize(GgmlType::Q8_0, &x).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_q8_0(&q, &mut y);
            for (b, ((xs, ys), blk)) in x.chunks(32).zip(y.chunks(32)).zip(q.chunks(34)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let d16 = f16_at(blk, 0);
                let bound = d / 2.0 + 127.0 * (d - d16).abs() + 4.0 * U * amax;
                for (&a, &b2) in xs.iter().zip(ys) {
                    assert!((a - b2).abs() <= bound, "block {b}: {a} -> {b2}, bound {bound}");
                }
            }
        }
    }

    /// Q4_0 round trip. ggml takes `max`, the value of largest magnitude,
    /// `d = max / -8` (exact), and `q = min(15, trunc(v + 8.5))` with
    /// `v = x * (1/d)` in [-8, 8] (up to 2 U), read back as `(q - 8) d16`.
    /// `trunc(v + 8.5) - 8` is `v` rounded half up, off by at most
    /// `1/2 + 2^-20` (the sum is rounded below 32); the clamp at 15 moves
    /// values with `v > 7.5` (the side opposite to `max`, which sits at
    /// `q = 0`) to 7, an error of `v - 7 <= 1` step. Hence, with `|q - 8| <= 8`:
    /// `|x - x'| <= |d| max(1/2, v - 7) + 8 |d - d16| + slack`, where the
    /// slack, `|d| 2^-20 + 2.0001 U amax + 8 |d16| U < 8 U amax` (amax = 8|d|),
    /// covers every f32 rounding.
    #[test]
    fn q4_0_round_trip_within_half_a_step() {
        for x in [fixture_input(), random_input()] {
            let q = quantize(GgmlType::Q4_0, &x).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_q4_0(&q, &mut y);
            for (b, ((xs, ys), blk)) in x.chunks(32).zip(y.chunks(32)).zip(q.chunks(18)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let max = *xs.iter().find(|v| v.abs() == amax).unwrap();
                let d = max / -8.0;
                let d16 = f16_at(blk, 0);
                for (&a, &b2) in xs.iter().zip(ys) {
                    let v = if d != 0.0 { a / d } else { 0.0 };
                    let bound = d.abs() * (v - 7.0).max(0.5) + 8.0 * (d - d16).abs() + 8.0 * U * amax;
                    assert!((a - b2).abs() <= bound, "block {b}: {a} -> {b2}, bound {bound}");
                }
            }
        }
    }

    /// Q4_1 round trip. ggml stores `d16 = f16((max - min) / 15)` and
    /// `m16 = f16(min)`, `q = min(15, trunc((x - min) * (1/d) + 0.5))` (the
    /// clamp never bites: the quotient is at most 15 up to 4 U), read back
    /// as `q d16 + m16`. So
    /// `|x - x'| <= d/2 + 15 |d - d16| + |min - m16| + slack`, where the
    /// slack bounds the f32 roundings: `d 2^-20` for the `+ 0.5`,
    /// `3.0001 U R` in `(x - min) * (1/d)` (R = max - min), `1.001 U R` in
    /// `q d16` and `U |x'|` in the final sum; with A = max(|min|, |max|),
    /// `|x'| <= A + R/15`, the sum is below `8 U (R + A)`.
    #[test]
    fn q4_1_round_trip_within_half_a_step() {
        for x in [fixture_input(), random_input()] {
            let q = quantize(GgmlType::Q4_1, &x).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_q4_1(&q, &mut y);
            for (b, ((xs, ys), blk)) in x.chunks(32).zip(y.chunks(32)).zip(q.chunks(20)).enumerate() {
                let min = xs.iter().fold(f32::MAX, |m, &v| m.min(v));
                let max = xs.iter().fold(-f32::MAX, |m, &v| m.max(v));
                let d = (max - min) / 15.0;
                let (d16, m16) = (f16_at(blk, 0), f16_at(blk, 2));
                let (r, a) = (max - min, min.abs().max(max.abs()));
                let bound = d / 2.0 + 15.0 * (d - d16).abs() + (min - m16).abs() + 8.0 * U * (r + a);
                for (&a, &b2) in xs.iter().zip(ys) {
                    assert!((a - b2).abs() <= bound, "block {b}: {a} -> {b2}, bound {bound}");
                }
            }
        }
    }

    /// Q4_K round trip against the block's own parameters. For sub-block j
    /// the dequantizer reads `x' = s q - mm` with `s = d16 * sc_j`,
    /// `mm = dmin16 * m_j`, and (when `s != 0`) ggml chose
    /// `q = clamp(nearest_int((x + mm) / s), 0, 15)`: the nearest level of
    /// the grid `{s q - mm}`. With `v = (x + mm) / s` that is
    /// `|x - x'| <= s max(1/2, -v, v - 15)` (half a step inside the grid, the
    /// distance to its end outside), plus the f32 roundings of `(x + mm) / s`
    /// (2.0001 U |x + mm|) and of `s q - mm` (`15 s U + U |x'|`): below
    /// `4 U (|x| + mm + 15 s)`. Where `s == 0` ggml keeps the fit's levels
    /// and every value reads back as `-mm`.
    ///
    /// How well the grid covers the data depends on the data: the 6-bit
    /// `sc`, `m` are relative to the super-block's largest scale and min,
    /// so one outlier coarsens every sub-block of its super-block (fixture
    /// blocks 3, 6, 8, 9, 20 are off by up to 20 of their own steps). Also
    /// checked: the largest `sc` and `m` of a super-block are 63 (each is
    /// `nearest_int(63 * s_j / max_scale)`) unless the block's scale is 0.
    #[test]
    fn q4_k_levels_are_nearest_on_the_stored_grid() {
        for x in [fixture_input(), random_input()] {
            let q = quantize(GgmlType::Q4_K, &x).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_q4_k(&q, &mut y);
            for (b, ((xs, ys), blk)) in x.chunks(QK_K).zip(y.chunks(QK_K)).zip(q.chunks(144)).enumerate() {
                let (d16, dmin16) = (f16_at(blk, 0), f16_at(blk, 2));
                let codes: Vec<(u8, u8)> = (0..8).map(|j| scale_min_k4(j, &blk[4..16])).collect();
                let (max_sc, max_m) = codes.iter().fold((0, 0), |(a, b), &(s, m)| (a.max(s), b.max(m)));
                assert!(
                    max_sc == 63 || (max_sc == 0 && d16 == 0.0),
                    "block {b}: largest scale code {max_sc}"
                );
                assert!(max_m == 63 || (max_m == 0 && dmin16 == 0.0), "block {b}: largest min code {max_m}");
                for (j, &(sc, m)) in codes.iter().enumerate() {
                    let (s, mm) = (d16 * sc as f32, dmin16 * m as f32);
                    for i in 32 * j..32 * (j + 1) {
                        let (a, b2) = (xs[i], ys[i]);
                        if s == 0.0 {
                            assert_eq!(b2, -mm, "block {b} value {i}");
                            continue;
                        }
                        let v = (a + mm) / s;
                        let bound = s * (-v).max(v - 15.0).max(0.5) + 4.0 * U * (a.abs() + mm + 15.0 * s);
                        assert!((a - b2).abs() <= bound, "block {b} value {i}: {a} -> {b2}, bound {bound}");
                    }
                }
            }
        }
    }

    /// On data without outliers (normal values, one scale and offset per
    /// super-block) the grid covers each sub-block well. Measured in the
    /// sub-block's own step `(max - min(min, 0)) / 15` (ggml clamps the min
    /// at 0): the RMS error, averaged over sub-blocks, is below `1/sqrt(12)`,
    /// the RMS of plain rounding to a grid of that step over the full range
    /// (it is what the weighted least-squares fit minimises, and it does
    /// better by shrinking the range); the largest error stays below 1.5
    /// steps (the fit may clip an extreme value by more than half a step).
    /// An empirical guard, not a theorem: over 2000 such super-blocks the
    /// mean RMS is 0.256 steps and the largest error 1.20.
    #[test]
    fn q4_k_round_trip_on_ordinary_data() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let normal = Normal::new(0f32, 1.0).unwrap();
        let mut x = Vec::new();
        for _ in 0..300 {
            let (scale, shift) = (10f32.powf(rng.random_range(-4.0..2.0)), rng.random_range(-1.0..1.0));
            x.extend((0..QK_K).map(|_| (normal.sample(&mut rng) + shift) * scale));
        }
        let q = quantize(GgmlType::Q4_K, &x).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize_q4_k(&q, &mut y);
        let (mut worst, mut rms_sum) = (0f64, 0f64);
        for (xs, ys) in x.chunks(32).zip(y.chunks(32)) {
            let lo = xs.iter().fold(0f32, |m, &v| m.min(v));
            let hi = xs.iter().fold(f32::MIN, |m, &v| m.max(v));
            let step = ((hi - lo) / 15.0) as f64;
            let mut sq = 0f64;
            for (&a, &b) in xs.iter().zip(ys) {
                let e = (a - b).abs() as f64 / step;
                worst = worst.max(e);
                sq += e * e;
            }
            rms_sum += (sq / 32.0).sqrt();
        }
        let rms = rms_sum / (x.len() / 32) as f64;
        assert!(rms <= 1.0 / 12f64.sqrt(), "mean RMS error {rms} sub-block steps");
        assert!(worst <= 1.5, "worst error {worst} sub-block steps");
    }

    /// Large inputs go through rayon in whole blocks; the bytes equal the
    /// serial encoder's.
    #[test]
    fn parallel_split_equals_serial() {
        let x = random_input(); // 102400 values: several tasks of every type
        for ty in QUANTIZABLE {
            let (f, block, bytes) = encoder(ty).unwrap();
            assert!(x.len() > VALUES_PER_TASK + block);
            let mut serial = vec![0u8; x.len() / block * bytes];
            f(&x, &mut serial);
            assert_eq!(quantize(ty, &x).unwrap(), serial, "{ty}");
        }
    }

    #[test]
    fn bad_lengths_and_types_are_errors() {
        for (ty, n, multiple) in
            [(GgmlType::Q8_0, 33, 32), (GgmlType::Q4_0, 16, 32), (GgmlType::Q4_K, 288, 256)]
        {
            let err = quantize(ty, &vec![1f32; n]).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::InvalidInput(_)), "{msg}");
            assert!(msg.contains(&ty.to_string()) && msg.contains(&multiple.to_string()), "{msg}");
        }
        let err = quantize_into(GgmlType::Q8_0, &[0f32; 64], &mut [0u8; 34]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        for ty in [GgmlType::Q6_K, GgmlType::F16, GgmlType(13), GgmlType(999)] {
            let err = quantize(ty, &[0f32; 256]).unwrap_err();
            assert!(matches!(err, Error::Unsupported(_)), "{err}");
            assert!(!can_quantize(ty));
        }
        assert!(quantize(GgmlType::Q6_K, &[0f32; 256]).unwrap_err().to_string().contains("Q6_K"));
        assert_eq!(quantize(GgmlType::Q4_K, &[]).unwrap(), Vec::<u8>::new());
        assert_eq!(quantized_len(GgmlType::Q4_K, 512).unwrap(), 288);
    }

    /// `nearest_int` is round-half-to-even for |x| < 2^22.
    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in
            [(2.5, 2), (3.5, 4), (-2.5, -2), (-0.5, 0), (0.49999997, 0), (-7.6, -8), (4194303.0, 4194303)]
        {
            assert_eq!(nearest_int(v), want, "{v}");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..10_000 {
            let v: f32 = rng.random_range(-4.0e6..4.0e6) * if rng.random() { 1.0 } else { 1e-4 };
            assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
        }
    }

    /// ggml's ties: Q8_0's `roundf` goes away from zero, Q4_0's `+ 8.5` and
    /// Q4_1's `+ 0.5` truncations go up.
    #[test]
    fn rounding_ties_by_hand() {
        let mut x = [0f32; 32];
        x[0] = 127.0; // d = 1
        x[1] = 2.5;
        x[2] = -2.5;
        let q = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!((f16_at(&q, 0), q[3] as i8, q[4] as i8), (1.0, 3, -3));

        let mut x = [0f32; 32];
        x[0] = -8.0; // d = 1, q = trunc(x + 8.5)
        x[1] = 0.5;
        x[2] = -0.5; // values 17, 18 are 0: q = 8 in the high nibbles
        x[16] = 7.5; // clamped to 15
        let q = quantize(GgmlType::Q4_0, &x).unwrap();
        assert_eq!((f16_at(&q, 0), q[2], q[3], q[4]), (1.0, 0xF0, 0x89, 0x88));

        let mut x = [0f32; 32];
        x[1] = 15.0; // min 0, d = 1
        x[2] = 0.5;
        let q = quantize(GgmlType::Q4_1, &x).unwrap();
        assert_eq!((f16_at(&q, 0), f16_at(&q, 2), q[5], q[6]), (1.0, 0.0, 0x0F, 0x01));
    }
}
