//! The conversation made ready for the chat template.
//!
//! OpenAI sends an assistant's `tool_calls[*].function.arguments` as JSON
//! text; templates that print `arguments | tojson` (Llama 3.1) would print
//! that text as a quoted string, so arguments become objects first. Then
//! each format gets what its template cannot do itself: Llama 3.1 takes one
//! call per message and prints tool results with `tojson`; a template that
//! ignores tools (generic) sees calls and results only as plain text, and
//! the tools only through a system prompt.

use std::collections::HashMap;

use serde_json::{json, Value as Json};

use super::format::ToolFormat;
use super::json_text::spaced;
use super::spec::kind;
use crate::error::{Error, Result};

/// Rewrites `messages` in place for `format`; `system_prompt` (generic
/// format, tools offered) is put in front of the conversation.
pub(crate) fn prepare(
    format: ToolFormat,
    system_prompt: Option<String>,
    messages: &mut Vec<Json>,
) -> Result<()> {
    decode_arguments(messages)?;
    match format {
        ToolFormat::Hermes => {}
        ToolFormat::Llama3Json => {
            one_call_per_message(messages);
            structured_tool_results(messages);
        }
        ToolFormat::Generic => {
            *messages = plain_text_calls(std::mem::take(messages));
            if let Some(prompt) = system_prompt {
                add_system_prompt(messages, prompt);
            }
        }
    }
    Ok(())
}

/// Checks every assistant call and parses its `arguments` text into an
/// object; null content beside calls becomes "". `tool_calls: null` or `[]` is dropped: templates that test
/// `'tool_calls' in message` (Llama 3.1) would take it for a call.
fn decode_arguments(messages: &mut [Json]) -> Result<()> {
    for (i, message) in messages.iter_mut().enumerate() {
        let Some(fields) = message.as_object_mut() else { continue };
        match fields.get_mut("tool_calls") {
            None => continue,
            Some(Json::Null) => {
                fields.remove("tool_calls");
            }
            Some(Json::Array(calls)) if calls.is_empty() => {
                fields.remove("tool_calls");
            }
            Some(Json::Array(calls)) => {
                for (j, call) in calls.iter_mut().enumerate() {
                    decode_call(call, &format!("messages[{i}].tool_calls[{j}]"))?;
                }
                // OpenAI's `content: null` beside calls: templates that test
                // `'</think>' in message.content` (Qwen3) need a string.
                if matches!(fields.get("content"), None | Some(Json::Null)) {
                    fields.insert("content".into(), Json::String(String::new()));
                }
            }
            Some(other) => {
                return Err(Error::InvalidInput(format!(
                    "`messages[{i}].tool_calls` must be a list, not {}",
                    kind(other)
                )));
            }
        }
    }
    Ok(())
}

fn decode_call(call: &mut Json, at: &str) -> Result<()> {
    let invalid = |msg: String| Error::InvalidInput(msg);
    let Some(Json::Object(function)) = call.get_mut("function") else {
        return Err(invalid(format!("`{at}.function` must be an object with a `name` and `arguments`")));
    };
    if !matches!(function.get("name"), Some(Json::String(_))) {
        return Err(invalid(format!("`{at}.function.name` must be a string")));
    }
    let arguments = match function.remove("arguments") {
        // Clients send "" for a call without arguments.
        None | Some(Json::Null) => json!({}),
        Some(Json::String(text)) if text.trim().is_empty() => json!({}),
        Some(Json::String(text)) => match serde_json::from_str::<Json>(&text) {
            Ok(args @ Json::Object(_)) => args,
            Ok(other) => {
                return Err(invalid(format!(
                    "`{at}.function.arguments` must encode a JSON object, not {}",
                    kind(&other)
                )));
            }
            Err(e) => return Err(invalid(format!("`{at}.function.arguments` is not valid JSON: {e}"))),
        },
        Some(args @ Json::Object(_)) => args,
        Some(other) => {
            return Err(invalid(format!(
                "`{at}.function.arguments` must be a JSON object or its text, not {}",
                kind(&other)
            )));
        }
    };
    function.insert("arguments".into(), arguments);
    Ok(())
}

/// Llama 3.1's template refuses an assistant message with several calls:
/// each call gets a message of its own (the content stays with the first).
fn one_call_per_message(messages: &mut Vec<Json>) {
    let mut out = Vec::with_capacity(messages.len());
    for message in messages.drain(..) {
        let calls = match message.get("tool_calls") {
            Some(Json::Array(calls)) if calls.len() > 1 => calls.clone(),
            _ => {
                out.push(message);
                continue;
            }
        };
        for (j, call) in calls.into_iter().enumerate() {
            let mut single = message.clone();
            single["tool_calls"] = json!([call]);
            if j > 0 {
                single["content"] = Json::Null;
            }
            out.push(single);
        }
    }
    *messages = out;
}

