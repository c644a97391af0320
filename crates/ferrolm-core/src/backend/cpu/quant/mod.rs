//! Quantized matrix-vector and matrix-matrix products for the CPU.
//!
//! Weights stay in their stored ggml blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K)
//! or halves (f16, bf16). Activations are quantized per row into 8-bit
//! blocks of 32 ([`Q8Block`]: an f32 scale, the integer sum and 32 i8), so
//! each weight block meets an activation block in an integer dot product,
//! scaled once per block in f32 (llama.cpp's scheme; the error it adds is
//! bounded by the activation rounding, see `tests.rs` and the perplexity test).
//!
//! Kernels exist per instruction set ([`Isa`]): the portable reference
//! (`portable.rs`), AVX2 and AVX-512 VNNI (`x86.rs`) and NEON (`neon.rs`),
//! chosen once at run time from CPU feature detection. Every kernel takes one
//! weight row and up to four activation rows. FP8 E4M3 rows (`dot_fp8`,
//! `widen_fp8`) multiply f32 activations, like halves.

mod block;
pub mod interleave;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(test)]
pub(super) mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use self::block::{Q8Block, QK};
use crate::formats::GgmlType;

/// An instruction set with its own kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512Vnni,
    Neon,
}

impl Isa {
    /// The best instruction set this CPU runs.
    pub fn detect() -> Isa {
        *Isa::available().last().expect("portable is always available")
    }

    /// Every instruction set this CPU runs, portable first.
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 {
                out.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    out.push(Isa::Avx512Vnni);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon")
            && std::arch::is_aarch64_feature_detected!("dotprod")
        {
            out.push(Isa::Neon);
        }
        out
    }
}

/// The quantized types with kernels, every one of them also interleaved.
pub const INTERLEAVED: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Whether the CPU kernels multiply weights of type `ty` without dequantizing.
pub fn is_supported(ty: GgmlType) -> bool {
    INTERLEAVED.contains(&ty) || matches!(ty, GgmlType::F16 | GgmlType::BF16)
}

/// Whether `ty` multiplies against quantized activations ([`Q8Block`]s);
/// halves multiply against f32 activations.
pub fn uses_q8(ty: GgmlType) -> bool {
    is_supported(ty) && !matches!(ty, GgmlType::F16 | GgmlType::BF16)
}

/// Quantizes activations (a multiple of 32 values) into `out`, one block
/// per 32 values; every instruction set gives the same blocks.
pub fn quantize_rows(x: &[f32], out: &mut [Q8Block]) {
    #[cfg(target_arch = "x86_64")]
    if *X86_SIMD {
        // SAFETY: AVX2/FMA/F16C were detected.
        return unsafe { x86::quantize_q8(x, out) };
    }
    portable::quantize_q8(x, out);
}

#[cfg(target_arch = "x86_64")]
static X86_SIMD: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| Isa::available().contains(&Isa::Avx2));

/// Whether this x86 CPU has AVX2, FMA and F16C (code compiled for them may run).
#[cfg(target_arch = "x86_64")]
pub fn x86_simd() -> bool {
    *X86_SIMD
}

/// [`quantize_rows`] with the portable code only (the reference in tests).
pub fn quantize_rows_portable(x: &[f32], out: &mut [Q8Block]) {
    portable::quantize_q8(x, out);
}

/// The dot products of one weight row (`w`, stored as `ty`) with up to four
/// activation rows; `out[t]` receives row `t`'s. `acts` are quantized rows
/// for Q8 types ([`uses_q8`]).
pub fn dot_q8(isa: Isa, ty: GgmlType, w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    match acts.len() {
        1 => dot_n::<1>(isa, ty, w, [acts[0]], out),
        2 => dot_n::<2>(isa, ty, w, [acts[0], acts[1]], out),
        3 => dot_n::<3>(isa, ty, w, [acts[0], acts[1], acts[2]], out),
        4 => dot_n::<4>(isa, ty, w, [acts[0], acts[1], acts[2], acts[3]], out),
        n => panic!("dot_q8 takes 1 to 4 activation rows, not {n}"),
    }
}

