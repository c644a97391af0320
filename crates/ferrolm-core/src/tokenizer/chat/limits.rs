//! Bounds on rendering a chat template. A template comes with the model
//! file, so it is untrusted input: rendering may spend at most [`MAX_FUEL`]
//! (minijinja charges one fuel per instruction and per 64 bytes of data a
//! template creates, so this bounds both time and memory) and write at most
//! [`MAX_OUTPUT_BYTES`], and the filters and methods whose arguments size an
//! allocation before minijinja can charge for it (`indent`, `tojson`'s
//! indent, `str.format` widths) refuse widths past [`MAX_WIDTH`]. Exceeding a
//! bound is an error naming it.

use std::io;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error as JinjaError, ErrorKind, State};

/// Fuel one rendering may spend: about 25 million instructions or 1.5 GiB
/// of data created. Real templates spend about 60 per message plus 5 per 64
/// bytes of content (Qwen3, Llama 3.1, measured): a 32 MiB request of
/// 100-byte messages spends about 16 million, one 10 MB message 0.8 million.
/// Two nested loops of 100,000 would spend 10^10.
pub const MAX_FUEL: u64 = 25_000_000;
/// Bytes one rendering may produce: far past any context a model has.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;
/// The widest indentation, padding or precision a filter or method may be asked for.
pub const MAX_WIDTH: usize = 1024;

/// Checks an indentation width a template asked for.
pub fn check_indent(filter: &str, width: usize) -> Result<usize, JinjaError> {
    if width > MAX_WIDTH {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("{filter}: indent of {width} is more than the {MAX_WIDTH} a chat template may use"),
        ));
    }
    Ok(width)
}

/// Jinja's `indent(width=4, first=False, blank=False)`, with the width checked.
pub fn indent(
    value: String,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, JinjaError> {
    let width = check_indent("indent", width.or(kwargs.get("width")?).unwrap_or(4))?;
    let first = first.or(kwargs.get("first")?).unwrap_or(false);
    let blank = blank.or(kwargs.get("blank")?).unwrap_or(false);
    kwargs.assert_all_used()?;
    let input = value.strip_suffix('\n').unwrap_or(&value);
    let input = input.strip_suffix('\r').unwrap_or(input);
    let pad = " ".repeat(width);
    let mut out = String::with_capacity(input.len());
    for (i, line) in input.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if (i > 0 || first) && (blank || !line.is_empty()) {
            if out.len() + pad.len() + line.len() > MAX_OUTPUT_BYTES {
                return Err(too_long());
            }
            out.push_str(&pad);
        }
        out.push_str(line);
    }
    Ok(Value::from(out))
}

/// Python's string, dict and list methods (`minijinja_contrib::pycompat`),
/// with the widths and precisions of `str.format` checked first: pycompat
/// formats `'{:>1000000000000}'.format(x)` without asking the fuel.
pub fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, JinjaError> {
    if method == "format" && value.kind() == ValueKind::String {
        check_format_widths(value.as_str().unwrap_or_default())?;
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Refuses a `str.format` string whose replacement fields ask for a width or
/// precision past [`MAX_WIDTH`], or take one from an argument (`{:{}}`).
fn check_format_widths(format: &str) -> Result<(), JinjaError> {
    let refuse =
        |why: String| Err(JinjaError::new(ErrorKind::InvalidOperation, format!("str.format: {why}")));
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if let Some(after) = rest.strip_prefix('{') {
            rest = after; // `{{` is a literal brace
            continue;
        }
        let field = &rest[..rest.find('}').unwrap_or(rest.len())];
        rest = &rest[field.len()..];
        let Some((_, spec)) = field.split_once(':') else { continue };
        if spec.contains('{') {
            return refuse(format!(
                "a width taken from an argument (`{{{field}}}`) is not supported in a chat template"
            ));
        }
        for number in spec.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()) {
            if number.parse::<usize>().map_or(true, |n| n > MAX_WIDTH) {
                return refuse(format!(
                    "a width or precision of {number} is more than the {MAX_WIDTH} a chat template may use"
                ));
            }
        }
    }
    Ok(())
}

fn too_long_message() -> String {
    format!("the chat template's output passed {MAX_OUTPUT_BYTES} bytes")
}

pub fn too_long() -> JinjaError {
    JinjaError::new(ErrorKind::InvalidOperation, too_long_message())
}

/// The rendered text, refusing to grow past [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
pub struct BoundedOutput(pub Vec<u8>);

impl io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            return Err(io::Error::other(format!(
                "the chat template's output passed {MAX_OUTPUT_BYTES} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
