//! `_core.Session`: a conversation over one model, for `InferenceSession`.

use std::path::PathBuf;
use std::sync::Mutex;

use std::sync::Arc;

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::backend::cuda::Cuda;
use ferrolm_core::backend::OnDevice;
use ferrolm_core::model::{load_checkpoint, Checkpoint};
use ferrolm_core::{on_device, EngineConfig, Session as CoreSession};
use pyo3::prelude::*;

use crate::device;
use crate::errors::run;
use crate::sampling::Sampling;
use crate::values;

type AnySession = OnDevice<CoreSession<Cpu>, CoreSession<Cuda>>;

/// A token's id and log-probability with its top alternatives.
type TokenLogprobs = (u32, f32, Vec<(u32, f32)>);

/// Shareable between Python threads: calls take turns on a lock (taken
/// without the GIL where a call waits on the model). A conversation is one
/// sequence of turns, so concurrent users want one session each, or
/// `LLM` / `AsyncEngine`.
#[pyclass(module = "ferrolm._core", frozen)]
pub struct Session {
    /// The core session holds channel receivers (not `Sync`): the mutex makes it shareable.
    inner: Mutex<AnySession>,
}

impl Session {
    fn get(&self) -> std::sync::MutexGuard<'_, AnySession> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Session {
    /// Opens a model directory or `.gguf` file with its tokenizer; the
    /// engine settings not given keep `EngineConfig`'s defaults.
    #[staticmethod]
    #[pyo3(signature = (path, device, max_seq_len, dtype=None, quantize=None, kv_dtype=None, page_size=None, num_pages=None, max_batch_tokens=None, prefix_caching=None))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        max_seq_len: Option<usize>,
        dtype: Option<&str>,
        quantize: Option<&str>,
        kv_dtype: Option<&str>,
        page_size: Option<usize>,
        num_pages: Option<usize>,
        max_batch_tokens: Option<usize>,
        prefix_caching: Option<bool>,
    ) -> PyResult<Session> {
        let defaults = EngineConfig::default();
        let config = EngineConfig {
            page_size: page_size.unwrap_or(defaults.page_size),
            num_pages,
            max_batch_tokens: max_batch_tokens.unwrap_or(defaults.max_batch_tokens),
            prefix_caching: prefix_caching.unwrap_or(defaults.prefix_caching),
            ..defaults
        };
        run(py, || {
            config.validate()?;
            let options = device::load_options(device, dtype, quantize, kv_dtype, max_seq_len)?;
            let checkpoint = Checkpoint::resolve(&path)?;
            let tokenizer = checkpoint.tokenizer()?;
            let session = match load_checkpoint(&checkpoint, &options)? {
                OnDevice::Cpu(m) => OnDevice::Cpu(CoreSession::with_config(Arc::new(m), tokenizer, config)?),
                OnDevice::Cuda(m) => {
                    OnDevice::Cuda(CoreSession::with_config(Arc::new(m), tokenizer, config)?)
                }
            };
            Ok(Session { inner: Mutex::new(session) })
        })
    }

    #[pyo3(signature = (prompt, config, system_prompt=None))]
    fn start_turn(
        &self,
        py: Python<'_>,
        prompt: &str,
        config: Sampling,
        system_prompt: Option<&str>,
    ) -> PyResult<()> {
        let config = config.0;
        run(py, || on_device!(&mut *self.get(), |s| s.start_turn(prompt, config, system_prompt)))
    }

    fn start_completion(&self, py: Python<'_>, text: &str, config: Sampling) -> PyResult<()> {
        let config = config.0;
        run(py, || on_device!(&mut *self.get(), |s| s.start_completion(text, config)))
    }

    /// The next piece of text of the current turn, or None when it has ended.
    fn next_piece(&self, py: Python<'_>) -> PyResult<Option<String>> {
        run(py, || on_device!(&mut *self.get(), |s| s.next_piece()))
    }

    /// Runs the current turn to its end; returns its whole text.
    fn finish_turn(&self, py: Python<'_>) -> PyResult<String> {
        run(py, || on_device!(&mut *self.get(), |s| s.finish_turn()))
    }

    /// `(text, finish_reason, prompt_tokens, cached_tokens, completion_tokens)` of the last turn.
    fn last_turn(&self) -> Option<(String, &'static str, usize, usize, usize)> {
        on_device!(&*self.get(), |s| s.last_turn().cloned()).map(|t| {
            (t.text.clone(), t.finish.as_str(), t.prompt_tokens, t.cached_tokens, t.completion_tokens)
        })
    }

    /// Per output token of the last turn: `(id, logprob, [(alternative id, logprob), ...])`.
    fn last_logprobs(&self) -> Vec<TokenLogprobs> {
        on_device!(&*self.get(), |s| s.last_turn().cloned()).map_or_else(Vec::new, |t| {
            t.logprobs.iter().map(|s| (s.token, s.logprob, s.top_logprobs.clone())).collect()
        })
    }

    #[pyo3(signature = (prompt=None))]
    fn set_system_prompt(&self, prompt: Option<String>) {
        on_device!(&mut *self.get(), |s| s.set_system_prompt(prompt));
    }

    fn reset(&self) {
        on_device!(&mut *self.get(), |s| s.reset());
    }

    /// `(role, content)` of each message so far.
    fn history(&self) -> Vec<(String, String)> {
        on_device!(&*self.get(), |s| s.history().to_vec())
            .iter()
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect()
    }

    /// The model description as JSON text.
    fn model_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        values::to_py(py, &on_device!(&*self.get(), |s| s.model_info()))
    }
}
