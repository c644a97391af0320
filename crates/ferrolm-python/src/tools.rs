//! `_core.ToolCalling` and `_core.ToolStreamParser`: the core's OpenAI tool
//! calling for the server. JSON crosses as text; calls cross as
//! `(id, name, arguments)` tuples.

use ferrolm_core::tools::{
    ToolCall, ToolCalling as CoreToolCalling, ToolEvent, ToolStreamParser as CoreToolStreamParser,
};
use ferrolm_core::Error;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use serde_json::Value;

use crate::errors::run;

/// Registers the classes of this module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ToolCalling>()?;
    m.add_class::<ToolStreamParser>()?;
    Ok(())
}

/// `(id, name, arguments)`.
type Call = (String, String, String);

fn call_tuple(call: ToolCall) -> Call {
    (call.id, call.name, call.arguments)
}

/// JSON text to a value; `what` names the argument in the error.
fn json_arg(text: &str, what: &str) -> ferrolm_core::Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::InvalidInput(format!("`{what}` is not valid JSON: {e}")))
}

/// `[("content", text) | ("call", (id, name, arguments))]`.
fn events_list(py: Python<'_>, events: Vec<ToolEvent>) -> PyResult<Vec<(&'static str, Bound<'_, PyAny>)>> {
    events
        .into_iter()
        .map(|event| match event {
            ToolEvent::Content(text) => Ok(("content", text.into_bound_py_any(py)?)),
            ToolEvent::Call(call) => Ok(("call", call_tuple(call).into_bound_py_any(py)?)),
        })
        .collect()
}

#[pyclass(module = "ferrolm._core")]
pub struct ToolCalling {
    inner: CoreToolCalling,
}

#[pymethods]
impl ToolCalling {
    /// From a request's `tools` and `tool_choice` (JSON text; `None`: auto)
    /// and the model's chat template source (for the format). ValueError on
    /// bad tools or choices.
    #[new]
    #[pyo3(signature = (template_source, tools_json, tool_choice_json, parallel_tool_calls))]
    fn new(
        py: Python<'_>,
        template_source: Option<&str>,
        tools_json: &str,
        tool_choice_json: Option<&str>,
        parallel_tool_calls: bool,
    ) -> PyResult<ToolCalling> {
        run(py, || {
            let tools = json_arg(tools_json, "tools")?;
            let choice = tool_choice_json.map(|text| json_arg(text, "tool_choice")).transpose()?;
            let inner =
                CoreToolCalling::from_request(template_source, &tools, choice.as_ref(), parallel_tool_calls)?;
            Ok(ToolCalling { inner })
        })
    }

    /// "hermes", "llama3_json" or "generic".
    #[getter]
    fn format(&self) -> &'static str {
        self.inner.format().name()
    }

    /// The messages (a JSON list) made ready for the chat template, as JSON.
    fn prepare_messages(&self, py: Python<'_>, messages_json: &str) -> PyResult<String> {
        run(py, || {
            let mut messages: Vec<Value> = serde_json::from_str(messages_json).map_err(|e| {
                Error::InvalidInput(format!("`messages` must be a JSON list of messages: {e}"))
            })?;
            self.inner.prepare_messages(&mut messages)?;
            serde_json::to_string(&messages).map_err(|e| Error::Internal(e.to_string()))
        })
    }

    /// The extra chat template variables, a JSON object.
    fn template_kwargs(&self) -> String {
        self.inner.template_kwargs().to_string()
    }

    /// The constraint forcing calls as JSON (`{"grammar": ...}`), or None.
    fn constraint(&self, py: Python<'_>) -> PyResult<Option<String>> {
        run(py, || {
            self.inner
                .constraint()
                .map(|c| serde_json::to_string(&c).map_err(|e| Error::Internal(e.to_string())))
                .transpose()
        })
    }

    /// `(content or None, [(id, name, arguments), ...])`.
    fn parse(&self, py: Python<'_>, text: &str) -> PyResult<(Option<String>, Vec<Call>)> {
        let out = run(py, || Ok(self.inner.parse(text)))?;
        Ok((out.content, out.calls.into_iter().map(call_tuple).collect()))
    }

    fn stream_parser(&self) -> ToolStreamParser {
        ToolStreamParser { inner: self.inner.stream_parser() }
    }
}

#[pyclass(module = "ferrolm._core")]
pub struct ToolStreamParser {
    inner: CoreToolStreamParser,
}

#[pymethods]
impl ToolStreamParser {
    /// Takes the next text delta: `[("content", text) | ("call", (id, name, arguments))]`.
    fn push<'py>(
        &mut self,
        py: Python<'py>,
        delta: &str,
    ) -> PyResult<Vec<(&'static str, Bound<'py, PyAny>)>> {
        let events = run(py, || Ok(self.inner.push(delta)))?;
        events_list(py, events)
    }

    /// The end of the reply: what was still held back, as `push` returns it.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Vec<(&'static str, Bound<'py, PyAny>)>> {
        let events = run(py, || Ok(self.inner.finish()))?;
        events_list(py, events)
    }
}