fn dot_n<const T: usize>(isa: Isa, ty: GgmlType, w: &[u8], a: [&[Q8Block]; T], out: &mut [f32]) {
    let blocks = |per_block: usize| w.len() / per_block;
    let (bytes, values) = match ty {
        GgmlType::Q4_0 => (18, QK),
        GgmlType::Q4_1 => (20, QK),
        GgmlType::Q5_0 => (22, QK),
        GgmlType::Q5_1 => (24, QK),
        GgmlType::Q8_0 => (34, QK),
        GgmlType::Q4_K => (144, 256),
        GgmlType::Q5_K => (176, 256),
        GgmlType::Q6_K => (210, 256),
        _ => panic!("dot_q8: {ty} weights do not multiply quantized activations"),
    };
    // The kernels read `values / 32` activation blocks per weight block.
    let need = blocks(bytes) * values / QK;
    assert!(
        w.len().is_multiple_of(bytes) && a.iter().all(|a| a.len() >= need),
        "dot_q8: row and activations disagree"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            // SAFETY: `isa` comes from `Isa::available`, so the CPU has the
            // features; lengths were checked above.
            unsafe {
                macro_rules! call {
                    ($m:ident) => {
                        match ty {
                            GgmlType::Q4_0 => x86::$m::q4_0::<T>(w, a, out),
                            GgmlType::Q4_1 => x86::$m::q4_1::<T>(w, a, out),
                            GgmlType::Q5_0 => x86::$m::q5_0::<T>(w, a, out),
                            GgmlType::Q5_1 => x86::$m::q5_1::<T>(w, a, out),
                            GgmlType::Q8_0 => x86::$m::q8_0::<T>(w, a, out),
                            GgmlType::Q4_K => x86::$m::q4_k::<T>(w, a, out),
                            GgmlType::Q5_K => x86::$m::q5_k::<T>(w, a, out),
                            _ => x86::$m::q6_k::<T>(w, a, out),
                        }
                    };
                }
                if isa == Isa::Avx2 {
                    call!(avx2)
                } else {
                    call!(avx512vnni)
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if neon::has(ty) => {
            for (t, a) in a.iter().enumerate() {
                // SAFETY: NEON with dotprod was detected; lengths checked above.
                out[t] = unsafe { neon::dot(ty, w, a) };
            }
        }
        _ => {
            let f = match ty {
                GgmlType::Q4_0 => portable::dot_q4_0,
                GgmlType::Q4_1 => portable::dot_q4_1,
                GgmlType::Q5_0 => portable::dot_q5_0,
                GgmlType::Q5_1 => portable::dot_q5_1,
                GgmlType::Q8_0 => portable::dot_q8_0,
                GgmlType::Q4_K => portable::dot_q4_k,
                GgmlType::Q5_K => portable::dot_q5_k,
                _ => portable::dot_q6_k,
            };
            for (t, a) in a.iter().enumerate() {
                out[t] = f(w, a);
            }
        }
    }
}

/// Whether `isa` has kernels for [`interleave::Interleaved`] matrices (the
/// others keep rows as stored).
pub fn interleaves(isa: Isa) -> bool {
    matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
}

/// One group of eight interleaved rows (`g`: every block of the group)
/// against up to four activation rows: `out[t][i]` is row `i`'s product
/// with activation row `t`.
pub fn dot_x8(isa: Isa, ty: GgmlType, g: &[u8], acts: &[&[Q8Block]], out: &mut [[f32; 8]]) {
    assert!(interleaves(isa), "{isa:?} has no interleaved kernels");
    // Activation blocks the group's blocks span.
    let blocks = match ty {
        GgmlType::Q4_0 => g.len() / 144,
        GgmlType::Q4_1 => g.len() / 160,
        GgmlType::Q5_0 => g.len() / 176,
        GgmlType::Q5_1 => g.len() / 192,
        GgmlType::Q8_0 => g.len() / 272,
        GgmlType::Q4_K => g.len() / 1152 * 8,
        GgmlType::Q5_K => g.len() / 1408 * 8,
        GgmlType::Q6_K => g.len() / 1680 * 8,
        _ => panic!("dot_x8: {ty} is not interleaved"),
    };
    assert!(acts.iter().all(|a| a.len() >= blocks) && out.len() >= acts.len(), "dot_x8: lengths disagree");
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! call {
            ($n:literal, [$($i:literal),*]) => {{
                let a = [$(acts[$i]),*];
                let o: &mut [[f32; 8]; $n] = (&mut out[..$n]).try_into().expect("n rows");
                // SAFETY: AVX2/FMA/F16C were detected (`interleaves`); lengths checked above.
                unsafe {
                    match ty {
                        GgmlType::Q4_0 => x86::x8::q4_0::<$n>(g, a, o),
                        GgmlType::Q4_1 => x86::x8::q4_1::<$n>(g, a, o),
                        GgmlType::Q5_0 => x86::x8::q5_0::<$n>(g, a, o),
                        GgmlType::Q5_1 => x86::x8::q5_1::<$n>(g, a, o),
                        GgmlType::Q4_K => x86::x8::q4_k::<$n>(g, a, o),
                        GgmlType::Q5_K => x86::x8::q5_k::<$n>(g, a, o),
                        GgmlType::Q6_K => x86::x8::q6_k::<$n>(g, a, o),
                        _ => x86::x8::q8_0::<$n>(g, a, o),
                    }
                }
            }};
        }
        match acts.len() {
            1 => call!(1, [0]),
            2 => call!(2, [0, 1]),
            3 => call!(3, [0, 1, 2]),
            4 => call!(4, [0, 1, 2, 3]),
            n => panic!("dot_x8 takes 1 to 4 activation rows, not {n}"),
        }
    }
}

/// Bytes of a group of `ty` unpacked for [`dot_x8_unpacked`] (`None` for
/// the types whose kernels read their blocks directly).
pub fn unpacked_len(isa: Isa, ty: GgmlType, group_bytes: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if interleaves(isa) {
        return x86::x8::unpacked_len(ty, group_bytes);
    }
    let _ = (isa, ty, group_bytes);
    None
}

/// The values of group `g` as bytes (see [`unpacked_len`]), for many
/// calls of [`dot_x8_unpacked`]: a tile of input rows unpacks each group
/// once instead of once per four rows.
pub fn unpack_x8(isa: Isa, ty: GgmlType, g: &[u8], out: &mut [u8]) {
    let len = unpacked_len(isa, ty, g.len()).expect("an unpacked type");
    assert!(out.len() >= len, "unpack_x8: output too short");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `unpacked_len` is only Some where AVX2/FMA/F16C were detected.
    unsafe {
        x86::x8::unpack(ty, g, out)
    }
}

/// [`dot_x8`] with the group's values already unpacked into `pre`
/// ([`unpack_x8`]): the same results, bit for bit.
pub fn dot_x8_unpacked(
    isa: Isa,
    ty: GgmlType,
    g: &[u8],
    pre: &[u8],
    acts: &[&[Q8Block]],
    out: &mut [[f32; 8]],
) {
    let len = unpacked_len(isa, ty, g.len()).expect("an unpacked type");
    let blocks = if ty == GgmlType::Q6_K { len / 512 } else { len / 256 };
    assert!(pre.len() >= len && acts.iter().all(|a| a.len() >= blocks) && out.len() >= acts.len());
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! call {
            ($n:literal, [$($i:literal),*]) => {{
                let a = [$(acts[$i]),*];
                let o: &mut [[f32; 8]; $n] = (&mut out[..$n]).try_into().expect("n rows");
                // SAFETY: AVX2/FMA/F16C were detected (`unpacked_len`); lengths checked above.
                unsafe { x86::x8::unpacked::<$n>(ty, g, pre, a, o) }
            }};
        }
        match acts.len() {
            1 => call!(1, [0]),
            2 => call!(2, [0, 1]),
            3 => call!(3, [0, 1, 2]),
            4 => call!(4, [0, 1, 2, 3]),
            n => panic!("dot_x8_unpacked takes 1 to 4 activation rows, not {n}"),
        }
    }
}

