//! The response side: a [`ToolCall`] the model made, and how one is
//! recognised in a JSON object it wrote. Both formats share the rule: an
//! object with a `name` among the request's tools and an arguments object
//! (under `arguments` or `parameters`, possibly as a JSON string of one).

use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value as Json;

use super::json_text::{member_text, minify};

/// One call, as OpenAI's `tool_calls[i]` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` and 24 random letters and digits.
    pub id: String,
    pub name: String,
    /// The arguments object as compact JSON text (OpenAI sends a string),
    /// spelled as the model wrote it.
    pub arguments: String,
}

/// A fresh `call_...` id.
pub fn new_call_id() -> String {
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// The call that `text` (JSON text of one value) stands for, if it is one:
/// `{"name": <a tool in `names`>, "arguments"|"parameters": <object or
/// JSON text of one>}`. Missing arguments are an empty object (models drop
/// them for tools without parameters). Other keys are ignored.
pub(crate) fn call_from_text(text: &str, names: &[String]) -> Option<ToolCall> {
    let value: Json = serde_json::from_str(text).ok()?;
    let fields = value.as_object()?;
    let name = fields.get("name")?.as_str()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let key = if fields.contains_key("arguments") { "arguments" } else { "parameters" };
    let arguments = match fields.get(key) {
        None => "{}".to_string(),
        // The text as written, not printed again from the parsed value.
        Some(Json::Object(_)) => minify(member_text(text, key)?),
        Some(Json::String(inner)) => match serde_json::from_str::<Json>(inner).ok()? {
            Json::Object(_) => minify(inner),
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ToolCall { id: new_call_id(), name: name.to_string(), arguments })
}
