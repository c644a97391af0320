//! OpenAI tool calling over any chat model: the request's `tools` and
//! `tool_choice` ([`spec`]), the format the model speaks ([`format`]: Hermes
//! blocks, Llama 3.1 JSON, or a generic prompt for templates that ignore
//! tools), the conversation made ready for the template ([`ToolCalling::prepare_messages`]),
//! a grammar forcing calls when they are required ([`ToolCalling::constraint`])
//! and the reply parsed back into content and calls, whole or streamed
//! ([`ToolCalling::parse`], [`ToolStreamParser`]).
//!
//! ```
//! use ferrolm_core::tools::{ToolCalling, ToolFormat};
//! use serde_json::json;
//!
//! let tools = json!([{"type": "function", "function": {"name": "get_weather",
//!     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
//! let calling = ToolCalling::from_request(Some("{{ '<tool_call>' }}"), &tools, None, true)?;
//! assert_eq!(calling.format(), ToolFormat::Hermes);
//! let out = calling.parse("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>");
//! assert_eq!(out.calls[0].arguments, r#"{"city":"Paris"}"#);
//! # Ok::<(), ferrolm_core::Error>(())
//! ```

mod call;
pub mod format;
mod grammar;
mod json_text;
mod llama;
mod messages;
mod output;
mod prompt;
pub mod spec;
mod stream;
mod tagged;

use serde_json::{json, Value as Json};

pub use self::call::{new_call_id, ToolCall};
pub use self::format::ToolFormat;
pub use self::output::{ParsedOutput, ToolEvent};
pub use self::spec::{parse_tools, Tool, ToolChoice};
pub use self::stream::ToolStreamParser;
use crate::error::{Error, Result};
use crate::sampling::Constraint;

/// Tool calling for one request: its tools and choice in the model's format.
#[derive(Debug, Clone)]
pub struct ToolCalling {
    format: ToolFormat,
    tools: Vec<Tool>,
    choice: ToolChoice,
    parallel_tool_calls: bool,
}

impl ToolCalling {
    /// Tool calling in `format`. A `choice` that needs tools the list does
    /// not have is refused (as [`ToolChoice::parse`] does).
    pub fn new(
        format: ToolFormat,
        tools: Vec<Tool>,
        choice: ToolChoice,
        parallel_tool_calls: bool,
    ) -> Result<ToolCalling> {
        match &choice {
            ToolChoice::Required if tools.is_empty() => {
                return Err(Error::InvalidInput("`tool_choice` \"required\" needs at least one tool".into()));
            }
            ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => {
                return Err(Error::InvalidInput(format!(
                    "`tool_choice.function.name` {name:?} is not one of the tools in `tools`"
                )));
            }
            _ => {}
        }
        Ok(ToolCalling { format, tools, choice, parallel_tool_calls })
    }

    /// From an OpenAI request: the chat template's source (for the format),
    /// `tools`, `tool_choice` (absent: `auto`) and `parallel_tool_calls`.
    pub fn from_request(
        template_source: Option<&str>,
        tools: &Json,
        tool_choice: Option<&Json>,
        parallel_tool_calls: bool,
    ) -> Result<ToolCalling> {
        let tools = parse_tools(tools)?;
        let choice = ToolChoice::parse(tool_choice, &tools)?;
        ToolCalling::new(ToolFormat::detect(template_source), tools, choice, parallel_tool_calls)
    }

    pub fn format(&self) -> ToolFormat {
        self.format
    }

    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    pub fn choice(&self) -> &ToolChoice {
        &self.choice
    }

    pub fn parallel_tool_calls(&self) -> bool {
        self.parallel_tool_calls
    }

    /// Whether the model sees the tools at all (not with `tool_choice: none`).
    fn offered(&self) -> bool {
        self.choice != ToolChoice::None && !self.tools.is_empty()
    }

    /// Makes an OpenAI conversation ready for the chat template: assistant
    /// calls' `arguments` parsed from JSON text into objects (invalid JSON
    /// is [`Error::InvalidInput`] naming the message), and for the generic
    /// format the tools described in a system prompt, calls and results
    /// rewritten as plain text.
    pub fn prepare_messages(&self, messages: &mut Vec<Json>) -> Result<()> {
        let system_prompt = (self.format == ToolFormat::Generic && self.offered())
            .then(|| prompt::generic_system_prompt(&self.tools, &self.choice, self.parallel_tool_calls));
        messages::prepare(self.format, system_prompt, messages)
    }

    /// The extra template variables: `{"tools": [...]}` (OpenAI's shape) for
    /// templates that render tools themselves, `{}` otherwise; and, when a
    /// call is forced, `enable_thinking: false` (Qwen3's switch): the
    /// grammar starts the reply with the call, so the prompt must not open
    /// a thinking block.
    pub fn template_kwargs(&self) -> Json {
        let mut kwargs = json!({});
        if self.offered() && self.format != ToolFormat::Generic {
            kwargs["tools"] = json!(self.tools.iter().map(Tool::to_openai).collect::<Vec<_>>());
        }
        if matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_)) {
            kwargs["enable_thinking"] = json!(false);
        }
        kwargs
    }

    /// The grammar forcing calls for `required` and a named tool; `None`
    /// (free text, parsed afterwards) for `auto` and `none`.
    pub fn constraint(&self) -> Option<Constraint> {
        let tools: Vec<&Tool> = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Required => self.tools.iter().collect(),
            ToolChoice::Named(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
        };
        Some(Constraint::Grammar(grammar::forced_calls(self.format, &tools, self.parallel_tool_calls)))
    }

    /// Splits a whole reply into content and calls (see [`ToolStreamParser`]
    /// for the rules; this is the same parser fed everything at once).
    pub fn parse(&self, text: &str) -> ParsedOutput {
        let mut parser = self.stream_parser();
        let mut events = parser.push(text);
        events.extend(parser.finish());
        ParsedOutput::from_events(events)
    }

    /// A parser for the reply as it streams.
    pub fn stream_parser(&self) -> ToolStreamParser {
        let names =
            if self.offered() { self.tools.iter().map(|t| t.name.clone()).collect() } else { Vec::new() };
        ToolStreamParser::new(self.format, names)
    }
}