/// `Σ decode(w[i]) * x[i]` of one f16 or bf16 row with f32 activations.
pub fn dot_half(isa: Isa, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    let mut out = [0f32];
    dot_half_rows(isa, ty, w, &[x], &mut out);
    out[0]
}

/// [`dot_half`] of one weight row with 1 to 4 activation rows (`out[t]` for
/// `xs[t]`); each row's result is the same whichever rows share the call.
pub fn dot_half_rows(isa: Isa, ty: GgmlType, w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    assert!(xs.iter().all(|x| w.len() >= 2 * x.len()), "dot_half: row shorter than the activations");
    let bf16 = ty == GgmlType::BF16;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            macro_rules! rows {
                ($n:literal, [$($i:literal),*]) => {{
                    let xs = [$(xs[$i]),*];
                    // SAFETY: AVX2/FMA/F16C were detected; lengths checked above.
                    let sums: [f32; $n] = unsafe {
                        if bf16 { x86::dot_half::<true, $n>(w, xs) } else { x86::dot_half::<false, $n>(w, xs) }
                    };
                    out[..$n].copy_from_slice(&sums);
                }};
            }
            match xs.len() {
                1 => rows!(1, [0]),
                2 => rows!(2, [0, 1]),
                3 => rows!(3, [0, 1, 2]),
                4 => rows!(4, [0, 1, 2, 3]),
                n => panic!("dot_half_rows takes 1 to 4 activation rows, not {n}"),
            }
        }
        _ => {
            for (o, x) in out.iter_mut().zip(xs) {
                *o = if bf16 { portable::dot_bf16(w, x) } else { portable::dot_f16(w, x) };
            }
        }
    }
}

