//! The bytes each token id stands for ([`Tokenizer::token_bytes`]): what a
//! byte-level trie over the vocabulary (constrained decoding) is built from.
//!
//! Two spellings exist, told apart by the decoder: byte-level BPE (GPT-2's
//! printable stand-in for every byte, a `ByteLevel` decoder) and
//! SentencePiece with byte fallback (`▁` for a space, `<0xNN>` for a raw byte).
//! Added tokens are their text; special ones get llguidance's marker byte
//! (0xFF) in front, so a grammar never produces them by accident.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::gguf_vocab::BYTES_TO_UNICODE;
use super::Tokenizer;
use crate::error::{Error, Result};

/// Marks a special token's bytes (`toktrie::TokTrie::SPECIAL_TOKEN_MARKER`).
pub const SPECIAL_TOKEN_MARKER: u8 = 0xFF;

enum Spelling {
    ByteLevel(HashMap<char, u8>),
    /// SentencePiece: the character standing for a space.
    ByteFallback(char),
}

impl Tokenizer {
    /// The bytes of every id in `0..id_limit()`; an id the vocabulary skips has none.
    pub fn token_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let spelling = spelling(self.inner.get_decoder().map(serde_json::to_value).transpose())?;
        let added = self.inner.get_added_tokens_decoder();
        let mut bytes = Vec::with_capacity(self.id_limit);
        for id in 0..self.id_limit as u32 {
            if let Some(token) = added.get(&id) {
                let mut b = Vec::with_capacity(token.content.len() + 1);
                if token.special {
                    b.push(SPECIAL_TOKEN_MARKER);
                }
                b.extend_from_slice(token.content.as_bytes());
                bytes.push(b);
                continue;
            }
            let b = match self.inner.id_to_token(id) {
                None => Vec::new(),
                Some(piece) => match &spelling {
                    Spelling::ByteLevel(map) => piece
                        .chars()
                        .map(|c| {
                            map.get(&c).copied().ok_or_else(|| {
                                Error::InvalidTokenizer(format!(
                                    "byte-level token {id} ({piece:?}) has a character outside the byte alphabet"
                                ))
                            })
                        })
                        .collect::<Result<_>>()?,
                    Spelling::ByteFallback(space) => match raw_byte(&piece) {
                        Some(byte) => vec![byte],
                        None => piece.replace(*space, " ").into_bytes(),
                    },
                },
            };
            bytes.push(b);
        }
        Ok(bytes)
    }
}

/// Which spelling the (serialized) decoder implies.
fn spelling(decoder: serde_json::Result<Option<Json>>) -> Result<Spelling> {
    let decoder = decoder.map_err(|e| Error::Internal(format!("serializing the decoder: {e}")))?;
    let decoder = decoder.unwrap_or(Json::Null);
    let kind = |d: &Json| d["type"].as_str().map(str::to_owned);
    let byte_level =
        || Spelling::ByteLevel(BYTES_TO_UNICODE.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect());
    if kind(&decoder).as_deref() == Some("ByteLevel") {
        return Ok(byte_level());
    }
    if let Some(parts) = decoder["decoders"].as_array() {
        if parts.iter().any(|d| kind(d).as_deref() == Some("ByteLevel")) {
            return Ok(byte_level());
        }
        if parts.iter().any(|d| kind(d).as_deref() == Some("ByteFallback")) {
            let space = parts
                .iter()
                .filter(|d| kind(d).as_deref() == Some("Replace") && d["content"] == " ")
                .find_map(|d| d["pattern"]["String"].as_str().and_then(single_char))
                .unwrap_or(' ');
            return Ok(Spelling::ByteFallback(space));
        }
    }
    Err(Error::Unsupported(format!(
        "constrained decoding needs a byte-level or byte-fallback tokenizer; this one's decoder is {}",
        kind(&decoder).unwrap_or_else(|| "missing".into())
    )))
}

fn single_char(s: &str) -> Option<char> {
    let mut chars = s.chars();
    chars.next().filter(|_| chars.next().is_none())
}

/// `<0xNN>`, SentencePiece's spelling of one raw byte.
fn raw_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn raw_bytes_are_exactly_two_hex_digits() {
        assert_eq!(raw_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(raw_byte("<0xff>"), Some(0xFF));
        for piece in ["<0x1>", "<0xZZ>", "<0x0A", "0x0A>", "<0x0AB>", "a"] {
            assert_eq!(raw_byte(piece), None, "{piece}");
        }
    }

    #[test]
    fn the_decoder_names_the_spelling() {
        let sp = json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}
        ]});
        assert!(matches!(spelling(Ok(Some(sp))), Ok(Spelling::ByteFallback('▁'))));
        assert!(matches!(spelling(Ok(Some(json!({"type": "ByteLevel"})))), Ok(Spelling::ByteLevel(_))));
        let err = spelling(Ok(Some(json!({"type": "WordPiece"})))).err().unwrap().to_string();
        assert!(err.contains("WordPiece"), "{err}");
        assert!(spelling(Ok(None)).is_err());
    }
}
