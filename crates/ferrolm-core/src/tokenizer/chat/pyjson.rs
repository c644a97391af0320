//! The `tojson` filter of chat templates: Python's `json.dumps`, as HF's
//! template environment calls it (`ensure_ascii=False`, no HTML escaping),
//! so a tool schema prints byte for byte what Python would. Like the rest of
//! a rendering it is bounded: items are paid for in fuel before they are
//! listed, nesting stops at [`MAX_DEPTH`] (Python's `RecursionError`), and
//! the text may not grow past the output limit.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{ErrorKind, State};

use super::limits;

/// The deepest nesting `tojson` prints (Python stops near 1000 frames).
pub const MAX_DEPTH: usize = 512;

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub(super) fn tojson(
    state: &State,
    value: &Value,
    args: Rest<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
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
        ValueKind::String => {
            let text = indent.as_str().unwrap_or_default();
            limits::check_indent("tojson", text.len())?;
            Some(text.to_string())
        }
        ValueKind::Number => {
            let width = i64::try_from(indent.clone())?.max(0) as usize;
            Some(" ".repeat(limits::check_indent("tojson", width)?))
        }
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
        state,
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

struct JsonDumper<'a, 'env> {
    state: &'a State<'a, 'env>,
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper<'_, '_> {
    /// The items (or keys) of a container, each paid for in fuel before it
    /// is held, so a lazily built list of 2^40 items runs out of fuel
    /// instead of memory.
    fn items(&self, value: &Value) -> std::result::Result<Vec<Value>, minijinja::Error> {
        if let Some(len) = value.len() {
            self.state.consume_fuel(len as u64)?;
            return Ok(value.try_iter()?.collect());
        }
        value.try_iter()?.map(|item| self.state.consume_fuel(1).map(|()| item)).collect()
    }

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
                let items = self.items(value)?;
                self.container('[', ']', items.len(), level, out, |i, level, out| {
                    self.dump(&items[i], level, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys = self.items(value)?;
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
        if level >= MAX_DEPTH {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: the value is nested more than {MAX_DEPTH} deep"),
            ));
        }
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
            if out.len() > limits::MAX_OUTPUT_BYTES {
                return Err(limits::too_long());
            }
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
}
