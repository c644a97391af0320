//! Forcing tool calls (`tool_choice` `required` or a named tool): a Lark
//! grammar that admits only calls in the model's own format, with each
//! tool's arguments held to its parameter schema through llguidance's
//! `%json { ... }`.
//!
//! One alternative per tool: the call's fixed text (`<tool_call>\n{"name":
//! "get_weather", "arguments": `) is a Lark literal and the arguments a
//! `%json` of the tool's schema alone, so a schema's own `$ref`s still
//! resolve from its root and the name is chosen before any argument.
//! Arguments are written without free whitespace, with the `", "` and
//! `": "` separators the templates render history with.

use serde_json::{json, Value as Json};

use super::format::ToolFormat;
use super::json_text::quoted;
use super::spec::Tool;

/// llguidance's JSON options for arguments, unless the schema sets its own.
fn json_options() -> Json {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// The Lark grammar forcing a call to one of `tools` (several, separated by
/// newlines, when `parallel` and the format allows it).
pub(crate) fn forced_calls(format: ToolFormat, tools: &[&Tool], parallel: bool) -> String {
    let (open, key, close) = match format {
        ToolFormat::Hermes | ToolFormat::Generic => ("<tool_call>\n", "arguments", "}\n</tool_call>"),
        // Llama 3.1 writes one call per message.
        ToolFormat::Llama3Json => ("", "parameters", "}"),
    };
    let many = parallel && format != ToolFormat::Llama3Json;
    let alternatives: Vec<String> = (0..tools.len()).map(|i| format!("call_{i}")).collect();
    let mut lark = String::new();
    lark.push_str(if many { "start: call (\"\\n\" call)*\n" } else { "start: call\n" });
    lark.push_str(&format!("call: {}\n", alternatives.join(" | ")));
    for (i, tool) in tools.iter().enumerate() {
        let head = format!("{open}{{\"name\": {}, \"{key}\": ", quoted(&tool.name));
        lark.push_str(&format!("call_{i}: {} args_{i} {}\n", quoted(&head), quoted(close)));
        lark.push_str(&format!("args_{i}: %json {}\n", schema_text(&tool.parameters)));
    }
    lark
}

/// The schema as `%json` takes it, with compact whitespace unless it says
/// otherwise.
fn schema_text(schema: &Json) -> String {
    let mut schema = schema.clone();
    if let Json::Object(fields) = &mut schema {
        fields.entry("x-guidance").or_insert_with(json_options);
    }
    serde_json::to_string(&schema).expect("JSON values serialize")
}
