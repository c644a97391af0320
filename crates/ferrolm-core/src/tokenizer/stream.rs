//! Incremental detokenization: token ids in, UTF-8-safe text pieces out.
//!
//! Byte-level BPE (GPT-2, Llama 3, Qwen) and SentencePiece byte fallback
//! (`<0xE6>`) spell one character over several tokens, so decoding the ids
//! one at a time would print half characters. [`StreamDecoder`] keeps a short
//! window of ids and emits the text the window gained only once it no longer
//! ends in an incomplete character (U+FFFD), the scheme of HF's
//! `DecodeStream` and text-generation-inference:
//!
//! - `prefix`: the ids whose text was already emitted, kept as left context
//!   (decoders such as SentencePiece's drop the leading space of the first
//!   token, so a token is never decoded on its own);
//! - the ids after it, not yet emitted.
//!
//! The pieces concatenate to `Tokenizer::decode` of all ids (same
//! `skip_special_tokens`), with one documented exception: a sequence that
//! *ends* inside a byte-fallback run with an incomplete character, where HF's
//! `ByteFallback` decoder turns the whole run into U+FFFD; `flush` then
//! emits the U+FFFDs that follow the text already emitted.

use crate::error::Result;

use super::Tokenizer;

const REPLACEMENT: char = '\u{FFFD}';

/// Turns a stream of token ids into text pieces that never split a character.
///
/// ```no_run
/// # use ferrolm_core::tokenizer::Tokenizer;
/// let tok = Tokenizer::from_file("tokenizer.json")?;
/// let mut stream = tok.stream_decoder(true);
/// let mut text = String::new();
/// for id in tok.encode("héllo 🦀", false)? {
///     text += &stream.push(id)?;
/// }
/// text += &stream.flush()?;
/// assert_eq!(text, "héllo 🦀");
/// # Ok::<(), ferrolm_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    /// The window: `ids[..read]` were emitted (kept as context), the rest not yet.
    ids: Vec<u32>,
    read: usize,
    /// `decode(ids[..read])`.
    prefix: String,
}

impl StreamDecoder {
    pub(crate) fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder { tokenizer, skip_special_tokens, ids: Vec::new(), read: 0, prefix: String::new() }
    }

    /// Whether special tokens are left out of the text (as in `decode`).
    pub fn skip_special_tokens(&self) -> bool {
        self.skip_special_tokens
    }

    /// Adds one token; returns the text it completes (often empty while a
    /// character is still incomplete, or for skipped special tokens).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tokenizer.check_ids(&[id])?;
        self.ids.push(id);
        let text = self.tokenizer.decode_unchecked(&self.ids, self.skip_special_tokens)?;
        if text.len() <= self.prefix.len() || text.ends_with(REPLACEMENT) || !text.starts_with(&self.prefix) {
            return Ok(String::new());
        }
        let piece = text[self.prefix.len()..].to_string();
        // The ids just emitted become the context of the next ones.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.tokenizer.decode_unchecked(&self.ids, self.skip_special_tokens)?;
        Ok(piece)
    }

    /// Adds several tokens; returns the text they complete.
    pub fn push_all(&mut self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            out += &self.push(id)?;
        }
        Ok(out)
    }

    /// Returns whatever is still held back (an incomplete character comes out
    /// as U+FFFD, as `decode` renders it) and starts over.
    pub fn flush(&mut self) -> Result<String> {
        let text = self.tokenizer.decode_unchecked(&self.ids, self.skip_special_tokens)?;
        let piece = match text.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // Only a byte-fallback run cut off mid-character gets here: the decoder
            // replaced the run's earlier, already emitted characters as well.
            None => text[common_prefix_len(&text, &self.prefix)..].to_string(),
        };
        self.reset();
        Ok(piece)
    }

    /// Forgets all state (for reuse on a new sequence).
    pub fn reset(&mut self) {
        self.ids.clear();
        self.read = 0;
        self.prefix.clear();
    }

    /// Ids received but not yet turned into text.
    pub fn pending(&self) -> &[u32] {
        &self.ids[self.read..]
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .map(|((i, x), _)| i + x.len_utf8())
        .last()
        .unwrap_or(0)
}
