//! The bodies of the fuzz targets in `fuzz/` (behind the `fuzzing` feature).
//!
//! Each function feeds one untrusted input, as raw bytes, through the entry
//! point the engine uses when it loads a model, and then through what the
//! engine does next with the result (config, tensors, encode/decode,
//! rendering). A malformed input must come back as an [`Error`]; a panic,
//! an abort, a huge allocation or a hang is a bug. The libFuzzer targets in
//! `fuzz/fuzz_targets/` call these, and `tests/fuzz_corpus_replay.rs` runs
//! every committed corpus file through them on stable Rust, so a bug the
//! fuzzer once found stays fixed.
//!
//! Files are mapped in anonymous memory instead of being written to disk, so
//! the readers see exactly what [`GgufFile::open`] and
//! [`SafetensorsDir::open`] see after their `mmap`.
//!
//! [`Error`]: crate::Error

use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::config::Config;
use crate::tokenizer::{ChatMessage, ChatTemplate, GgufVocab, Tokenizer};
use crate::weights::gguf::{config_from_gguf, GgufFile, GgufSource};
use crate::weights::{SafetensorsDir, TensorSource};

/// The name the inputs have in error messages.
const INPUT: &str = "<fuzz input>";

/// Texts every tokenizer encodes: ASCII, punctuation, digits, whitespace
/// runs, accents, CJK, an emoji, and special-token spellings.
const TEXTS: [&str; 3] = [
    "Hello, world! It's 2026: 12345 apples.",
    "  multiple   spaces\n\n\ttabs\r\n héllo wörld 日本語 🤖",
    "<s></s><|im_start|>user\n<|im_end|><|endoftext|><unk>",
];

/// `bytes` in a read-only anonymous mapping: what the readers get from a
/// file of these bytes. `None` if the mapping cannot be made (which is the
/// harness's problem, not the reader's).
fn mapped(bytes: &[u8]) -> Option<Mmap> {
    let mut map = MmapOptions::new().len(bytes.len()).map_anon().ok()?;
    map.copy_from_slice(bytes);
    map.make_read_only().ok()
}

/// A GGUF file: parse it ([`GgufFile::open`]), build its config, refuse
/// unsupported tensor types, index its tensors by HF name and read every
/// tensor both as f32 and as stored, as the model loader does.
pub fn gguf(bytes: &[u8]) {
    let Some(map) = mapped(bytes) else { return };
    let Ok(file) = GgufFile::from_map(Path::new(INPUT), map) else { return };
    let _ = config_from_gguf(&file);
    let _ = file.check_supported_types();
    for info in file.tensor_infos() {
        let _ = file.tensor_data(&info.name);
        let _ = file.read_gguf(&info.name);
    }
    let Ok(source) = GgufSource::new(file) else { return };
    for name in source.names() {
        let _ = source.shape(&name);
        let _ = source.read(&name);
        let _ = source.read_stored(&name);
    }
}

/// A `.safetensors` file: parse and check its header
/// ([`SafetensorsDir::open`] of a one-shard directory), then read every
/// tensor as f32, as stored and raw.
pub fn safetensors(bytes: &[u8]) {
    let Some(map) = mapped(bytes) else { return };
    let Ok(dir) = SafetensorsDir::from_maps(vec![(PathBuf::from(INPUT), map)]) else { return };
    for name in dir.names() {
        let _ = dir.shape(&name);
        let _ = dir.read(&name);
        let _ = dir.read_stored(&name);
        let _ = dir.raw(&name);
    }
}

/// A `config.json` ([`Config::from_file`] after the read): parse and
/// validate it; an accepted config must survive its canonical JSON form.
pub fn config_json(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else { return };
    let Ok(config) = Config::from_json(&value) else { return };
    let again = Config::from_json(&config.to_json()).expect("the canonical form of a valid config is valid");
    assert_eq!(again, config, "the canonical JSON form round-trips");
}

/// A `tokenizer.json` ([`Tokenizer::from_file`] after the read), then
/// encode and decode a few texts with it.
pub fn tokenizer_json(bytes: &[u8]) {
    let Ok(tok) = Tokenizer::from_json_bytes(bytes) else { return };
    exercise(&tok);
}

/// A GGUF file's tokenizer ([`Tokenizer::from_gguf`]: the file parsed, its
/// `tokenizer.ggml.*` keys read into a [`GgufVocab`], the HF tokenizer
/// built), then encode, decode and the chat template, if it has one.
pub fn gguf_vocab(bytes: &[u8]) {
    let Some(map) = mapped(bytes) else { return };
    let Ok(file) = GgufFile::from_map(Path::new(INPUT), map) else { return };
    let Ok(vocab) = GgufVocab::from_metadata(file.metadata()) else { return };
    let Ok(tok) = Tokenizer::from_gguf_vocab(&vocab) else { return };
    exercise(&tok);
    let _ = tok.apply_chat_template(&messages(), true, &serde_json::Value::Null);
}

/// A chat template (the source as `tokenizer_config.json` or the GGUF
/// metadata carries it): compile it and render a small fixed conversation,
/// both as plain messages and as JSON with tools and reasoning.
pub fn chat_template(bytes: &[u8]) {
    let Ok(source) = std::str::from_utf8(bytes) else { return };
    let Ok(template) = ChatTemplate::new(source) else { return };
    let template = template.with_special_tokens([("bos_token", "<s>"), ("eos_token", "</s>")]);
    let _ = template.render(&messages(), true, &serde_json::Value::Null);
    let _ = template.render(&messages(), false, &serde_json::json!({"enable_thinking": false}));
    let _ = template.render_json(MESSAGES_JSON, true, Some(EXTRA_JSON));
}

fn messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("Hi!"),
        ChatMessage::assistant("Hello."),
        ChatMessage::user("What is 2 + 2?"),
    ]
}

/// A conversation with the fields real templates branch on.
const MESSAGES_JSON: &str = r#"[
  {"role": "system", "content": "You are terse."},
  {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
  {"role": "assistant", "content": "", "reasoning_content": "Call the tool.",
   "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
  {"role": "tool", "content": "{\"temp\": 21}"},
  {"role": "assistant", "content": "21 °C."}
]"#;

const EXTRA_JSON: &str = r#"{"tools": [{"type": "function", "function": {"name": "weather",
  "description": "Current weather", "parameters": {"type": "object",
  "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
  "enable_thinking": true, "date_string": "03 Dec 2026"}"#;

/// What the engine does with a tokenizer: encode (with and without special
/// tokens), decode (keeping and skipping them), and stream-decode.
fn exercise(tok: &Tokenizer) {
    let _ = tok.eos_ids();
    for text in TEXTS {
        for add_special in [false, true] {
            let Ok(ids) = tok.encode(text, add_special) else { continue };
            let _ = tok.decode(&ids, false);
            let _ = tok.decode(&ids, true);
            let mut stream = tok.stream_decoder(true);
            for &id in &ids {
                let _ = stream.push(id);
            }
            let _ = stream.flush();
        }
    }
    // Ids the model may sample that no text encodes to: the first and last.
    let last = u32::try_from(tok.id_limit().saturating_sub(1)).unwrap_or(u32::MAX);
    let _ = tok.decode(&[0, last, 0], false);
}
