//! `_core.Model`: a model plus its KV cache (on the CPU or a GPU), for Python's `Transformer`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::backend::cuda::Cuda;
use ferrolm_core::backend::Backend;
use ferrolm_core::backend::OnDevice;
use ferrolm_core::formats::HostTensor;
use ferrolm_core::model::{load, Logits, SeqInput};
use ferrolm_core::{generate, on_device, Error, KvCache, SamplingConfig, Transformer};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::config::parse;
use crate::device;
use crate::errors::{run, to_py};
use crate::sampling::Sampling;
use crate::tokens::token_rows;
use crate::values;

/// A model and the KV cache `forward` continues from.
pub(crate) struct Loaded<B: Backend> {
    /// Shared with the engine that `generate` runs.
    pub(crate) model: Arc<Transformer<B>>,
    cache: KvCache<B>,
}

impl<B: Backend> Loaded<B> {
    fn new(model: Transformer<B>, max_batch_size: usize) -> ferrolm_core::Result<Self> {
        let cache = model.new_cache(max_batch_size)?;
        Ok(Loaded { model: Arc::new(model), cache })
    }
}

type AnyLoaded = OnDevice<Loaded<Cpu>, Loaded<Cuda>>;

/// Shareable between Python threads: calls that use the cache (`forward`,
/// state loads) take turns on a lock, taken without the GIL; `generate`
/// runs its own engine over the shared model.
#[pyclass(module = "ferrolm._core", frozen)]
pub struct Model {
    inner: Mutex<AnyLoaded>,
    config: ferrolm_core::Config,
    device: String,
    max_batch_size: usize,
}

impl Model {
    fn wrap(inner: AnyLoaded, max_batch_size: usize) -> Model {
        let (config, device) = on_device!(&inner, |m| (m.model.config.clone(), m.model.device().to_string()));
        Model { inner: Mutex::new(inner), config, device, max_batch_size }
    }

    /// The model and cache, for one call at a time (call without the GIL).
    pub(crate) fn lock(&self) -> MutexGuard<'_, AnyLoaded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model alone, shared (the lock is held only to copy the handle).
    pub(crate) fn shared(&self) -> OnDevice<Arc<Transformer<Cpu>>, Arc<Transformer<Cuda>>> {
        match &*self.lock() {
            OnDevice::Cpu(m) => OnDevice::Cpu(Arc::clone(&m.model)),
            OnDevice::Cuda(m) => OnDevice::Cuda(Arc::clone(&m.model)),
        }
    }

    fn new(model: Transformer<Cpu>, max_batch_size: usize) -> ferrolm_core::Result<Model> {
        Ok(Model::wrap(OnDevice::Cpu(Loaded::new(model, max_batch_size)?), max_batch_size))
    }
}

/// Copies numpy float32 arrays into host tensors, keyed by name.
fn host_tensors(
    state: HashMap<String, PyReadonlyArrayDyn<'_, f32>>,
) -> PyResult<HashMap<String, HostTensor>> {
    state
        .into_iter()
        .map(|(name, array)| {
            let shape = array.shape().to_vec();
            let data = array.as_array().iter().copied().collect();
            Ok((name, HostTensor::new(shape, data).map_err(to_py)?))
        })
        .collect()
}

#[pymethods]
impl Model {
    /// Loads an HF model directory or a `.gguf` file onto `device`.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, device, max_seq_len, max_batch_size, dtype=None, quantize=None, kv_dtype=None))]
    fn from_pretrained(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        max_seq_len: Option<usize>,
        max_batch_size: usize,
        dtype: Option<&str>,
        quantize: Option<&str>,
        kv_dtype: Option<&str>,
    ) -> PyResult<Model> {
        run(py, || {
            let options = device::load_options(device, dtype, quantize, kv_dtype, max_seq_len)?;
            let inner = match load(&path, &options)? {
                OnDevice::Cpu(m) => OnDevice::Cpu(Loaded::new(m, max_batch_size)?),
                OnDevice::Cuda(m) => OnDevice::Cuda(Loaded::new(m, max_batch_size)?),
            };
            Ok(Model::wrap(inner, max_batch_size))
        })
    }

    /// A model with random weights (HF's initialisation), reproducible from `seed`.
    #[staticmethod]
    fn random(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        seed: u64,
        max_batch_size: usize,
    ) -> PyResult<Model> {
        let config = parse(config)?;
        run(py, || Model::new(Transformer::random(config, Cpu::default(), seed)?, max_batch_size))
    }

