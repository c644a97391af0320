//! Floating-point element types, parsed from every spelling users write
//! (`"bfloat16"`, `"bf16"`, `"torch.float16"`, `"half"`, ...) by one parser.

use crate::error::{Error, Result};

/// A floating-point element type: of a checkpoint's tensors, of weights on
/// a device, or of a KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Any case; an optional `torch.` prefix (as numpy/torch dtypes print).
    pub fn parse(s: &str) -> Result<DType> {
        DType::parse_arg("dtype", s)
    }

    /// [`DType::parse`] of the argument called `name` (named in the error).
    pub fn parse_arg(name: &str, s: &str) -> Result<DType> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.strip_prefix("torch.").unwrap_or(&lower) {
            "float32" | "f32" | "fp32" | "float" => Ok(DType::F32),
            "float16" | "f16" | "fp16" | "half" => Ok(DType::F16),
            "bfloat16" | "bf16" => Ok(DType::BF16),
            _ => Err(Error::InvalidInput(format!(
                "{name} `{s}` is not known; use \"float32\" (\"f32\"), \"float16\" (\"f16\") or \"bfloat16\" (\"bf16\")"
            ))),
        }
    }

    /// torch's name: `float32`, `float16`, `bfloat16`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// The short name kernels are suffixed with: `f32`, `f16`, `bf16`.
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_and_names_round_trip() {
        for (s, d) in [
            ("float32", DType::F32),
            ("FP16", DType::F16),
            ("torch.bfloat16", DType::BF16),
            ("half", DType::F16),
        ] {
            assert_eq!(DType::parse(s).unwrap(), d);
        }
        for d in [DType::F32, DType::F16, DType::BF16] {
            assert_eq!(DType::parse(d.name()).unwrap(), d);
            assert_eq!(DType::parse(d.suffix()).unwrap(), d);
        }
        let err = DType::parse("int8").unwrap_err().to_string();
        assert!(err.contains("dtype `int8` is not known"), "{err}");
    }
}
