//! The OCP FP8 E4M3 number format ("e4m3fn", torch's `float8_e4m3fn`):
//! one sign bit, four exponent bits (bias 7), three mantissa bits. There
//! are no infinities; `S.1111.111` is NaN, so the largest finite value is
//! `1.110b * 2^8 = 448`. Exponent 0 holds the subnormals `m * 2^-9`.
//!
//! [`encode`] is torch's f32 -> e4m3fn cast bit for bit (c10's
//! `fp8e4m3fn_from_fp32_value`, with the saturation torch applies today:
//! finite values beyond 448 and infinities become +-448, NaN stays NaN);
//! [`decode`] is exact (every code is an f32). Both are checked against
//! torch in `tests.rs` (fixture: `tests/fixtures/quantize/make_fp8_fixture.py`).

/// The largest finite E4M3 value.
pub const MAX: f32 = 448.0;

/// The code of `+MAX`; `| 0x80` gives `-MAX`.
const MAX_CODE: u8 = 0x7e;
/// The code of NaN (with either sign bit).
const NAN_CODE: u8 = 0x7f;

/// `v` rounded to the nearest E4M3 value (ties to even), as torch casts.
pub fn encode(v: f32) -> u8 {
    let bits = v.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        return sign | NAN_CODE;
    }
    if f32::from_bits(abs) > MAX {
        return sign | MAX_CODE;
    }
    // Below 2^-6 (the smallest normal) the result is a subnormal: adding
    // 2^14, whose f32 ulp is 2^-9 (the subnormal step), lets the FPU round
    // to nearest even; the step count is then the low bits.
    const SUBNORMAL_BIAS: u32 = 141 << 23; // 2^14
    if abs < 121 << 23 {
        let rounded = (f32::from_bits(abs) + f32::from_bits(SUBNORMAL_BIAS)).to_bits();
        return sign | (rounded - SUBNORMAL_BIAS) as u8;
    }
    // Normal: rebias the exponent (127 -> 7) and round the 23-bit mantissa
    // to 3 bits, half to even (add 0x7ffff plus the kept mantissa's lowest bit).
    let mantissa_odd = (abs >> 20) & 1;
    let rebias = (120u32 << 23).wrapping_neg();
    let rounded = abs.wrapping_add(rebias).wrapping_add(0x7ffff + mantissa_odd);
    sign | (rounded >> 20) as u8
}

/// The value of `code` (exact; NaN for `0x7f` and `0xff`).
#[inline]
pub fn decode(code: u8) -> f32 {
    DECODED[code as usize]
}

/// [`decode`] of every code.
pub static DECODED: [f32; 256] = {
    let mut table = [0f32; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = decode_bits(code as u8);
        code += 1;
    }
    table
};

const fn decode_bits(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((code >> 3) & 15) as i32;
    let mantissa = (code & 7) as f32;
    if code & 0x7f == NAN_CODE {
        return f32::NAN;
    }
    let magnitude = if exponent == 0 {
        mantissa * (1.0 / 512.0) // subnormal: m * 2^-9
    } else {
        (1.0 + mantissa / 8.0) * pow2(exponent - 7)
    };
    sign * magnitude
}

/// `2^e` for the E4M3 exponent range (-6..=8), exactly.
const fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// The f16 bits whose value is `decode(code) * 2^-8`, exactly, for every
/// code but NaN (the E4M3 fields shifted into f16's: the exponent biases
/// differ by 8, and E4M3 subnormals land on f16 subnormals). SIMD kernels
/// widen codes with this and F16C, then multiply by 256 once per row.
#[inline(always)]
pub fn to_f16_bits_scaled(code: u8) -> u16 {
    let c = code as u16;
    ((c & 0x80) << 8) | ((c & 0x7f) << 7)
}
