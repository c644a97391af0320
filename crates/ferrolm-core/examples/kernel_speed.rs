//! Single-thread speed of each quantized kernel (one weight matrix of
//! 1536 x 576 against 1 and 4 activation rows, as stored, in groups of eight rows
//! and, for the types prefill unpacks once, unpacked; FP8 against 1 f32 row), for tuning:
//!
//!     cargo run --release --example kernel_speed

use std::time::Instant;

use ferrolm_core::backend::cpu::quant::interleave::Interleaved;
use ferrolm_core::backend::cpu::quant::{
    dot_fp8, dot_fp8_x4, dot_q8, dot_x8, dot_x8_unpacked, interleaves, quantize_rows, unpack_x8,
    unpacked_len, Isa, Q8Block, INTERLEAVED,
};
use ferrolm_core::formats::GgmlType;
use ferrolm_core::formats::{Bytes, PackedTensor};

fn main() {
    let (rows, cols) = (1536usize, 576usize);
    let x: Vec<f32> = (0..4 * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let mut q = vec![Q8Block::default(); 4 * cols / 32];
    quantize_rows(&x, &mut q);
    let acts: Vec<&[Q8Block]> = q.chunks(cols / 32).collect();
    for isa in Isa::available() {
        // FP8 E4M3 (every finite code; 0x7f/0xff are NaN) against one f32 row.
        let w: Vec<u8> = (0..rows * cols).map(|i| (i * 31 % 251) as u8 & 0xfe).collect();
        let reps = 200;
        let t = Instant::now();
        let mut sum = 0f32;
        for _ in 0..reps {
            for r in w.chunks_exact(cols) {
                sum += dot_fp8(isa, r, &x[..cols]);
            }
        }
        let s = t.elapsed().as_secs_f64();
        let gmacs = (reps * rows * cols) as f64 / s / 1e9;
        println!("{isa:?} FP8 E4M3 rows, 1 input row: {gmacs:.2} GMAC/s, weights {gmacs:.1} GB/s ({sum:.0})");
        let t = Instant::now();
        for _ in 0..reps {
            for r in w.chunks_exact(4 * cols) {
                let four = dot_fp8_x4(isa, std::array::from_fn(|i| &r[i * cols..(i + 1) * cols]), &x[..cols]);
                sum += four.iter().sum::<f32>();
            }
        }
        let gmacs = (reps * rows * cols) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("{isa:?} FP8 E4M3 4 rows at a time, 1 input row: {gmacs:.2} GMAC/s ({sum:.0})");
        for ty in INTERLEAVED {
            let (block, bytes) = ty.block_layout().unwrap();
            let cols = cols / block * block;
            let row_bytes = cols / block * bytes;
            let mut w: Vec<u8> = (0..rows * row_bytes).map(|i| (i * 31 % 251) as u8).collect();
            for b in w.chunks_exact_mut(bytes) {
                let at = if ty == GgmlType::Q6_K { 208 } else { 0 };
                b[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
            // Times `pass` (one pass over the matrix against `n` input rows).
            let report = |layout: &str, n: usize, pass: &mut dyn FnMut()| {
                let reps = 200;
                let t = Instant::now();
                for _ in 0..reps {
                    pass();
                }
                let s = t.elapsed().as_secs_f64();
                let macs = (reps * rows * cols * n) as f64;
                let gbs = (reps * w.len()) as f64 / s / 1e9;
                println!(
                    "{isa:?} {ty} {layout}, {n} input rows: {:.2} GMAC/s, weights {gbs:.1} GB/s",
                    macs / s / 1e9
                );
            };
            for n in [1, 4] {
                let mut out = [0f32; 4];
                report("rows", n, &mut || {
                    for r in w.chunks_exact(row_bytes) {
                        dot_q8(isa, ty, r, &acts[..n], &mut out[..n]);
                    }
                });
            }
            if interleaves(isa) {
                let p = PackedTensor::new(vec![rows, cols], ty, Bytes::Owned(w.clone())).unwrap();
                let x8 = Interleaved::new(&p);
                for n in [1, 4] {
                    let mut out = [[0f32; 8]; 4];
                    report("groups of 8 rows", n, &mut || {
                        for g in 0..rows / 8 {
                            dot_x8(isa, ty, x8.group(g), &acts[..n], &mut out[..n]);
                        }
                    });
                }
                // The prefill path of the types unpacked once per tile of input rows.
                if let Some(len) = unpacked_len(isa, ty, x8.group_bytes()) {
                    let pre: Vec<Vec<u8>> = (0..rows / 8)
                        .map(|g| {
                            let mut v = vec![0u8; len];
                            unpack_x8(isa, ty, x8.group(g), &mut v);
                            v
                        })
                        .collect();
                    let mut out = [[0f32; 8]; 4];
                    report("groups unpacked once", 4, &mut || {
                        for (g, pre) in pre.iter().enumerate() {
                            dot_x8_unpacked(isa, ty, x8.group(g), pre, &acts[..4], &mut out);
                        }
                    });
                }
            }
        }
    }
}