/// `Σ decode(w[i]) * x[i]` of one FP8 E4M3 row with f32 activations (the
/// row's scale is applied by the caller). SIMD and portable kernels agree
/// to the rounding of the sums (their order differs).
pub fn dot_fp8(isa: Isa, w: &[u8], x: &[f32]) -> f32 {
    assert!(w.len() >= x.len(), "dot_fp8: row shorter than the activations");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C were detected (both x86 sets include them).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::dot_fp8(w, x) },
        _ => portable::dot_fp8(w, x),
    }
}

/// A row of FP8 codes with one scale per run of `g` values of it
/// (`scales.len() == ceil(cols / g)`) against f32 activations.
pub fn dot_fp8_groups(isa: Isa, w: &[u8], x: &[f32], scales: &[f32], g: usize) -> f32 {
    assert!(w.len() >= x.len() && scales.len() * g >= x.len(), "dot_fp8_groups: row or scales too short");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2`/`Avx512Vnni` are only made when the CPU has
        // AVX2, FMA and F16C (see `Isa::detect`).
        Isa::Avx2 | Isa::Avx512Vnni if g.is_multiple_of(16) => unsafe {
            x86::dot_fp8_groups(w, x, scales, g)
        },
        _ => portable::dot_fp8_groups(w, x, scales, g),
    }
}

/// [`dot_fp8`] of four rows against the same activations (decode's GEMV
/// takes weight rows four at a time).
pub fn dot_fp8_x4(isa: Isa, w: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    assert!(w.iter().all(|w| w.len() >= x.len()), "dot_fp8_x4: a row is shorter than the activations");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C were detected (both x86 sets include them).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::dot_fp8_x4(w, x) },
        _ => w.map(|w| portable::dot_fp8(w, x)),
    }
}

/// `out[i] = decode(w[i]) * scale`: one FP8 row widened to f32, the same
/// bits on every instruction set.
pub fn widen_fp8(isa: Isa, w: &[u8], scale: f32, out: &mut [f32]) {
    assert!(w.len() >= out.len(), "widen_fp8: row shorter than the output");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C were detected.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::widen_fp8(w, scale, out) },
        _ => portable::widen_fp8(w, scale, out),
    }
}
