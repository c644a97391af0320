//! Chat templates: the model's Jinja `chat_template` rendered with minijinja
//! the way HF transformers' `apply_chat_template(..., tokenize=False)` does.
//!
//! HF renders with a sandboxed Jinja2 environment (`trim_blocks`,
//! `lstrip_blocks`, loop controls) and adds `raise_exception`, `strftime_now`
//! and its own `tojson` (Python's `json.dumps`, no HTML escaping). The
//! template sees `messages`, `tools`, `documents` (`None` unless given),
//! `add_generation_prompt`, the tokenizer's named special tokens
//! (`bos_token`, `eos_token`, ...) and any extra keyword (`enable_thinking`,
//! `date_string`, ...). Here the same comes from minijinja with
//! `minijinja_contrib::pycompat` for Python string/dict methods
//! (`.strip()`, `.split()`, `.startswith()`, `.items()`, ...).
//!
//! Messages keep their key order (JSON objects are read in order), so
//! `tojson` of a tool schema prints exactly what Python would.
//!
//! Known limits: `strftime_now` formats UTC time (Python uses local time);
//! `continue_final_message` and `{% generation %}` masks are not implemented
//! (`{% generation %}` blocks render their content, as HF does without masks).
//!
//! The helpers the template calls live beside it: `pyjson` (`tojson`),
//! `clock` (`strftime_now`) and `limits` (the bounds on rendering, a checked
//! `indent`).

mod clock;
mod limits;
mod pyjson;

use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use self::clock::strftime_now;
use self::pyjson::tojson;
use crate::error::{Error, Result};

const TEMPLATE_NAME: &str = "chat_template";
/// Marks errors raised by the template itself through `raise_exception`.
const RAISED: &str = "\u{1}raise_exception\u{1}";
/// The reasoning fields HF aliases onto each other (`_alias_reasoning_fields`).
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// One message of a conversation: a role and text content.
///
/// For messages with more fields (`tool_calls`, `reasoning_content`, content
/// parts, ...) use [`ChatTemplate::render_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// A compiled chat template plus the special tokens it sees as variables.
#[derive(Debug)]
pub struct ChatTemplate {
    source: String,
    special_tokens: Vec<(String, String)>,
    env: Environment<'static>,
}

impl Clone for ChatTemplate {
    fn clone(&self) -> ChatTemplate {
        ChatTemplate::new(self.source.clone())
            .expect("a template that compiled once compiles again")
            .with_special_tokens(self.special_tokens.clone())
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template (`InvalidTokenizer` on a syntax error).
    pub fn new(source: impl Into<String>) -> Result<ChatTemplate> {
        let source = source.into();
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.expect("the default delimiters are valid"));
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(limits::python_methods);
        env.add_filter("tojson", tojson);
        env.add_filter("indent", limits::indent);
        env.set_fuel(Some(limits::MAX_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, without_generation_tags(&source)).map_err(|e| {
            Error::InvalidTokenizer(format!("chat template does not compile: {}", describe(&e)))
        })?;
        Ok(ChatTemplate { source, special_tokens: Vec::new(), env })
    }

    /// Sets the special tokens the template sees (`("bos_token", "<s>")`, ...).
    pub fn with_special_tokens<K: Into<String>, V: Into<String>>(
        mut self,
        tokens: impl IntoIterator<Item = (K, V)>,
    ) -> ChatTemplate {
        self.special_tokens = tokens.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The special tokens passed to the template as variables.
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    /// Renders plain role/content messages. `extra` is a JSON object of
    /// template variables (`{"enable_thinking": false}`, `{"tools": [...]}`),
    /// or `null`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let messages = Value::from(Serde(messages));
        let extra = match extra {
            serde_json::Value::Null => Value::from(()),
            other => Value::from(Serde(other)),
        };
        self.render_values(messages, add_generation_prompt, extra)
    }

    /// Renders messages given as JSON text (a list of objects, any fields, key
    /// order kept). `extra_json` is a JSON object of template variables
    /// (`tools`, `documents`, `enable_thinking`, ...), or `None`.
    pub fn render_json(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
        extra_json: Option<&str>,
    ) -> Result<String> {
        let messages: Value = serde_json::from_str(messages_json)
            .map_err(|e| Error::InvalidInput(format!("chat messages are not valid JSON: {e}")))?;
        let extra: Value = match extra_json {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                Error::InvalidInput(format!("chat template arguments are not valid JSON: {e}"))
            })?,
            None => Value::from(()),
        };
        self.render_values(messages, add_generation_prompt, extra)
    }

    fn render_values(&self, messages: Value, add_generation_prompt: bool, extra: Value) -> Result<String> {
        let messages = alias_reasoning(messages)?;
        let mut tools = Value::from(());
        let mut documents = Value::from(());
        // Special tokens first, extra variables override them (as HF's `{**special_tokens_map, **kwargs}`).
        let mut vars: Vec<(String, Value)> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        match extra.kind() {
            ValueKind::Undefined | ValueKind::None => {}
            ValueKind::Map => {
                for key in extra.try_iter().map_err(template_error)? {
                    let value = extra.get_item(&key).map_err(template_error)?;
                    match key.as_str() {
                        Some("tools") => tools = value,
                        Some("documents") => documents = value,
                        Some(name @ ("messages" | "add_generation_prompt")) => {
                            return Err(Error::InvalidInput(format!(
                                "`{name}` is an argument of the chat template call, not an extra variable"
                            )))
                        }
                        Some(name) => vars.push((name.to_string(), value)),
                        None => {
                            return Err(Error::InvalidInput("template variable names must be strings".into()))
                        }
                    }
                }
            }
            _ => {
                return Err(Error::InvalidInput("extra chat template variables must be a JSON object".into()))
            }
        }
        vars.push(("messages".into(), messages));
        vars.push(("tools".into(), tools));
        vars.push(("documents".into(), documents));
        vars.push(("add_generation_prompt".into(), Value::from(add_generation_prompt)));
        let template = self.env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        let mut out = limits::BoundedOutput::default();
        template.render_captured_to(Value::from_pairs(vars), &mut out).map_err(template_error)?;
        String::from_utf8(out.0)
            .map_err(|_| Error::InvalidInput("the chat template wrote invalid UTF-8".into()))
    }
}

