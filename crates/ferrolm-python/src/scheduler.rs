//! `_core.SteppedScheduler`: the engine's scheduler driven step by step
//! (for `ferrolm.mili.ContinuousBatchScheduler`). Converts arguments and
//! results; the policy is the core's `SteppedScheduler`.

use std::sync::Mutex;

use ferrolm_core::engine::{Phase, RequestStatus, SteppedConfig, SteppedScheduler as Core};
use ferrolm_core::{KvLayout, SamplingConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::run;

/// One work item for Python: `(request, start_pos, tokens, pages, phase, wants_token)`,
/// `phase` being "prefill" or "decode".
type PyWork = (u64, usize, Vec<u32>, Vec<u32>, &'static str, bool);

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Prefill => "prefill",
        Phase::Decode => "decode",
    }
}

#[pyclass(module = "ferrolm._core")]
pub struct SteppedScheduler {
    inner: Mutex<Core>,
}

impl SteppedScheduler {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Core) -> ferrolm_core::Result<T> + Send,
    ) -> PyResult<T> {
        run(py, || f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

#[pymethods]
impl SteppedScheduler {
    #[new]
    #[pyo3(signature = (max_num_seqs, max_batch_tokens, max_admissions, page_size, num_pages, max_seq_len, eos_token_ids))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_num_seqs: usize,
        max_batch_tokens: usize,
        max_admissions: usize,
        page_size: usize,
        num_pages: usize,
        max_seq_len: usize,
        eos_token_ids: Vec<u32>,
    ) -> PyResult<Self> {
        let config = SteppedConfig {
            max_num_seqs,
            max_batch_tokens,
            max_admissions,
            layout: KvLayout { page_size, num_pages },
            max_seq_len,
            eos_token_ids,
        };
        let inner = Core::new(config).map_err(crate::errors::to_py)?;
        Ok(SteppedScheduler { inner: Mutex::new(inner) })
    }

    /// Queues a request; returns its id. The sampling knobs are validated by the core.
    #[allow(clippy::too_many_arguments)]
    fn add_request(
        &self,
        py: Python<'_>,
        prompt: Vec<u32>,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        stop_token_ids: Vec<u32>,
    ) -> PyResult<u64> {
        let mut sampling = SamplingConfig::temperature_top_p(temperature, top_p, max_tokens, Some(0));
        sampling.top_k = top_k;
        sampling.stop_token_ids = stop_token_ids;
        self.with(py, |s| s.add_request(prompt, sampling))
    }

    /// The next batch as `[(request, start_pos, tokens, pages, phase, wants_token)]`.
    fn next_batch(&self, py: Python<'_>) -> PyResult<Vec<PyWork>> {
        let batch = self.with(py, |s| s.next_batch())?;
        Ok(batch
            .into_iter()
            .map(|w| (w.request, w.start_pos, w.tokens, w.pages, phase_name(w.phase), w.wants_token))
            .collect())
    }

    fn update(&self, py: Python<'_>, request: u64, token: u32) -> PyResult<()> {
        self.with(py, |s| s.update(request, token))
    }

    /// Cancels a waiting or running request; False if it is neither.
    fn abort(&self, py: Python<'_>, request: u64) -> PyResult<bool> {
        self.with(py, |s| s.abort(request))
    }

    /// `{"state": "waiting"|"running", "phase", "generated", "remaining"}` or
    /// `{"state": "finished", "finish_reason", "generated"}`; None if unknown.
    fn status<'py>(&self, py: Python<'py>, request: u64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(status) = self.with(py, |s| Ok(s.status(request)))? else { return Ok(None) };
        let d = PyDict::new(py);
        match status {
            RequestStatus::Processing { phase, waiting, generated, remaining } => {
                d.set_item("state", if waiting { "waiting" } else { "running" })?;
                d.set_item("phase", phase_name(phase))?;
                d.set_item("generated", generated)?;
                d.set_item("remaining", remaining)?;
            }
            RequestStatus::Finished { reason, generated } => {
                d.set_item("state", "finished")?;
                d.set_item("finish_reason", reason.as_str())?;
                d.set_item("generated", generated)?;
            }
        }
        Ok(Some(d))
    }

    /// `(prompt + generated tokens, prompt length)` of a waiting or running request.
    fn tokens(&self, py: Python<'_>, request: u64) -> PyResult<Option<(Vec<u32>, usize)>> {
        self.with(py, |s| Ok(s.tokens(request).map(|(t, n)| (t.to_vec(), n))))
    }

    /// The block table of a waiting (empty) or running request.
    fn pages(&self, py: Python<'_>, request: u64) -> PyResult<Option<Vec<u32>>> {
        self.with(py, |s| Ok(s.pages(request).map(<[u32]>::to_vec)))
    }

    /// A finished request's `{"prompt", "generated", "finish_reason",
    /// "cached_tokens", "elapsed"}` (seconds); with `take`, the result is
    /// removed and the id forgotten. None if it has not finished.
    #[pyo3(signature = (request, take=false))]
    fn completed<'py>(
        &self,
        py: Python<'py>,
        request: u64,
        take: bool,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let done = self
            .with(py, |s| Ok(if take { s.take_completed(request) } else { s.completed(request).cloned() }))?;
        let Some(done) = done else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("prompt", done.prompt)?;
        d.set_item("generated", done.generated)?;
        d.set_item("finish_reason", done.reason.as_str())?;
        d.set_item("cached_tokens", done.cached_tokens)?;
        d.set_item("elapsed", done.elapsed.as_secs_f64())?;
        Ok(Some(d))
    }

    /// `{"waiting", "running", "preemptions", "total_pages", "used_pages", "cached_pages", "free_pages",
    /// "available_pages"}` (the pool's counts as the core's `PoolStats` defines them).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (waiting, running, preemptions, pool) =
            self.with(py, |s| Ok((s.num_waiting(), s.num_running(), s.preemptions(), s.tables().stats())))?;
        let d = PyDict::new(py);
        d.set_item("waiting", waiting)?;
        d.set_item("running", running)?;
        d.set_item("preemptions", preemptions)?;
        crate::kv::set_page_counts(&d, &pool)?;
        Ok(d)
    }
}
