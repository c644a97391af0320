//! `_core.Engine`: the serving engine on its own thread, for `ferrolm.LLM`
//! and the server.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ferrolm_core::engine::{
    Engine as CoreEngine, EngineClient, EngineConfig, GenerationRequest, Output, OutputKind,
};
use ferrolm_core::model::load_with_tokenizer;
use ferrolm_core::on_device;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::device;
use crate::errors::{run, to_py};
use crate::sampling::Sampling;
use crate::tokens::token_ids;
use crate::values;

/// One message from the engine about one request: `kind` is "token" (one
/// generated token and the text it completes), "finished" (`finish_reason`,
/// `usage`, any held-back `text`) or "failed" (`error` is the exception).
#[pyclass(module = "ferrolm._core", name = "EngineOutput", frozen, get_all)]
pub struct PyOutput {
    request_id: u64,
    /// Which sample of an `n > 1` group.
    index: usize,
    kind: &'static str,
    token: Option<u32>,
    text: String,
    logprob: Option<f32>,
    top_logprobs: Vec<(u32, f32)>,
    finish_reason: Option<&'static str>,
    /// `(prompt_tokens, cached_tokens, completion_tokens)`.
    usage: Option<(usize, usize, usize)>,
    prompt_logprobs: Option<Vec<f32>>,
    error: Option<Py<PyAny>>,
}

#[pymethods]
impl PyOutput {
    fn __repr__(&self) -> String {
        format!(
            "EngineOutput(request_id={}, index={}, kind={:?}, token={:?}, text={:?}, finish_reason={:?})",
            self.request_id, self.index, self.kind, self.token, self.text, self.finish_reason
        )
    }
}

fn convert(py: Python<'_>, output: Output) -> PyOutput {
    let mut out = PyOutput {
        request_id: output.request,
        index: output.index,
        kind: "token",
        token: None,
        text: String::new(),
        logprob: None,
        top_logprobs: Vec::new(),
        finish_reason: None,
        usage: None,
        prompt_logprobs: None,
        error: None,
    };
    match output.kind {
        OutputKind::Token { sampled, text } => {
            (out.token, out.logprob, out.top_logprobs, out.text) =
                (Some(sampled.token), Some(sampled.logprob), sampled.top_logprobs, text);
        }
        OutputKind::Finished { reason, text, usage, prompt_logprobs } => {
            out.kind = "finished";
            out.text = text;
            out.finish_reason = Some(reason.as_str());
            out.usage = Some((usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens));
            out.prompt_logprobs = prompt_logprobs;
        }
        OutputKind::Failed(e) => {
            out.kind = "failed";
            out.error = Some(to_py(e).into_value(py).into_any());
        }
    }
    out
}

#[pyclass(module = "ferrolm._core")]
pub struct Engine {
    client: EngineClient,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Every request's outputs arrive here, in order.
    sink: Sender<Output>,
    outputs: Mutex<Receiver<Output>>,
    info: serde_json::Value,
}