    /// A model built from a complete state dict of float32 arrays.
    #[staticmethod]
    fn from_state_dict(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        state: HashMap<String, PyReadonlyArrayDyn<'_, f32>>,
        max_batch_size: usize,
    ) -> PyResult<Model> {
        let config = parse(config)?;
        let tensors = host_tensors(state)?;
        run(py, || {
            Model::new(
                Transformer::from_source(config, Cpu::default(), &tensors, &Default::default())?,
                max_batch_size,
            )
        })
    }

    /// Replaces the parameters in `state`; with `strict`, all must be present.
    fn load_state_dict(
        &self,
        py: Python<'_>,
        state: HashMap<String, PyReadonlyArrayDyn<'_, f32>>,
        strict: bool,
    ) -> PyResult<()> {
        let tensors = host_tensors(state)?;
        run(py, || {
            on_device!(&mut *self.lock(), |m| Arc::get_mut(&mut m.model)
                .ok_or_else(|| Error::InvalidInput("the model is in use by a running generation".into()))?
                .load_state(&tensors, strict))
        })
    }

    /// Logits `[batch, keep, vocab]` for equal-length sequences continuing at
    /// `start_pos` (the last `keep` positions; 0: all).
    #[pyo3(signature = (sequences, start_pos, keep=0))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        sequences: Vec<Vec<i64>>,
        start_pos: usize,
        keep: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (batch, len) = (sequences.len(), sequences.first().map_or(0, Vec::len));
        let rows = if keep == 0 { len } else { keep.min(len) };
        let vocab = self.config.vocab_size;
        let logits = run(py, || {
            let sequences = token_rows(sequences)?;
            if sequences.is_empty() {
                return Err(Error::InvalidInput("empty batch: pass at least one sequence".into()));
            }
            on_device!(&mut *self.lock(), |m| m.model.forward_rectangular(
                &mut m.cache,
                &sequences,
                start_pos,
                keep
            ))
        })?;
        Ok(PyArray1::from_vec(py, logits).reshape([batch, rows, vocab])?.into_any())
    }

    /// Logits `[total tokens, vocab]` of a ragged batch: for each item
    /// `(slot, start_pos, tokens)`, `tokens` continue cache row `slot` at
    /// `start_pos` (rows need not share lengths or positions).
    fn forward_ragged<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(usize, usize, Vec<i64>)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let total: usize = items.iter().map(|(_, _, t)| t.len()).sum();
        let vocab = self.config.vocab_size;
        let logits = run(py, || {
            let (slots, tokens): (Vec<(usize, usize)>, Vec<Vec<i64>>) =
                items.into_iter().map(|(slot, start, t)| ((slot, start), t)).unzip();
            let tokens = token_rows(tokens)?;
            let batch: Vec<SeqInput> = slots
                .iter()
                .zip(&tokens)
                .map(|(&(seq, start_pos), tokens)| SeqInput { seq, start_pos, tokens })
                .collect();
            on_device!(&mut *self.lock(), |m| m.model.forward(&mut m.cache, &batch, Logits::All))
        })?;
        Ok(PyArray1::from_vec(py, logits).reshape([total, vocab])?.into_any())
    }

    /// Continues each prompt under a full `SamplingConfig` (JSON), through
    /// the engine; returns each prompt's new tokens.
    fn generate_with(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<i64>>,
        sampling: Sampling,
    ) -> PyResult<Vec<Vec<u32>>> {
        let config = sampling.0;
        let out = run(py, || {
            let prompts = token_rows(prompts)?;
            on_device!(self.shared(), |m| generate(&m, &prompts, &config, false))
        })?;
        Ok(out.into_iter().map(|g| g.tokens).collect())
    }

    /// Meta-style sampling (temperature and top-p only): for each prompt its
    /// new tokens, their log-probabilities and, if asked, the prompt's.
    #[pyo3(signature = (prompts, max_new_tokens, temperature, top_p, seed, prompt_logprobs))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<i64>>,
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        seed: Option<u64>,
        prompt_logprobs: bool,
    ) -> PyResult<Vec<(Vec<u32>, Vec<f32>, Option<Vec<f32>>)>> {
        let config = SamplingConfig::temperature_top_p(temperature, top_p, max_new_tokens, seed);
        let out = run(py, || {
            let prompts = token_rows(prompts)?;
            if prompts.len() > self.max_batch_size {
                return Err(Error::InvalidInput(format!(
                    "{} prompts but max_batch_size is {}",
                    prompts.len(),
                    self.max_batch_size
                )));
            }
            on_device!(self.shared(), |m| generate(&m, &prompts, &config, prompt_logprobs))
        })?;
        Ok(out.into_iter().map(|g| (g.tokens, g.logprobs, g.prompt_logprobs)).collect())
    }

    /// The canonical config, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        values::to_py(py, &self.config.to_json())
    }

    #[getter]
    fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }
}
