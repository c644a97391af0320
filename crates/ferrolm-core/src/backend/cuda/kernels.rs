//! The CUDA kernels: sources from `kernels/` (embedded at build time),
//! compiled to PTX by NVRTC for the device's compute capability at first
//! use, and cached on disk by source hash and architecture.
//!
//! Why NVRTC at run time rather than shipped PTX: the wheel then builds on
//! machines without a CUDA toolkit, and the PTX always matches both the GPU
//! and the driver's NVRTC (PTX newer than the driver is refused at load).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::error::{Error, Result};

const PRELUDE: &str = include_str!("../../../../../kernels/prelude.cuh");

/// Every kernel file and the entry points the backend launches from it.
pub const SOURCES: &[(&str, &str, &[&str])] = &[
    (
        "embedding",
        include_str!("../../../../../kernels/embedding.cu"),
        &["embedding_f32", "embedding_bf16", "embedding_f16"],
    ),
    ("norm", include_str!("../../../../../kernels/norm.cu"), &["rms_norm_f32", "add_rms_norm_f32"]),
    ("rope", include_str!("../../../../../kernels/rope.cu"), &["rope_f32", "rms_norm_rope_f32"]),
    (
        "elementwise",
        include_str!("../../../../../kernels/elementwise.cu"),
        &["silu_mul_f32", "add_f32", "add_bias_f32", "cast_f32_bf16", "cast_f32_f16"],
    ),
    (
        "kv_cache",
        include_str!("../../../../../kernels/kv_cache.cu"),
        &[
            "kv_write_f32",
            "copy_page_f32",
            "kv_write_bf16",
            "copy_page_bf16",
            "kv_write_f16",
            "copy_page_f16",
        ],
    ),
    (
        "attention",
        include_str!("../../../../../kernels/attention.cu"),
        &[
            "paged_attention_f32",
            "attention_merge_f32",
            "paged_prefill_attention_f32",
            "paged_attention_bf16",
            "paged_prefill_attention_bf16",
            "paged_attention_f16",
            "paged_prefill_attention_f16",
        ],
    ),
    ("sampling", include_str!("../../../../../kernels/sampling.cu"), &["sample_f32"]),
];

/// The full program NVRTC compiles for one kernel file.
pub fn program(source: &str) -> String {
    format!("{PRELUDE}\n{source}")
}

/// Compiles one kernel file to PTX for `arch` (e.g. `"compute_90"`).
pub fn compile(name: &str, source: &str, arch: &str) -> Result<String> {
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(program(source), opts)
        .map_err(|e| Error::Gpu(format!("kernel {name}.cu does not compile for {arch}: {e}")))?;
    Ok(ptx.to_src())
}

/// What to do when libnvrtc cannot be loaded.
pub(super) const NVRTC_MISSING: &str = "libnvrtc was not found; install the CUDA toolkit or \
     `pip install nvidia-cuda-nvrtc-cu12`, and put its lib folder on LD_LIBRARY_PATH";

/// Compiles every kernel for `arch` without touching any GPU (what CI runs).
pub fn compile_all(arch: &str) -> Result<Vec<(String, String)>> {
    super::emulator::install_if_enabled()?;
    // SAFETY: only tries to dlopen libnvrtc by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable { device: "nvrtc".into(), reason: NVRTC_MISSING.into() });
    }
    SOURCES.iter().map(|(name, src, _)| Ok((name.to_string(), compile(name, src, arch)?))).collect()
}

/// PTX for one kernel file: from the disk cache if this exact source was
/// compiled for `arch` before, else compiled now and cached.
pub fn cached_ptx(name: &str, source: &str, arch: &str) -> Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (PRELUDE, source, arch).hash(&mut h);
    let path = cache_dir().map(|d| d.join(format!("{name}-{arch}-{:016x}.ptx", h.finish())));
    if let Some(ptx) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(ptx);
    }
    let ptx = compile(name, source, arch)?;
    if let Some(path) = path {
        // Best effort: a read-only cache only costs a recompile next time.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::create_dir_all(path.parent().expect("cache files have a parent")).is_ok()
            && std::fs::write(&tmp, &ptx).is_ok()
        {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(ptx)
}

/// Compiled kernels: `kernels/` in the cache root; under the emulator, in
/// its own build's folder (its "PTX" names shared libraries built with it).
fn cache_dir() -> Option<PathBuf> {
    match super::emulator::directory() {
        Some(dir) => Some(dir.join("kernels")),
        None => super::cache::cache_root().map(|root| root.join("kernels")),
    }
}
