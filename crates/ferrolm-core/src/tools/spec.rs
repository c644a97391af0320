//! The request side of tool calling: OpenAI's `tools` list and `tool_choice`,
//! validated into [`Tool`]s and a [`ToolChoice`]. Every refusal is
//! [`Error::InvalidInput`] naming the field (`tools[2].function.name`), so a
//! server can answer 400 with it as is.

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// `[A-Za-z0-9_-]{1,64}`, unique within the request.
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments object.
    pub parameters: Json,
}

impl Tool {
    /// The tool in OpenAI's shape, `{"type": "function", "function": {...}}`:
    /// what Hermes and Llama 3.1 templates read.
    pub fn to_openai(&self) -> Json {
        json!({"type": "function", "function": self.function_json()})
    }

    /// `{"name", "description"?, "parameters"}`: the function object alone.
    pub fn function_json(&self) -> Json {
        let mut function = serde_json::Map::new();
        function.insert("name".into(), Json::String(self.name.clone()));
        if let Some(description) = &self.description {
            function.insert("description".into(), Json::String(description.clone()));
        }
        function.insert("parameters".into(), self.parameters.clone());
        Json::Object(function)
    }
}

/// OpenAI's function-name rule: 1 to 64 of `[A-Za-z0-9_-]`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads OpenAI's `tools`: `[{"type": "function", "function": {"name",
/// "description", "parameters"}}]`. Refuses anything but a list of function
/// tools with distinct valid names and object schemas; missing
/// `parameters` stand for a function without arguments.
pub fn parse_tools(tools: &Json) -> Result<Vec<Tool>> {
    let invalid = |msg: String| Error::InvalidInput(msg);
    let Json::Array(items) = tools else {
        return Err(invalid(format!("`tools` must be a list of tools, not {}", kind(tools))));
    };
    let mut out: Vec<Tool> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Json::Object(fields) = item else {
            return Err(invalid(format!("`{at}` must be an object, not {}", kind(item))));
        };
        match fields.get("type") {
            Some(Json::String(t)) if t == "function" => {}
            Some(other) => {
                return Err(invalid(format!("`{at}.type` must be \"function\", not {other}")));
            }
            None => return Err(invalid(format!("`{at}.type` is missing (it must be \"function\")"))),
        }
        let Some(Json::Object(function)) = fields.get("function") else {
            return Err(invalid(format!("`{at}.function` must be an object with a `name`")));
        };
        let name = match function.get("name") {
            Some(Json::String(name)) if valid_name(name) => name.clone(),
            Some(Json::String(name)) if name.is_empty() => {
                return Err(invalid(format!("`{at}.function.name` is empty")));
            }
            Some(Json::String(name)) => {
                return Err(invalid(format!(
                    "`{at}.function.name` {name:?} must be 1 to 64 letters, digits, '_' or '-'"
                )));
            }
            Some(other) => {
                return Err(invalid(format!("`{at}.function.name` must be a string, not {}", kind(other))));
            }
            None => return Err(invalid(format!("`{at}.function.name` is missing"))),
        };
        if out.iter().any(|t| t.name == name) {
            return Err(invalid(format!("`{at}.function.name`: two tools are named {name:?}")));
        }
        let description = match function.get("description") {
            None | Some(Json::Null) => None,
            Some(Json::String(d)) => Some(d.clone()),
            Some(other) => {
                return Err(invalid(format!(
                    "`{at}.function.description` must be a string, not {}",
                    kind(other)
                )));
            }
        };
        let parameters = match function.get("parameters") {
            None | Some(Json::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Json::Object(_)) => p.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "`{at}.function.parameters` must be a JSON schema object, not {}",
                    kind(other)
                )));
            }
        };
        out.push(Tool { name, description, parameters });
    }
    Ok(out)
}

/// Whether and which tools the model must call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No tool calls: the tools are not shown to the model.
    None,
    /// The model decides; its reply is parsed for calls afterwards.
    Auto,
    /// At least one call to any of the tools (forced by a grammar).
    Required,
    /// One call to this tool (forced by a grammar).
    Named(String),
}

impl ToolChoice {
    /// Reads `tool_choice`: `"none"`, `"auto"`, `"required"` or
    /// `{"type": "function", "function": {"name": ...}}`. Absent (or
    /// `null`) means `auto`; without tools there is nothing to call, so
    /// `auto` becomes `none` and `required` or a named tool are refused.
    pub fn parse(choice: Option<&Json>, tools: &[Tool]) -> Result<ToolChoice> {
        let invalid = |msg: String| Error::InvalidInput(msg);
        let parsed = match choice {
            None | Some(Json::Null) => ToolChoice::Auto,
            Some(Json::String(s)) => match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(invalid(format!(
                        "`tool_choice` must be \"none\", \"auto\", \"required\" or a named function, not {other:?}"
                    )));
                }
            },
            Some(Json::Object(fields)) => {
                match fields.get("type") {
                    Some(Json::String(t)) if t == "function" => {}
                    _ => return Err(invalid("`tool_choice.type` must be \"function\"".into())),
                }
                match fields.get("function").and_then(|f| f.get("name")) {
                    Some(Json::String(name)) => ToolChoice::Named(name.clone()),
                    _ => return Err(invalid("`tool_choice.function.name` must be a string".into())),
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "`tool_choice` must be a string or an object, not {}",
                    kind(other)
                )));
            }
        };
        match parsed {
            ToolChoice::Auto if tools.is_empty() => Ok(ToolChoice::None),
            ToolChoice::Required if tools.is_empty() => {
                Err(invalid("`tool_choice` \"required\" needs at least one tool in `tools`".into()))
            }
            ToolChoice::Named(name) if !tools.iter().any(|t| t.name == name) => Err(invalid(format!(
                "`tool_choice.function.name` {name:?} is not one of the tools in `tools`"
            ))),
            other => Ok(other),
        }
    }
}

/// What kind of JSON value this is, for messages.
pub(crate) fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}
