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

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};

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
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
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
        let messages = Value::from_serialize(messages);
        let extra = match extra {
            serde_json::Value::Null => Value::from(()),
            other => Value::from_serialize(other),
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
        template.render(Value::from_iter(vars)).map_err(template_error)
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
                out.push(Value::from_iter(fields));
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
        let Some(end) = tag.find("%}") else {
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

// --- tojson: Python's json.dumps ------------------------------------------------

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(minijinja::Error::new(ErrorKind::TooManyArguments, "tojson takes at most 4 arguments"));
    }
    let mut opts: [Value; 4] = Default::default();
    for (slot, arg) in opts.iter_mut().zip(args.iter()) {
        *slot = arg.clone();
    }
    for (slot, name) in opts.iter_mut().zip(NAMES) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            *slot = v;
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = opts;
    let indent = match indent.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => Some(" ".repeat(i64::try_from(indent.clone())?.max(0) as usize)),
        _ => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: indent must be a number"))
        }
    };
    let (item_sep, key_sep) = match separators.kind() {
        ValueKind::Undefined | ValueKind::None => {
            (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string())
        }
        _ => {
            let parts: Vec<String> = separators.try_iter()?.map(|v| v.to_string()).collect();
            match <[String; 2]>::try_from(parts) {
                Ok([item, key]) => (item, key),
                Err(_) => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be (item_separator, key_separator)",
                    ))
                }
            }
        }
    };
    let dumper = JsonDumper {
        ensure_ascii: ensure_ascii.is_true(),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_true(),
    };
    let mut out = String::new();
    dumper.dump(value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonDumper {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper {
    fn dump(
        &self,
        value: &Value,
        level: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if let Some(i) = i128::try_from(value.clone()).ok().filter(|_| value.is_integer()) {
                    let _ = write!(out, "{i}");
                } else {
                    out.push_str(&python_float_repr(f64::try_from(value.clone())?));
                }
            }
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', items.len(), level, out, |i, level, out| {
                    self.dump(&items[i], level, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container('{', '}', keys.len(), level, out, |i, level, out| {
                    self.key(&keys[i], out)?;
                    out.push_str(&self.key_sep);
                    self.dump(&value.get_item(&keys[i])?, level, out)
                })?;
            }
            ValueKind::Undefined => {
                return Err(minijinja::Error::new(
                    ErrorKind::UndefinedError,
                    "tojson: an undefined value is not JSON serializable",
                ))
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a {} is not JSON serializable", value.kind()),
                ))
            }
        }
        Ok(())
    }

    fn container(
        &self,
        open: char,
        close: char,
        len: usize,
        level: usize,
        out: &mut String,
        mut item: impl FnMut(usize, usize, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(level + 1));
            }
            item(i, level + 1, out)?;
        }
        if let Some(indent) = &self.indent {
            out.push('\n');
            out.push_str(&indent.repeat(level));
        }
        out.push(close);
        Ok(())
    }

    /// Object keys: strings as is; numbers, booleans and None as Python converts them.
    fn key(&self, key: &Value, out: &mut String) -> std::result::Result<(), minijinja::Error> {
        match key.kind() {
            ValueKind::String => self.string(key.as_str().unwrap_or_default(), out),
            ValueKind::None => self.string("null", out),
            ValueKind::Bool | ValueKind::Number => {
                let mut text = String::new();
                self.dump(key, 0, &mut text)?;
                self.string(&text, out);
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: keys must be str, int, float, bool or None, not {}", key.kind()),
                ))
            }
        }
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.ensure_ascii && !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// `repr(float)` in Python: the shortest round-trip digits, positional for
/// exponents in [-4, 16), scientific (`1e-05`, `1e+16`) otherwise.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{:e}", x.abs()); // shortest digits: "1.2345e-7"
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else if n <= exp + 1 {
            format!("{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let mantissa = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

// --- strftime_now ------------------------------------------------------------------

/// HF's `strftime_now(format)`, in UTC.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Ok(Value::from(strftime(&format, secs)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// C `strftime` for the common directives, on a UTC Unix time.
pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('m') => write!(out, "{month:02}"),
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('b') | Some('h') => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            Some('B') => write!(out, "{}", MONTHS[month as usize - 1]),
            Some('a') => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            Some('A') => write!(out, "{}", WEEKDAYS[weekday]),
            Some('j') => write!(out, "{yday:03}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('F') => write!(out, "{year}-{month:02}-{day:02}"),
            Some('T') => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1.5, "1.5"),
            (1e-7, "1e-07"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0.0"),
            (21.5, "21.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-2.5e-5, "-2.5e-05"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn strftime_formats_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%A %B %e, %y %H:%M:%S %p %j %%", t), "Friday July 26, 24 13:05:09 PM 208 %");
        assert_eq!(strftime("%F %T", 0), "1970-01-01 00:00:00");
        assert_eq!(strftime("%d %b %Y", 951_782_400), "29 Feb 2000");
    }

    #[test]
    fn generation_tags_become_ifs() {
        assert_eq!(
            without_generation_tags("a{% generation %}b{%- endgeneration -%}c{{ x }}{% if y %}{% endif %}"),
            "a{% if true %}b{%- endif -%}c{{ x }}{% if y %}{% endif %}"
        );
    }
}
