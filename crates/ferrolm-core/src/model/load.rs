//! What a model path names, decided by one rule, and the `from_pretrained`
//! constructors of [`Config`], [`Tokenizer`] and [`Transformer`] built on it.
//!
//! A path is a checkpoint when it is
//! - a `.gguf` file (config, weights and tokenizer in one file), or
//! - a directory holding `config.json` or `tokenizer.json` (an HF model
//!   directory: safetensors weights, single or sharded, and tokenizer files),
//!   or else exactly one `.gguf` file, which is then the checkpoint.
//!
//! Anything else is an error that says what to pass instead.

use std::path::{Path, PathBuf};

use super::Transformer;
use crate::backend::cpu::Cpu;
use crate::backend::cuda::Cuda;
use crate::backend::{AnyBackend, Backend, Device, OnDevice};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::formats::{DType, Quantize};
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::{config_from_gguf, GgufFile, GgufSource};
use crate::weights::{SafetensorsDir, TensorSource};

/// How to load a model: where it runs, in which precisions, for how long
/// a context. The loader applies every choice here, for every backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Where the model runs (default: the CPU).
    pub device: Device,
    /// The weights' precision on the device (see [`AnyBackend::open`]): on
    /// the CPU unset (as stored) or f32 (exact); on a GPU bf16 (default),
    /// f16 or f32.
    pub dtype: Option<DType>,
    /// Convert matrices at load: ggml blocks (Q8_0 / Q4_K, the CPU's integer
    /// kernels) for every matrix, or FP8 for the layers' linear projections.
    pub quantize: Option<Quantize>,
    /// The KV cache's precision. Default: the weights' fixed precision (a
    /// GPU's dtype, the CPU's exact f32), else f16 for models with quantized
    /// weights (they already trade exactness for speed), else f32.
    pub kv_dtype: Option<DType>,
    /// Cache capacity per sequence (default: the config's `max_position_embeddings`).
    pub max_seq_len: Option<usize>,
    /// CPU worker threads (default: `FERROLM_NUM_THREADS`, else the physical cores).
    pub threads: Option<usize>,
}

