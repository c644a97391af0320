//! The one error type of the core. Every variant says what went wrong and,
//! where there is one, what to do about it; bindings map variants to their
//! own exception types (FileNotFoundError, ValueError, RuntimeError, ...).

use std::path::PathBuf;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory the caller named does not exist.
    #[error("{what} not found: {path}")]
    NotFound { what: &'static str, path: PathBuf },

    /// Reading a file failed for a reason other than its absence.
    #[error("could not read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configuration value is missing or out of range.
    #[error("invalid config field `{field}`: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// The checkpoint asks for a model or feature ferrolm does not implement.
    #[error("{0}")]
    Unsupported(String),

    /// A weight file is malformed or does not fit the config.
    #[error("invalid weights: {0}")]
    InvalidWeights(String),

    /// A tensor has the wrong shape for the model.
    #[error("tensor `{name}` has shape {got:?} but the model expects {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, got: Vec<usize> },

    /// A tensor the model needs is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),

    /// A tensor name the model does not know.
    #[error("unexpected tensor `{0}` (not a parameter of this model)")]
    UnexpectedTensor(String),

    /// A tokenizer file, GGUF vocabulary or chat template is malformed.
    #[error("invalid tokenizer: {0}")]
    InvalidTokenizer(String),

    /// The caller passed an input the model cannot run (bad token, ragged batch, ...).
    #[error("{0}")]
    InvalidInput(String),

    /// A sequence would grow past the cache's capacity.
    #[error("sequence needs {needed} positions but max_seq_len is {max_seq_len}")]
    ContextOverflow { needed: usize, max_seq_len: usize },

    /// The KV page pool cannot hold what a forward pass would write.
    #[error(
        "Insufficient pages in KV cache: {needed} more page(s) are needed but only {available} are \
         free; use a larger pool (num_pages / kv_cache_bytes), fewer or shorter sequences, or free pages"
    )]
    KvCacheFull { needed: usize, available: usize },

    /// An allocation the model needs could not be made.
    #[error("out of memory: could not allocate {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: usize },

    /// Sizes asked for (a context length, a batch, a pool) would need more
    /// memory than the machine has; refused before anything is allocated.
    #[error("{what} needs {} but {} of memory are available; {advice}", size(*needed), size(*available))]
    DoesNotFit { what: String, needed: usize, available: usize, advice: String },

    /// A GPU operation failed (driver, kernel compilation or launch, cuBLAS).
    #[error("GPU error: {0}")]
    Gpu(String),

    /// A bug in ferrolm (a broken invariant, a caught panic); please report it.
    #[error("internal error in ferrolm (please report it): {0}")]
    Internal(String),

    /// The engine's queue of requests not yet admitted is full (its
    /// `max_waiting`): try again later. Nothing was queued.
    #[error(
        "the engine is overloaded: {waiting} request(s) already wait to be admitted and at most \
         {max_waiting} may wait; retry later"
    )]
    Overloaded { waiting: usize, max_waiting: usize },

    /// The engine was shut down; it takes no more requests.
    #[error("the engine has shut down; start a new one")]
    EngineStopped,

    /// The engine thread failed (a panic) and stopped: every request it
    /// held was failed with this error, and it takes no more.
    #[error("the engine failed and stopped ({0}); restart it")]
    EngineFailed(String),

    /// The requested device cannot be used in this build or on this machine.
    #[error("device `{device}` is not available: {reason}")]
    DeviceUnavailable { device: String, reason: String },
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { what: "file", path }
        } else {
            Error::Io { path, source }
        }
    }
}

/// A byte count as people read it ("1.5 GiB"); `usize::MAX` stands for
/// a size past the address space.
pub fn size(bytes: usize) -> String {
    if bytes == usize::MAX {
        return "more than the address space".into();
    }
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

/// Allocates a zeroed `Vec<f32>` of `len` elements, returning an error instead
/// of aborting the process when memory is short.
pub fn try_zeroed(len: usize, what: &str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory { what: what.to_string(), bytes: len.saturating_mul(4) })?;
    v.resize(len, 0.0);
    Ok(v)
}