/// Checks the messages and adds HF's reasoning aliases: a message with
/// `reasoning_content`, `thinking` or `reasoning` gets the first one set under
/// `thinking` (unless present) and `reasoning_content`.
fn alias_reasoning(messages: Value) -> Result<Value> {
    if messages.kind() != ValueKind::Seq {
        return Err(Error::InvalidInput(
            "chat messages must be a list of {\"role\", \"content\"} objects".into(),
        ));
    }
    let mut out = Vec::with_capacity(messages.len().unwrap_or(0));
    for message in messages.try_iter().map_err(template_error)? {
        if message.kind() != ValueKind::Map {
            return Err(Error::InvalidInput(format!("chat messages must be objects, got {message}")));
        }
        let reasoning = REASONING_FIELDS
            .iter()
            .find_map(|field| message.get_attr(field).ok().filter(|v| !v.is_undefined() && !v.is_none()));
        match reasoning {
            None => out.push(message),
            Some(reasoning) => {
                let mut fields = vec![(Value::from("thinking"), reasoning.clone())];
                for key in message.try_iter().map_err(template_error)? {
                    let value = message.get_item(&key).map_err(template_error)?;
                    fields.push((key, value));
                }
                fields.push((Value::from("reasoning_content"), reasoning));
                out.push(Value::from_pairs(fields));
            }
        }
    }
    Ok(Value::from(out))
}

/// Replaces HF's `{% generation %}`/`{% endgeneration %}` (an assistant-mask
/// extension) by an always-true `if`, keeping whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The closing `%}` comes after the opening `{%`: in `{%}` the two overlap.
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let body = inner.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(word) => {
                let lead = &inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()];
                let trail = &inner[inner.trim_end_matches(['-', '+']).len()..];
                let _ = write!(out, "{{%{lead} {word} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
}

/// The message of a template error, or of `raise_exception`, with its location.
fn template_error(err: minijinja::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) =
            e.downcast_ref::<minijinja::Error>().and_then(|e| e.detail()?.strip_prefix(RAISED))
        {
            return Error::InvalidInput(format!("the chat template rejected the conversation: {raised}"));
        }
        source = e.source();
    }
    Error::InvalidInput(format!("chat template failed: {}", describe(&err)))
}

