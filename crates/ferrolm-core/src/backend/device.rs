//! Where a model runs: the CPU or GPU `N`.

use crate::error::{Error, Result};

/// Where a model runs. Parsed from strings such as `"cpu"`, `"cuda"`, `"cuda:1"`,
/// or a bare GPU index (`"0"`, as the session API's `device=0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => s.strip_prefix("cuda:").unwrap_or(&s).parse().ok().map(Device::Cuda).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown device `{s}`; use \"cpu\", \"cuda\", \"cuda:N\" or a GPU index N"
                ))
            }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
