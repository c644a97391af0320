//! Llama 3.1's tool calls in streamed text: the whole reply (after an
//! optional `<|python_tag|>`) is one JSON object `{"name", "parameters"}`,
//! or several separated by `;`, or it is plain text. A reply that starts
//! like JSON is held until it either stops being a possible call sequence
//! (then it is released as text) or ends (then it is calls or text).

use serde::de::IgnoredAny;
use serde_json::Deserializer;

use super::call::{call_from_text, ToolCall};
use super::output::ToolEvent;

pub(crate) const PYTHON_TAG: &str = "<|python_tag|>";

#[derive(Debug, Default)]
enum State {
    /// Nothing but whitespace or the beginning of `<|python_tag|>` yet.
    #[default]
    Start,
    /// Starts like a call: held until decided.
    Candidate,
    /// Plain text: released as it comes.
    Text,
}

#[derive(Debug, Default)]
pub(crate) struct LlamaScanner {
    held: String,
    state: State,
}

/// How far a text is from being a call sequence.
enum Scan {
    Calls(Vec<ToolCall>),
    /// Could still become calls with more text.
    Incomplete,
    /// Can never be calls.
    Invalid,
}

impl LlamaScanner {
    pub(crate) fn push(&mut self, delta: &str, names: &[String], out: &mut Vec<ToolEvent>) {
        if let State::Text = self.state {
            out.push(ToolEvent::Content(delta.to_string()));
            return;
        }
        self.held.push_str(delta);
        if let State::Start = self.state {
            let start = self.held.trim_start();
            if start.is_empty() || (PYTHON_TAG.starts_with(start) && start.len() < PYTHON_TAG.len()) {
                return;
            }
            self.state = if start.starts_with('{') || start.starts_with(PYTHON_TAG) {
                State::Candidate
            } else {
                State::Text
            };
        }
        if let State::Candidate = self.state {
            if !matches!(scan(&self.held, names), Scan::Invalid) {
                return;
            }
            self.state = State::Text;
        }
        out.push(ToolEvent::Content(std::mem::take(&mut self.held)));
    }

    pub(crate) fn finish(&mut self, names: &[String], out: &mut Vec<ToolEvent>) {
        let held = std::mem::take(&mut self.held);
        let state = std::mem::take(&mut self.state);
        if let (State::Candidate, Scan::Calls(calls)) = (state, scan(&held, names)) {
            out.extend(calls.into_iter().map(ToolEvent::Call));
        } else if !held.is_empty() {
            out.push(ToolEvent::Content(held));
        }
    }
}

/// Reads `text` as `[<|python_tag|>] call (; call)* [;]` with whitespace
/// anywhere between.
fn scan(text: &str, names: &[String]) -> Scan {
    let mut rest = text.trim_start();
    rest = rest.strip_prefix(PYTHON_TAG).unwrap_or(rest);
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return if calls.is_empty() { Scan::Incomplete } else { Scan::Calls(calls) };
        }
        if !rest.starts_with('{') {
            return Scan::Invalid;
        }
        // Where the first value ends (or why it does not).
        let mut values = Deserializer::from_str(rest).into_iter::<IgnoredAny>();
        match values.next() {
            Some(Ok(_)) => {}
            Some(Err(e)) if e.is_eof() => return Scan::Incomplete,
            _ => return Scan::Invalid,
        }
        let (value, after) = rest.split_at(values.byte_offset());
        match call_from_text(value, names) {
            Some(call) => calls.push(call),
            None => return Scan::Invalid,
        }
        rest = after.trim_start();
        if rest.is_empty() {
            return Scan::Calls(calls);
        }
        match rest.strip_prefix(';') {
            Some(after) => rest = after,
            None => return Scan::Invalid,
        }
    }
}
