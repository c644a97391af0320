//! The 8-bit activation block every quantized kernel multiplies against.

/// Values per activation block (and per Q4_0/Q4_1/Q8_0 weight block; the
/// K-quants' 256-value super-blocks span eight).
pub const QK: usize = 32;

/// 32 activations quantized to i8: `x ≈ d * qs`, with `sum = Σ qs` kept for
/// the weight formats that add an offset (Q4_0's -8, Q4_1's and Q4_K's mins).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub sum: i32,
    pub qs: [i8; QK],
}
