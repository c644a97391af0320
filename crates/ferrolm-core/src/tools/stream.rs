//! The model's reply as it streams: [`ToolStreamParser`] turns text deltas
//! into content and complete calls, holding back only text that may still
//! turn out to be part of a call. One-shot parsing ([`super::ToolCalling::parse`])
//! is this parser fed the whole text at once, so both agree by construction
//! and tests check that any split of the text gives the same result.
//!
//! Content is trimmed as a whole: whitespace before the first content and
//! after the last is dropped (the newline that usually separates a remark
//! from a `<tool_call>` block is not content), and whitespace between two
//! pieces of content is kept. Streaming therefore holds back trailing
//! whitespace until more content follows.

use super::format::ToolFormat;
use super::llama::LlamaScanner;
use super::output::ToolEvent;
use super::tagged::TaggedScanner;

#[derive(Debug)]
enum Scanner {
    Tagged(TaggedScanner),
    Llama(LlamaScanner),
}

/// Incremental parser of one reply. Calls are recognised only for the
/// tools in `names` (none when tools were not offered: everything is
/// content). After [`ToolStreamParser::finish`] it starts over.
#[derive(Debug)]
pub struct ToolStreamParser {
    names: Vec<String>,
    scanner: Scanner,
    trim: Trim,
}

impl ToolStreamParser {
    /// A parser for replies in `format` calling the tools named `names`.
    pub fn new(format: ToolFormat, names: Vec<String>) -> ToolStreamParser {
        let scanner = match format {
            ToolFormat::Hermes | ToolFormat::Generic => Scanner::Tagged(TaggedScanner::default()),
            ToolFormat::Llama3Json => Scanner::Llama(LlamaScanner::default()),
        };
        ToolStreamParser { names, scanner, trim: Trim::default() }
    }

    /// Takes the next delta of text; returns what is now decided.
    pub fn push(&mut self, delta: &str) -> Vec<ToolEvent> {
        let mut raw = Vec::new();
        match &mut self.scanner {
            Scanner::Tagged(s) => s.push(delta, &self.names, &mut raw),
            Scanner::Llama(s) => s.push(delta, &self.names, &mut raw),
        }
        self.trim.apply(raw)
    }

    /// The end of the reply: releases everything still held (trailing
    /// whitespace is dropped) and resets the parser.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut raw = Vec::new();
        match &mut self.scanner {
            Scanner::Tagged(s) => s.finish(&self.names, &mut raw),
            Scanner::Llama(s) => s.finish(&self.names, &mut raw),
        }
        let events = self.trim.apply(raw);
        self.trim = Trim::default();
        events
    }
}

/// Trims the content stream as a whole (see the module doc).
#[derive(Debug, Default)]
struct Trim {
    /// Some content other than whitespace has been released.
    started: bool,
    /// Whitespace after the last released content: released only when
    /// more content follows.
    pending_space: String,
}

impl Trim {
    /// Raw events to released ones: content trimmed, neighbours merged.
    fn apply(&mut self, raw: Vec<ToolEvent>) -> Vec<ToolEvent> {
        let mut out: Vec<ToolEvent> = Vec::with_capacity(raw.len());
        for event in raw {
            let event = match event {
                ToolEvent::Content(text) => match self.content(&text) {
                    Some(text) => ToolEvent::Content(text),
                    None => continue,
                },
                call => call,
            };
            match (out.last_mut(), event) {
                (Some(ToolEvent::Content(last)), ToolEvent::Content(text)) => last.push_str(&text),
                (_, event) => out.push(event),
            }
        }
        out
    }

    fn content(&mut self, text: &str) -> Option<String> {
        let text = if self.started { text } else { text.trim_start() };
        let body = text.trim_end();
        if body.is_empty() {
            // Only whitespace: before any content it is dropped, after
            // some it waits for more.
            self.pending_space.push_str(text);
            return None;
        }
        self.started = true;
        let mut released = std::mem::take(&mut self.pending_space);
        released.push_str(body);
        self.pending_space.push_str(&text[body.len()..]);
        Some(released)
    }
}
