//! What parsing a reply yields: [`ToolEvent`]s as it streams, a
//! [`ParsedOutput`] for the whole of it.

use super::call::ToolCall;

/// What a piece of the reply turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text for the user (`delta.content`).
    Content(String),
    /// A complete call (`delta.tool_calls`).
    Call(ToolCall),
}

/// A whole reply split into content and calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedOutput {
    /// The text outside calls, trimmed; `None` when nothing is left.
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

impl ParsedOutput {
    /// Gathers a parser's events.
    pub fn from_events(events: impl IntoIterator<Item = ToolEvent>) -> ParsedOutput {
        let mut content = String::new();
        let mut calls = Vec::new();
        for event in events {
            match event {
                ToolEvent::Content(text) => content.push_str(&text),
                ToolEvent::Call(call) => calls.push(call),
            }
        }
        ParsedOutput { content: (!content.is_empty()).then_some(content), calls }
    }
}
