//! Finding `<tool_call>...</tool_call>` blocks in streamed text (Hermes and
//! the generic format). Text is released as soon as it cannot begin an
//! opening tag; a block is held until its closing tag and then becomes a
//! call, or, if its JSON is not a call to a known tool, goes back to the
//! text verbatim. An unclosed block at the end is a call when its JSON is
//! complete (the model stopped, or was cut, before `</tool_call>`).

use super::call::{call_from_text, ToolCall};
use super::output::ToolEvent;

pub(crate) const OPEN: &str = "<tool_call>";
pub(crate) const CLOSE: &str = "</tool_call>";

#[derive(Debug, Default)]
pub(crate) struct TaggedScanner {
    /// Outside a block: a tail that may begin `<tool_call>`. Inside one:
    /// everything after the opening tag.
    held: String,
    in_block: bool,
    /// Inside a block, how much of `held` has been searched for the
    /// closing tag already (so a long block is not searched again and again).
    searched: usize,
}

impl TaggedScanner {
    /// Takes the next piece of text; appends raw text (untrimmed) and calls.
    pub(crate) fn push(&mut self, delta: &str, names: &[String], out: &mut Vec<ToolEvent>) {
        self.held.push_str(delta);
        loop {
            if self.in_block {
                let mut from = self.searched.saturating_sub(CLOSE.len() - 1);
                while !self.held.is_char_boundary(from) {
                    from -= 1;
                }
                let Some(at) = self.held[from..].find(CLOSE).map(|i| from + i) else {
                    self.searched = self.held.len();
                    return;
                };
                let inner = &self.held[..at];
                out.push(match call_from_text(inner, names) {
                    Some(call) => ToolEvent::Call(call),
                    None => ToolEvent::Content(format!("{OPEN}{inner}{CLOSE}")),
                });
                self.held.drain(..at + CLOSE.len());
                self.in_block = false;
                self.searched = 0;
            } else if let Some(at) = self.held.find(OPEN) {
                if at > 0 {
                    out.push(ToolEvent::Content(self.held[..at].to_string()));
                }
                self.held.drain(..at + OPEN.len());
                self.in_block = true;
            } else {
                let cut = self.held.len() - partial_tag_len(&self.held, OPEN);
                if cut > 0 {
                    out.push(ToolEvent::Content(self.held[..cut].to_string()));
                    self.held.drain(..cut);
                }
                return;
            }
        }
    }

    /// The end of the text: whatever is held is released.
    pub(crate) fn finish(&mut self, names: &[String], out: &mut Vec<ToolEvent>) {
        let held = std::mem::take(&mut self.held);
        if std::mem::take(&mut self.in_block) {
            out.push(match unclosed_call(&held, names) {
                Some(call) => ToolEvent::Call(call),
                None => ToolEvent::Content(format!("{OPEN}{held}")),
            });
        } else if !held.is_empty() {
            out.push(ToolEvent::Content(held));
        }
        self.searched = 0;
    }
}

/// The call in a block that never closed: its JSON, possibly followed by
/// the beginning of `</tool_call>` (output cut inside the tag).
fn unclosed_call(rest: &str, names: &[String]) -> Option<ToolCall> {
    if let Some(call) = call_from_text(rest, names) {
        return Some(call);
    }
    let rest = rest.trim_end();
    match partial_tag_len(rest, CLOSE) {
        0 => None,
        n => call_from_text(&rest[..rest.len() - n], names),
    }
}

/// The length of the longest tail of `text` that is a proper beginning of
/// `tag` (0 if none): text that may still turn into the tag.
pub(crate) fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len()).rev().find(|&n| text.ends_with(&tag[..n])).unwrap_or(0)
}
