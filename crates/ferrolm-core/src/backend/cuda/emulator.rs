//! The CUDA emulator: with `FERROLM_CUDA_EMULATOR=1`, `device="cuda"` runs
//! this backend unchanged on the CPU. Stand-ins for the three libraries
//! cudarc loads (libcuda, libnvrtc, libcublas; sources in `cuda-emulator/`)
//! are compiled by the system C++ compiler at first use, cached on disk, and
//! loaded before cudarc looks for the real ones: cudarc's `dlopen("libcuda.so")`
//! then finds the already loaded library of that soname. Kernels are compiled
//! from the same `kernels/*.cu` sources by the stand-in NVRTC.
//!
//! Why stand-ins for the libraries rather than a seam inside the backend:
//! then every line of the backend and of cudarc (launch arguments, grid and
//! block sizes, shared memory, allocations, copies, cuBLAS calls) is the code
//! a GPU runs; only what is below the driver's C API differs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};

const VARIABLE: &str = "FERROLM_CUDA_EMULATOR";

const FILES: &[(&str, &str)] = &[
    ("emu_api.h", include_str!("../../../../../cuda-emulator/emu_api.h")),
    ("cuda_cpu.h", include_str!("../../../../../cuda-emulator/cuda_cpu.h")),
    ("driver.cpp", include_str!("../../../../../cuda-emulator/driver.cpp")),
    ("nvrtc.cpp", include_str!("../../../../../cuda-emulator/nvrtc.cpp")),
    ("cublas.cpp", include_str!("../../../../../cuda-emulator/cublas.cpp")),
];

/// Each stand-in: its library name, its source, and every symbol cudarc resolves in it.
const LIBRARIES: &[(&str, &str, &str)] = &[
    ("cuda", "driver.cpp", include_str!("../../../../../cuda-emulator/symbols/cuda.txt")),
    ("nvrtc", "nvrtc.cpp", include_str!("../../../../../cuda-emulator/symbols/nvrtc.txt")),
    ("cublas", "cublas.cpp", include_str!("../../../../../cuda-emulator/symbols/cublas.txt")),
];

/// Whether `FERROLM_CUDA_EMULATOR` asks for the emulator. Unset, empty or `0`: no.
pub fn enabled() -> Result<bool> {
    match std::env::var(VARIABLE).as_deref().map(str::trim) {
        Err(_) | Ok("" | "0" | "false" | "no" | "off") => Ok(false),
        Ok("1" | "true" | "yes" | "on") => Ok(true),
        Ok(other) => Err(Error::InvalidInput(format!(
            "{VARIABLE}={other}: set it to 1 to run the CUDA backend on the CPU, or unset it"
        ))),
    }
}

/// Whether this process runs CUDA on the emulator (it is loaded).
pub fn active() -> bool {
    INSTALLED.get().is_some_and(|r| r.is_ok())
}

static INSTALLED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Loads the emulator when `FERROLM_CUDA_EMULATOR` asks for it (building it
/// once per machine); a no-op otherwise. Must run before cudarc's first call.
pub fn install_if_enabled() -> Result<()> {
    if !enabled()? {
        return Ok(());
    }
    let installed = INSTALLED.get_or_init(|| build_and_load().map_err(|e| e.to_string()));
    installed
        .as_ref()
        .map(|_| ())
        .map_err(|e| Error::DeviceUnavailable { device: "cuda (emulator)".into(), reason: e.clone() })
}

/// Where the emulator's libraries and compiled kernels live.
pub fn directory() -> Option<&'static Path> {
    INSTALLED.get().and_then(|r| r.as_ref().ok()).map(PathBuf::as_path)
}

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

fn build_and_load() -> Result<PathBuf> {
    let dir = build()?;
    for (name, _, _) in LIBRARIES {
        let path = dir.join(format!("lib{name}.so"));
        // SAFETY: our own libraries; their initialisers only set up statics.
        // RTLD_GLOBAL: kernel modules and cuBLAS resolve the driver's symbols.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(&path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .map_err(|e| Error::Gpu(format!("loading the CUDA emulator's {}: {e}", path.display())))?;
        // Loaded for the life of the process: cudarc keeps calling into it.
        std::mem::forget(lib);
    }
    Ok(dir)
}

/// Builds the three libraries into a folder named by a hash of their sources
/// and the compiler, unless a previous run did.
fn build() -> Result<PathBuf> {
    let cxx = compiler();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(FILES, LIBRARIES, &cxx), &mut hasher);
    let hash = std::hash::Hasher::finish(&hasher);
    let root = super::cache::cache_root().ok_or_else(|| {
        Error::Gpu("no cache folder for the CUDA emulator: set FERROLM_KERNEL_CACHE".into())
    })?;
    let dir = root.join("cuda-emulator").join(format!("{hash:016x}"));
    if dir.join("libcublas.so").exists() {
        return Ok(dir);
    }
    let tmp = root.join("cuda-emulator").join(format!("tmp-{}-{hash:016x}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    for (name, text) in FILES {
        std::fs::write(tmp.join(name), text).map_err(|e| io_error(&tmp, e))?;
    }
    for (name, source, symbols) in LIBRARIES {
        let stubs = format!("stubs_{name}.cpp");
        std::fs::write(tmp.join(&stubs), stub_source(symbols)).map_err(|e| io_error(&tmp, e))?;
        let mut cmd = Command::new(&cxx);
        cmd.current_dir(&tmp)
            .args(["-std=c++17", "-O2", "-fPIC", "-shared", "-pthread", "-w"])
            .arg(format!("-Wl,-soname,lib{name}.so"))
            .arg(format!("-DFERROLM_EMU_DIR=\"{}\"", dir.display()))
            .args(["-o", &format!("lib{name}.so"), source, &stubs]);
        if *name == "cublas" {
            // Resolves the driver stand-in's allocation checks (already loaded by then).
            cmd.args(["-L.", "-l:libcuda.so"]).arg(format!("-Wl,-rpath,{}", dir.display()));
        }
        cmd.arg("-ldl");
        let out = cmd.output().map_err(|e| {
            Error::Gpu(format!("the CUDA emulator needs a C++ compiler (`{cxx}`, or set CXX): {e}"))
        })?;
        if !out.status.success() {
            return Err(Error::Gpu(format!(
                "building the CUDA emulator's lib{name}.so with `{cxx}` failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    // Another process may have finished first: then its copy is used.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("libcublas.so").exists() {
            return Err(Error::Gpu(format!("could not create {}", dir.display())));
        }
    }
    Ok(dir)
}

/// A weak "not supported" definition of every symbol; the library's own
/// definitions take their place.
fn stub_source(symbols: &str) -> String {
    let mut s = String::from("extern \"C\" int ferrolm_emu_unsupported(const char*);\n");
    for name in symbols.lines().map(str::trim).filter(|n| !n.is_empty()) {
        s.push_str(&format!(
            "extern \"C\" __attribute__((weak)) int {name}() {{ return ferrolm_emu_unsupported(\"{name}\"); }}\n"
        ));
    }
    s
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Gpu(format!("building the CUDA emulator in {}: {e}", path.display()))
}