impl LoadOptions {
    /// Refuses conversions the target cannot do, before anything is read.
    pub fn check(&self, device: Device, weight_dtype: Option<DType>) -> Result<()> {
        let Some(quantize) = self.quantize else { return Ok(()) };
        quantize.check()?;
        match (quantize, device) {
            (Quantize::Ggml(_), Device::Cuda(_)) => Err(Error::Unsupported(
                "quantize=\"q8_0\"/\"q4_k\" apply to the CPU only; on a GPU use dtype=\"bfloat16\", \
                 \"float16\" or \"float32\", or quantize=\"fp8\""
                    .into(),
            )),
            (_, Device::Cpu) if weight_dtype == Some(DType::F32) => Err(Error::InvalidInput(
                "quantize and the exact float32 path exclude each other; pick one".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The backend these options ask for.
    pub fn open_backend(&self) -> Result<AnyBackend> {
        let backend = AnyBackend::open(self.device, self.dtype, self.threads)?;
        let weight_dtype = crate::on_device!(&backend, |b| b.weight_dtype());
        self.check(self.device, weight_dtype)?;
        Ok(backend)
    }
}

/// A model on whichever backend its [`LoadOptions`] picked.
pub type AnyModel = OnDevice<Transformer<Cpu>, Transformer<Cuda>>;

/// Loads the checkpoint at `path` (see [`Checkpoint::resolve`]) as `options` say.
pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<AnyModel> {
    load_checkpoint(&Checkpoint::resolve(path)?, options)
}

/// [`load`], with the checkpoint's tokenizer: `None` for a model directory
/// without tokenizer files (such a model still serves token ids).
pub fn load_with_tokenizer(
    path: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<(AnyModel, Option<Tokenizer>)> {
    let checkpoint = Checkpoint::resolve(path)?;
    let tokenizer = match checkpoint.tokenizer() {
        Ok(t) => Some(t),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok((load_checkpoint(&checkpoint, options)?, tokenizer))
}

/// [`load`] of a checkpoint already resolved.
pub fn load_checkpoint(checkpoint: &Checkpoint, options: &LoadOptions) -> Result<AnyModel> {
    Ok(match options.open_backend()? {
        OnDevice::Cpu(cpu) => OnDevice::Cpu(Transformer::load(checkpoint, cpu, options)?),
        OnDevice::Cuda(gpu) => OnDevice::Cuda(Transformer::load(checkpoint, gpu, options)?),
    })
}

/// A resolved checkpoint path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// An HF model directory.
    HfDir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

/// A checkpoint's tensors, opened.
pub enum Tensors {
    Safetensors(SafetensorsDir),
    Gguf(GgufSource),
}

impl Tensors {
    pub fn source(&self) -> &dyn TensorSource {
        match self {
            Tensors::Safetensors(s) => s,
            Tensors::Gguf(g) => g,
        }
    }
}

impl Checkpoint {
    /// Resolves `path` by the rule in the module docs.
    pub fn resolve(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        if path.is_file() {
            if is_gguf(path) {
                return Ok(Checkpoint::Gguf(path.to_path_buf()));
            }
            return Err(Error::InvalidInput(format!(
                "{} is neither a model directory nor a .gguf file; pass the directory holding \
                 config.json, or a .gguf file",
                path.display()
            )));
        }
        if !path.is_dir() {
            return Err(Error::NotFound { what: "model directory or .gguf file", path: path.to_path_buf() });
        }
        if path.join("config.json").is_file() || path.join("tokenizer.json").is_file() {
            return Ok(Checkpoint::HfDir(path.to_path_buf()));
        }
        let ggufs = gguf_files(path)?;
        match ggufs.as_slice() {
            [one] => Ok(Checkpoint::Gguf(one.clone())),
            [] => {
                Err(Error::NotFound { what: "config.json (or a .gguf file)", path: path.join("config.json") })
            }
            many => Err(Error::InvalidInput(format!(
                "{} has no config.json and {} GGUF files; pass the one to use: {}",
                path.display(),
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Checkpoint::HfDir(p) | Checkpoint::Gguf(p) => p,
        }
    }

    /// The model config: `config.json`, or the GGUF metadata.
    pub fn config(&self) -> Result<Config> {
        match self {
            Checkpoint::HfDir(dir) => {
                let file = dir.join("config.json");
                if !file.is_file() {
                    return Err(Error::NotFound { what: "config.json", path: file });
                }
                Config::from_file(file)
            }
            Checkpoint::Gguf(file) => config_from_gguf(&GgufFile::open(file)?),
        }
    }

    /// Opens the weights (memory-mapped; nothing is read yet).
    pub fn tensors(&self) -> Result<Tensors> {
        match self {
            Checkpoint::HfDir(dir) => SafetensorsDir::open(dir).map(Tensors::Safetensors),
            Checkpoint::Gguf(file) => GgufSource::open(file).map(Tensors::Gguf),
        }
    }

    /// The config and the opened weights of a model about to be loaded
    /// (a GGUF file's header is read once, and its tensor types are checked
    /// before any tensor is).
    pub fn open(&self) -> Result<(Config, Tensors)> {
        match self.tensors()? {
            Tensors::Gguf(gguf) => {
                gguf.file().check_supported_types()?;
                Ok((config_from_gguf(gguf.file())?, Tensors::Gguf(gguf)))
            }
            tensors => Ok((self.config()?, tensors)),
        }
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            Checkpoint::HfDir(dir) => Tokenizer::from_dir(dir),
            Checkpoint::Gguf(file) => Tokenizer::from_gguf(file),
        }
    }
}

fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn gguf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_gguf(p))
        .collect();
    files.sort();
    Ok(files)
}

impl Config {
    /// The config of the checkpoint at `path` (see [`Checkpoint::resolve`]).
    pub fn from_pretrained(path: impl AsRef<Path>) -> Result<Config> {
        Checkpoint::resolve(path)?.config()
    }
}

impl Tokenizer {
    /// The tokenizer of the checkpoint at `path` (see [`Checkpoint::resolve`]):
    /// [`Tokenizer::from_dir`] or [`Tokenizer::from_gguf`].
    pub fn from_pretrained(path: impl AsRef<Path>) -> Result<Tokenizer> {
        Checkpoint::resolve(path)?.tokenizer()
    }
}

impl<B: Backend + Default> Transformer<B> {
    /// Loads the checkpoint at `path` (see [`Checkpoint::resolve`]) onto the
    /// default backend. `max_seq_len` (default: the config's
    /// `max_position_embeddings`, or a GGUF's `{arch}.context_length`) sets the
    /// cache capacity per sequence.
    pub fn from_pretrained(path: impl AsRef<Path>, max_seq_len: Option<usize>) -> Result<Self> {
        Self::from_pretrained_on(path, max_seq_len, B::default())
    }
}

impl<B: Backend> Transformer<B> {
    /// [`Transformer::from_pretrained`] onto a given backend (e.g. a GPU).
    pub fn from_pretrained_on(
        path: impl AsRef<Path>,
        max_seq_len: Option<usize>,
        backend: B,
    ) -> Result<Self> {
        Self::load(&Checkpoint::resolve(path)?, backend, &LoadOptions { max_seq_len, ..Default::default() })
    }

    /// Loads `checkpoint` onto `backend` as `options` say (their device,
    /// dtype and threads are the backend's already).
    pub fn load(checkpoint: &Checkpoint, backend: B, options: &LoadOptions) -> Result<Self> {
        let (mut config, tensors) = checkpoint.open()?;
        if let Some(n) = options.max_seq_len {
            config.max_seq_len = n;
        }
        Self::from_source(config, backend, tensors.source(), options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_resolved_by_one_rule() {
        let dir = std::env::temp_dir().join(format!("ferrolm-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let missing = Checkpoint::resolve(dir.join("absent")).unwrap_err();
        assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
        assert!(matches!(Checkpoint::resolve(&dir).unwrap_err(), Error::NotFound { .. }));

        std::fs::write(dir.join("a.gguf"), b"").unwrap();
        assert_eq!(Checkpoint::resolve(&dir).unwrap(), Checkpoint::Gguf(dir.join("a.gguf")));
        std::fs::write(dir.join("b.GGUF"), b"").unwrap();
        let many = Checkpoint::resolve(&dir).unwrap_err().to_string();
        assert!(many.contains("a.gguf") && many.contains("b.GGUF"), "{many}");
        assert_eq!(Checkpoint::resolve(dir.join("b.GGUF")).unwrap(), Checkpoint::Gguf(dir.join("b.GGUF")));

        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        assert_eq!(Checkpoint::resolve(&dir).unwrap(), Checkpoint::HfDir(dir.clone()));
        let file = Checkpoint::resolve(dir.join("config.json")).unwrap_err();
        assert!(matches!(file, Error::InvalidInput(_)), "{file}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