#[pymethods]
impl Engine {
    /// Loads a model directory or `.gguf` file with its tokenizer and starts
    /// the engine thread.
    #[staticmethod]
    #[pyo3(signature = (path, device, max_seq_len, page_size, num_pages, kv_cache_bytes, max_num_seqs, max_batch_tokens, prefix_caching, dtype=None, quantize=None, kv_dtype=None, max_waiting=None))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        max_seq_len: Option<usize>,
        page_size: usize,
        num_pages: Option<usize>,
        kv_cache_bytes: usize,
        max_num_seqs: usize,
        max_batch_tokens: usize,
        prefix_caching: bool,
        dtype: Option<&str>,
        quantize: Option<&str>,
        kv_dtype: Option<&str>,
        max_waiting: Option<usize>,
    ) -> PyResult<Engine> {
        let config = EngineConfig {
            page_size,
            num_pages,
            kv_cache_bytes,
            max_num_seqs,
            max_batch_tokens,
            prefix_caching,
            max_waiting,
        };
        run(py, || {
            let options = device::load_options(device, dtype, quantize, kv_dtype, max_seq_len)?;
            let (model, tokenizer) = load_with_tokenizer(&path, &options)?;
            let (info, (client, thread)) = on_device!(model, |m| {
                let engine = CoreEngine::new(Arc::new(m), tokenizer, config)?;
                (engine.model_info(), engine.spawn())
            });
            let (sink, outputs) = channel();
            Ok(Engine { client, thread: Mutex::new(Some(thread)), sink, outputs: Mutex::new(outputs), info })
        })
    }

    /// Queues `n` samples of a tokenized prompt (the prompt is computed
    /// once; sample `i` draws from random stream `stream + i`); returns
    /// their request ids in sample order.
    #[pyo3(signature = (prompt, sampling, n=1, stream=0, prompt_logprobs=false))]
    fn add_request(
        &self,
        prompt: Vec<i64>,
        sampling: Sampling,
        n: usize,
        stream: u64,
        prompt_logprobs: bool,
    ) -> PyResult<Vec<u64>> {
        let prompt = token_ids(prompt).map_err(to_py)?;
        let request = GenerationRequest { prompt, sampling: sampling.0, stream, prompt_logprobs };
        self.client.add_request_group(request, n, self.sink.clone()).map_err(to_py)
    }

    /// Cancels a request (its pages are freed at the engine's next step).
    fn abort(&self, request_id: u64) {
        self.client.abort(request_id);
    }

    /// Holds the engine between two steps; returns once it is held (see
    /// `EngineClient::pause`).
    fn pause(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.client.pause()).map_err(to_py)
    }

    /// On a held engine, runs exactly `steps` steps, then holds it again.
    fn step(&self, py: Python<'_>, steps: usize) -> PyResult<()> {
        py.detach(|| self.client.step(steps)).map_err(to_py)
    }

    /// Lets a held engine run on.
    fn resume(&self) {
        self.client.resume();
    }

    /// Waits up to `timeout` seconds for outputs (without the GIL), then
    /// returns every output ready, up to `max_outputs`.
    #[pyo3(signature = (timeout, max_outputs=4096))]
    fn poll(&self, py: Python<'_>, timeout: f64, max_outputs: usize) -> PyResult<Vec<PyOutput>> {
        let outputs = py.detach(|| {
            let rx = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
            let mut got = Vec::new();
            match rx.recv_timeout(Duration::from_secs_f64(timeout.max(0.0))) {
                Ok(o) => got.push(o),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return got,
            }
            while got.len() < max_outputs {
                match rx.try_recv() {
                    Ok(o) => got.push(o),
                    Err(_) => break,
                }
            }
            got
        });
        Ok(outputs.into_iter().map(|o| convert(py, o)).collect())
    }

    /// The engine's counters as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.client.stats();
        let d = PyDict::new(py);
        d.set_item("running", s.running)?;
        d.set_item("waiting", s.waiting)?;
        crate::kv::set_page_counts(&d, &s.pool)?;
        d.set_item("page_size", s.page_size)?;
        d.set_item("prefix_queries", s.pool.prefix_queries)?;
        d.set_item("prefix_hits", s.pool.prefix_hits)?;
        d.set_item("requests_added", s.requests_added)?;
        d.set_item("requests_finished", s.requests_finished)?;
        d.set_item("prompt_tokens", s.prompt_tokens)?;
        d.set_item("cached_prompt_tokens", s.cached_prompt_tokens)?;
        d.set_item("generation_tokens", s.generation_tokens)?;
        d.set_item("preemptions", s.preemptions)?;
        d.set_item("queued", s.queued)?;
        Ok(d)
    }

    /// The model description as JSON text.
    fn model_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        values::to_py(py, &self.info)
    }

    #[getter]
    fn max_seq_len(&self) -> usize {
        self.client.max_seq_len()
    }

    /// Cancels everything and stops the engine thread (idempotent).
    fn shutdown(&self, py: Python<'_>) {
        self.client.shutdown();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            py.detach(|| {
                let _ = t.join();
            });
        }
    }

    /// Why the engine thread failed, once it has (None while it runs and
    /// after a plain shutdown).
    #[getter]
    fn failure(&self) -> Option<String> {
        self.client.failure()
    }

    #[getter]
    fn is_running(&self) -> bool {
        self.thread.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.client.shutdown();
    }
}
