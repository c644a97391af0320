//! Where the CUDA backend keeps what it builds on disk (compiled kernels,
//! the emulator's libraries).

use std::path::PathBuf;

/// `$FERROLM_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ferrolm`, else `~/.cache/ferrolm`.
pub(super) fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERROLM_KERNEL_CACHE") {
        return Some(dir.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferrolm"))
}