fn describe(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let _ = write!(text, ": {e}");
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_ifs() {
        assert_eq!(
            without_generation_tags("a{% generation %}b{%- endgeneration -%}c{{ x }}{% if y %}{% endif %}"),
            "a{% if true %}b{%- endif -%}c{{ x }}{% if y %}{% endif %}"
        );
    }

    /// Found by the `chat_template` fuzz target: a `{%` whose `%` also
    /// begins a `%}` (`{%}`) made the tag's end come before its start, and
    /// slicing it panicked. Now it is an ordinary syntax error.
    #[test]
    fn an_opening_tag_that_overlaps_a_closing_one_is_a_syntax_error() {
        assert_eq!(without_generation_tags("a{%}b"), "a{%}b");
        assert_eq!(
            without_generation_tags("{%} generation %}x{%endgeneration%}"),
            "{%} generation %}x{% endif %}"
        );
        for source in ["{%}", "{%}8}is}DksDot", "x{%}{% generation %}"] {
            let err = ChatTemplate::new(source).unwrap_err();
            assert!(matches!(err, Error::InvalidTokenizer(_)), "{source}: {err}");
        }
    }

    /// Templates that used to abort the process (a terabyte allocation) or
    /// never return are errors that name what was exceeded.
    #[test]
    fn hostile_templates_are_bounded_errors() {
        let render = |source: &str| {
            ChatTemplate::new(source).unwrap().render(
                &[ChatMessage::user("hi")],
                true,
                &serde_json::Value::Null,
            )
        };
        // A string doubled 45 times would be 32 TiB: fuel pays for every byte.
        let doubled_in_a_loop = "{% set ns = namespace(s='a') %}{% for i in range(45) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
        let doubled_unrolled =
            format!("{{% set s = 'a' %}}{}{{{{ s|length }}}}", "{% set s = s ~ s %}".repeat(45));
        for (source, says) in [
            ("{{ 'a\nb' | indent(1000000000000) }}", "indent of 1000000000000"),
            ("{{ 'a\nb' | indent(width=5000) }}", "indent of 5000"),
            ("{{ messages | tojson(indent=1000000000) }}", "indent of 1000000000"),
            ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "fuel"),
            ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "bytes"),
            (
                "{% set ns = namespace(s='a') %}{% for i in range(27) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
                "bytes",
            ),
            (doubled_in_a_loop, "fuel"),
            (&doubled_unrolled, "fuel"),
            ("{{ ('a' * 1000000000000)|length }}", "fuel"),
            ("{{ ([1] * 1000000000000)|length }}", "too large"),
            ("{% set s = 'a' * 1000000 %}{{ (s|replace('a', s))|length }}", "fuel"),
            ("{% set s = 'a' * 1000000 %}{{ s.replace('a', s)|length }}", "fuel"),
            ("{{ '%1000000000000s'|format('a') }}", "fuel"),
            ("{{ '{:>1000000000000}'.format('a') }}", "width or precision of 1000000000000"),
            ("{{ '{:.99999999999999999999f}'.format(1.5) }}", "width or precision of 99999999999999999999"),
            ("{{ '{:{}}'.format('a', 1000000000000) }}", "from an argument"),
            ("{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}", "recursion"),
            (
                "{% set ns = namespace(l=[1]) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|tojson }}",
                "fuel",
            ),
            (
                "{% set ns = namespace(x=[]) %}{% for i in range(600) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x|tojson }}",
                "nested more than 512",
            ),
            ("{{ messages|tojson(indent='x' * 5000) }}", "indent of 5000"),
        ] {
            let err = render(source).unwrap_err().to_string();
            assert!(err.contains("chat template") && err.contains(says), "{source}: {err}");
        }
        // Ordinary use of the same filters still works.
        assert_eq!(render("{{ 'a\nb' | indent(2) }}").unwrap(), "a\n  b");
        assert_eq!(render("{{ 'a\n\nb' | indent(2, true, true) }}").unwrap(), "  a\n  \n  b");
        assert_eq!(render("{{ '{:>5}|{:.2f}|{{}}'.format('ab', 1.5) }}").unwrap(), "   ab|1.50|{}");
        assert_eq!(
            render("{{ [[1, [2]]]|tojson(indent=1) }}").unwrap(),
            "[\n [\n  1,\n  [\n   2\n  ]\n ]\n]"
        );
    }
}
