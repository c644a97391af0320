//! Bounds on rendering a chat template. A template comes with the model
//! file, so it is untrusted input: rendering may run at most [`MAX_FUEL`]
//! template instructions and write at most [`MAX_OUTPUT_BYTES`], and the
//! filters whose arguments size an allocation (`indent`, `tojson`'s indent)
//! refuse widths past [`MAX_INDENT`]. Exceeding a bound is an error naming it.

use std::io;

use minijinja::value::{Kwargs, Value};
use minijinja::{Error as JinjaError, ErrorKind};

/// Template instructions one rendering may run (real chat templates run a
/// few thousand per message; two nested loops of 100,000 run 10^10).
pub const MAX_FUEL: u64 = 50_000_000;
/// Bytes one rendering may produce: far past any context a model has.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;
/// The widest indentation a filter may be asked for.
pub const MAX_INDENT: usize = 1024;

/// Checks an indentation width a template asked for.
pub fn check_indent(filter: &str, width: usize) -> Result<usize, JinjaError> {
    if width > MAX_INDENT {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("{filter}: indent of {width} is more than the {MAX_INDENT} a chat template may use"),
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

fn too_long_message() -> String {
    format!("the chat template's output passed {MAX_OUTPUT_BYTES} bytes")
}

fn too_long() -> JinjaError {
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
