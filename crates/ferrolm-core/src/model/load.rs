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
use crate::backend::Backend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::{config_from_gguf, GgufFile};
use crate::weights::{SafetensorsDir, TensorSource};

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
    Gguf(GgufFile),
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

    /// Opens the weights (memory-mapped; nothing is read yet). A GGUF file
    /// is checked to hold only tensor types ferrolm reads.
    pub fn tensors(&self) -> Result<Tensors> {
        match self {
            Checkpoint::HfDir(dir) => SafetensorsDir::open(dir).map(Tensors::Safetensors),
            Checkpoint::Gguf(file) => {
                let gguf = GgufFile::open(file)?;
                gguf.check_supported_types()?;
                Ok(Tensors::Gguf(gguf))
            }
        }
    }

    /// The config and the opened weights, reading a GGUF file's header once.
    pub fn open(&self) -> Result<(Config, Tensors)> {
        match self.tensors()? {
            Tensors::Gguf(gguf) => Ok((config_from_gguf(&gguf)?, Tensors::Gguf(gguf))),
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
        let (mut config, tensors) = Checkpoint::resolve(path)?.open()?;
        if let Some(n) = max_seq_len {
            config.max_seq_len = n;
        }
        Self::from_source(config, backend, tensors.source())
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