/// Llama 3.1's template prints a tool result with `tojson` (a string is
/// iterable to Jinja), so a result sent as JSON text would come out quoted:
/// text holding a JSON object or list is parsed to print once.
fn structured_tool_results(messages: &mut [Json]) {
    for message in messages.iter_mut() {
        if !matches!(message.get("role").and_then(Json::as_str), Some("tool" | "ipython")) {
            continue;
        }
        let Some(Json::String(text)) = message.get("content") else { continue };
        let trimmed = text.trim_start();
        if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
            continue;
        }
        if let Ok(value) = serde_json::from_str::<Json>(text) {
            message["content"] = value;
        }
    }
}

/// Generic format: an assistant's calls become `<tool_call>` blocks in its
/// content, and tool results become user messages of `<tool_response>`
/// blocks (consecutive results share one message), so any template renders
/// them and roles still alternate.
fn plain_text_calls(messages: Vec<Json>) -> Vec<Json> {
    let mut names_by_id: HashMap<String, String> = HashMap::new();
    for message in &messages {
        for call in message.get("tool_calls").and_then(Json::as_array).into_iter().flatten() {
            if let (Some(id), Some(name)) = (call["id"].as_str(), call["function"]["name"].as_str()) {
                names_by_id.insert(id.to_string(), name.to_string());
            }
        }
    }
    let mut out: Vec<Json> = Vec::with_capacity(messages.len());
    let mut in_results = false;
    for mut message in messages {
        let role = message.get("role").and_then(Json::as_str).unwrap_or_default().to_string();
        if role == "tool" {
            let name = message.get("name").and_then(Json::as_str).or_else(|| {
                message
                    .get("tool_call_id")
                    .and_then(Json::as_str)
                    .and_then(|id| names_by_id.get(id).map(String::as_str))
            });
            let open = match name {
                Some(name) => format!("<tool_response name={}>", super::json_text::quoted(name)),
                None => "<tool_response>".to_string(),
            };
            let block = format!("{open}\n{}\n</tool_response>", text_of(message.get("content")));
            match out.last_mut() {
                Some(last) if in_results => {
                    let joined = format!("{}\n{block}", last["content"].as_str().unwrap_or_default());
                    last["content"] = Json::String(joined);
                }
                _ => out.push(json!({"role": "user", "content": block})),
            }
            in_results = true;
            continue;
        }
        in_results = false;
        if let Some(Json::Array(calls)) = message.get("tool_calls") {
            let blocks: Vec<String> = calls
                .iter()
                .map(|call| {
                    let function = &call["function"];
                    let body = json!({"name": function["name"], "arguments": function["arguments"]});
                    format!("<tool_call>\n{}\n</tool_call>", spaced(&body))
                })
                .collect();
            let text = text_of(message.get("content"));
            let content =
                if text.is_empty() { blocks.join("\n") } else { format!("{text}\n{}", blocks.join("\n")) };
            if let Some(fields) = message.as_object_mut() {
                fields.remove("tool_calls");
                fields.insert("content".into(), Json::String(content));
            }
        }
        out.push(message);
    }
    out
}

/// A message's content as text: a string as is, content parts' text joined
/// by newlines, nothing for null, any other JSON as JSON.
fn text_of(content: Option<&Json>) -> String {
    match content {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(text)) => text.clone(),
        Some(Json::Array(parts)) if parts.iter().all(|p| p.get("text").is_some_and(Json::is_string)) => {
            parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")
        }
        Some(other) => spaced(other),
    }
}

/// Puts `prompt` before the system message's text, or in a new system
/// message at the start.
fn add_system_prompt(messages: &mut Vec<Json>, prompt: String) {
    let first_is_system =
        messages.first().and_then(|m| m.get("role")).and_then(Json::as_str) == Some("system");
    if !first_is_system {
        messages.insert(0, json!({"role": "system", "content": prompt}));
        return;
    }
    let system = &mut messages[0];
    // Content parts become text too: a template that ignores tools
    // concatenates the system content as a string.
    let text = text_of(system.get("content"));
    let content = Json::String(if text.is_empty() { prompt } else { format!("{prompt}\n\n{text}") });
    system["content"] = content;
}
