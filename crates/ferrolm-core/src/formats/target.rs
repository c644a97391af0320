//! `quantize=`: the format a backend converts matrices to as it loads them.

use crate::error::{Error, Result};
use crate::formats::GgmlType;

/// A format matrices are converted to at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// ggml blocks (`Q8_0` or `Q4_K`) for the CPU's integer kernels.
    Ggml(GgmlType),
    /// FP8 E4M3 with one f32 scale per output channel
    /// ([`crate::formats::fp8`]), for the decoder's linear layers only.
    Fp8,
}

/// The names `quantize=` accepts, for messages.
const CHOICES: &str = "\"q8_0\", \"q4_k\" or \"fp8\"";

impl Quantize {
    /// `"q8_0"`, `"q4_k"` or `"fp8"` (any case).
    pub fn parse(s: &str) -> Result<Quantize> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Quantize::Ggml(GgmlType::Q8_0)),
            "q4_k" => Ok(Quantize::Ggml(GgmlType::Q4_K)),
            "fp8" => Ok(Quantize::Fp8),
            other => Err(Error::InvalidInput(format!("quantize=`{other}` is not known; use {CHOICES}"))),
        }
    }

    /// Refuses ggml types the CPU cannot quantize to.
    pub fn check(self) -> Result<Quantize> {
        match self {
            Quantize::Ggml(GgmlType::Q8_0 | GgmlType::Q4_K) | Quantize::Fp8 => Ok(self),
            Quantize::Ggml(ty) => Err(Error::InvalidInput(format!("cannot quantize to {ty}; use {CHOICES}"))),
        }
    }
}

impl From<GgmlType> for Quantize {
    fn from(ty: GgmlType) -> Quantize {
        Quantize::Ggml(ty)
    }
}
