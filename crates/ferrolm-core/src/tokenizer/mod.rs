//! Tokenizers, streaming detokenization and chat templates.
//!
//! [`Tokenizer`] wraps an HF `tokenizers::Tokenizer` (the Rust crate behind
//! HF's Python `tokenizers`, so encode/decode are HF's own) with what a model
//! needs around it: bos/eos/pad ids, the chat template, a streaming decoder.
//! It comes from
//!
//! - a `tokenizer.json` ([`Tokenizer::from_file`]) or a model directory with
//!   `tokenizer_config.json`/`chat_template.jinja` next to it
//!   ([`Tokenizer::from_pretrained`]), or
//! - the vocabulary inside a GGUF file ([`Tokenizer::from_gguf`],
//!   [`GgufVocab`]), converted as HF's `AutoTokenizer.from_pretrained(dir,
//!   gguf_file=...)` converts it.
//!
//! ```no_run
//! use ferrolm_core::tokenizer::{ChatMessage, Tokenizer};
//!
//! let tok = Tokenizer::from_pretrained("path/to/model")?;
//! let prompt = tok.apply_chat_template(&[ChatMessage::user("Hi!")], true, &serde_json::Value::Null)?;
//! let ids = tok.encode(&prompt, false)?;
//! let mut stream = tok.stream_decoder(true);
//! for id in ids {
//!     print!("{}", stream.push(id)?);
//! }
//! print!("{}", stream.flush()?);
//! # Ok::<(), ferrolm_core::Error>(())
//! ```
//!
//! End of generation: [`Tokenizer::eos_ids`] holds the declared eos token
//! plus, as llama.cpp does, the end-of-turn tokens the vocabulary has as
//! special tokens (`<|im_end|>`, `<|eot_id|>`, `<|eom_id|>`, `<|endoftext|>`,
//! `<|end_of_text|>`, `<end_of_turn>`, `<|end|>`, ...) and, for model
//! directories, the `eos_token_id`s of `generation_config.json`/`config.json`.
//! A chat model whose GGUF declares its bos or turn-start token as eos would
//! otherwise never stop at the end of its answer.

mod bytes;
mod chat;
mod gguf_vocab;
mod stream;

use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::TruncationDirection;

pub use self::bytes::SPECIAL_TOKEN_MARKER;
pub use self::chat::{ChatMessage, ChatTemplate};
pub use self::gguf_vocab::{token_type, GgufVocab};
pub use self::stream::StreamDecoder;
use crate::error::{Error, Result};
use crate::weights::gguf::GgufFile;

/// Token texts that end a turn or a document (llama.cpp's end-of-generation list).
const END_OF_GENERATION: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
    "<|end▁of▁sentence|>",
    "<end_of_utterance>",
];

/// Named special tokens as HF orders them (`SPECIAL_TOKENS_ATTRIBUTES`).
const SPECIAL_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A tokenizer plus the model-level facts around it (special ids, chat template).
///
/// Cloning is cheap (the vocabulary is shared).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    vocab_size: usize,
    /// One past the largest token id (ids can have holes where a vocabulary repeats a token).
    id_limit: usize,
    bos: Option<u32>,
    /// The declared eos first, then the other end-of-generation tokens.
    eos: Vec<u32>,
    pad: Option<u32>,
    /// `("bos_token", "<s>")`, ...: what chat templates see.
    special_tokens: Vec<(String, String)>,
    chat_template: Option<Arc<ChatTemplate>>,
}

/// How [`Tokenizer::encode_batch_padded`] pads and truncates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Every sequence keeps its own length.
    #[default]
    None,
    /// Pad to the longest sequence of the batch.
    Longest,
    /// Pad to `max_length`.
    MaxLength,
}

/// Options of [`Tokenizer::encode_batch_padded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOptions {
    pub add_special_tokens: bool,
    pub padding: Padding,
    /// Truncation length (with `truncate`) and padding length (with [`Padding::MaxLength`]).
    pub max_length: Option<usize>,
    /// Cut sequences longer than `max_length`, keeping the special tokens.
    pub truncate: bool,
    /// Pad on the left (for generation) instead of the right.
    pub pad_left: bool,
}

/// Token ids and attention masks of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

impl Tokenizer {
    /// Wraps an HF tokenizer; special tokens and chat template are set by the builders below.
    pub fn new(inner: tokenizers::Tokenizer) -> Tokenizer {
        let vocab = inner.get_vocab(true);
        let id_limit = vocab.values().max().map_or(0, |&id| id as usize + 1);
        let mut tok = Tokenizer {
            inner: Arc::new(inner),
            vocab_size: vocab.len(),
            id_limit,
            bos: None,
            eos: Vec::new(),
            pad: None,
            special_tokens: Vec::new(),
            chat_template: None,
        };
        tok.add_end_of_generation();
        tok
    }

    /// Loads a `tokenizer.json` (HF `tokenizers` format), nothing else.
    ///
    /// Without `tokenizer_config.json` there is no bos/pad token or chat
    /// template; eos ids come from the end-of-generation names. Use
    /// [`Tokenizer::from_pretrained`] on the directory to get them.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::NotFound { what: "tokenizer file", path: path.to_path_buf() }
            }
            _ => Error::io(path, e),
        })?;
        Tokenizer::from_json_bytes(&bytes).map_err(|e| match e {
            Error::InvalidTokenizer(msg) => Error::InvalidTokenizer(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses `tokenizer.json` contents.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        // JSON first, the tokenizer from the parsed value second: `tokenizers`
        // panics (an `expect`) when the text of its `decoder` is not valid
        // JSON, where a parsed value always deserializes or errors.
        let invalid =
            |e: serde_json::Error| Error::InvalidTokenizer(format!("not a valid tokenizer.json: {e}"));
        let json: Json = serde_json::from_slice(bytes).map_err(invalid)?;
        if let Some(normalizer) = json.get("normalizer") {
            refuse_precompiled(normalizer)?;
        }
        let inner: tokenizers::Tokenizer = serde_json::from_value(json).map_err(invalid)?;
        Ok(Tokenizer::new(inner))
    }

    /// A model directory's `tokenizer.json`, with the optional
    /// `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`
    /// and `config.json` beside it (special tokens, chat template, eos ids).
    /// [`Tokenizer::from_pretrained`] picks this or [`Tokenizer::from_gguf`].
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if !json.is_file() {
            return Err(Error::NotFound { what: "tokenizer.json", path: json });
        }
        let mut tok = Tokenizer::from_file(&json)?;
        tok.read_model_dir(dir)?;
        Ok(tok)
    }

    /// The tokenizer (and chat template) embedded in a GGUF file.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::NotFound { what: "GGUF file", path: path.to_path_buf() });
        }
        Tokenizer::from_gguf_vocab(&GgufVocab::from_metadata(GgufFile::open(path)?.metadata())?)
    }

    /// Builds the tokenizer a GGUF vocabulary describes (see [`GgufVocab`]).
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Tokenizer> {
        let mut tok = Tokenizer::new(vocab.build()?);
        tok.bos = vocab.bos;
        tok.eos.clear();
        for id in [vocab.eos, vocab.eot, vocab.eom].into_iter().flatten() {
            tok.push_eos(id);
        }
        tok.add_end_of_generation();
        tok.pad = vocab.pad;
        tok.special_tokens = vocab.special_tokens();
        if let Some(source) = &vocab.chat_template {
            tok.set_chat_template(source)?;
        }
        Ok(tok)
    }

    /// Reads `tokenizer_config.json`, `chat_template.jinja` and the eos ids of
    /// `generation_config.json`/`config.json`, as HF's `AutoTokenizer` does.
    fn read_model_dir(&mut self, dir: &Path) -> Result<()> {
        let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        let mut template = config.get("chat_template").and_then(chat_template_source);
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            template = Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }
        self.special_tokens.clear();
        for name in SPECIAL_NAMES {
            if let Some(token) = config.get(name).and_then(token_content) {
                self.special_tokens.push((name.to_string(), token));
            }
        }
        // A named token missing from the vocabulary (HF would append it) gets no id.
        let id_of = |name: &str| {
            self.special_tokens
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, token)| self.inner.token_to_id(token))
        };
        self.bos = id_of("bos_token");
        self.pad = id_of("pad_token");
        let declared_eos = id_of("eos_token");
        let mut eos: Vec<u32> = declared_eos.into_iter().collect();
        for file in ["generation_config.json", "config.json"] {
            if let Some(ids) = read_json(&dir.join(file))?.as_ref().and_then(|j| j.get("eos_token_id")) {
                eos.extend(json_ids(ids));
            }
        }
        self.eos.clear();
        for id in eos {
            self.push_eos(id);
        }
        self.add_end_of_generation();
        // transformers rewrites the post-processor when the config sets these flags.
        let add_bos = config.get("add_bos_token").and_then(Json::as_bool);
        let add_eos = config.get("add_eos_token").and_then(Json::as_bool);
        if add_bos.is_some() || add_eos.is_some() {
            let processor = template_processor(self, add_bos.unwrap_or(false), add_eos.unwrap_or(false))?;
            let mut inner = (*self.inner).clone();
            inner.with_post_processor(Some(processor));
            self.inner = Arc::new(inner);
        }
        if let Some(source) = template {
            self.set_chat_template(&source)?;
        }
        Ok(())
    }

    fn push_eos(&mut self, id: u32) {
        if (id as usize) < self.id_limit && !self.eos.contains(&id) {
            self.eos.push(id);
        }
    }

    /// Adds the end-of-generation tokens the vocabulary has as special tokens.
    fn add_end_of_generation(&mut self) {
        let specials: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        for name in END_OF_GENERATION {
            if let Some(&(id, _)) = specials.iter().find(|(_, content)| content == name) {
                self.push_eos(id);
            }
        }
    }

    /// Replaces the chat template (it sees this tokenizer's special tokens).
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        let template = ChatTemplate::new(source)?.with_special_tokens(self.special_tokens.clone());
        self.chat_template = Some(Arc::new(template));
        Ok(())
    }

    /// The HF tokenizer inside.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Number of tokens, added tokens included (HF's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// One past the largest token id: the rows an embedding table needs. Equal
    /// to [`Tokenizer::vocab_size`] unless the vocabulary repeats a token.
    pub fn id_limit(&self) -> usize {
        self.id_limit
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The declared end-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.first().copied()
    }

    /// Every token that ends generation: the declared eos first (see the module docs).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The padding token, falling back to the eos token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad.or_else(|| self.eos_id())
    }

    /// Named special tokens (`("bos_token", "<s>")`, ...), as chat templates see them.
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special token (left out by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_deref()
    }

    /// Token ids of `text`; `add_special_tokens` adds what the post-processor adds (bos, ...).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::InvalidInput(format!("could not tokenize the text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] of several texts, in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .inner
            .encode_batch_fast(inputs, add_special_tokens)
            .map_err(|e| Error::InvalidInput(format!("could not tokenize the texts: {e}")))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Encodes a batch with truncation, padding and attention masks.
    ///
    /// Truncation keeps the special tokens (`[bos] text[..n]`), as HF does;
    /// padding uses [`Tokenizer::pad_id`].
    pub fn encode_batch_padded<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        opts: &BatchOptions,
    ) -> Result<Batch> {
        if (opts.truncate || opts.padding == Padding::MaxLength) && opts.max_length.is_none() {
            return Err(Error::InvalidInput("truncation and padding to max_length need `max_length`".into()));
        }
        if opts.max_length == Some(0) {
            return Err(Error::InvalidInput("max_length must be at least 1".into()));
        }
        let mut ids = if opts.truncate {
            let max_length = opts.max_length.unwrap_or(usize::MAX);
            let added = match (opts.add_special_tokens, self.inner.get_post_processor()) {
                (true, Some(p)) => tokenizers::PostProcessor::added_tokens(p, false),
                _ => 0,
            };
            let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
            let encodings = self
                .inner
                .encode_batch_fast(inputs, false)
                .map_err(|e| Error::InvalidInput(format!("could not tokenize the texts: {e}")))?;
            encodings
                .into_iter()
                .map(|mut e| {
                    e.truncate(max_length.saturating_sub(added), 0, TruncationDirection::Right);
                    let e = self
                        .inner
                        .post_process(e, None, opts.add_special_tokens)
                        .map_err(|e| Error::InvalidInput(format!("could not add special tokens: {e}")))?;
                    let mut ids = e.get_ids().to_vec();
                    ids.truncate(max_length);
                    Ok(ids)
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            self.encode_batch(texts, opts.add_special_tokens)?
        };
        let target = match opts.padding {
            Padding::None => None,
            Padding::Longest => Some(ids.iter().map(Vec::len).max().unwrap_or(0)),
            Padding::MaxLength => {
                Some(opts.max_length.unwrap_or(0).max(ids.iter().map(Vec::len).max().unwrap_or(0)))
            }
        };
        let mut attention_mask: Vec<Vec<u32>> = ids.iter().map(|s| vec![1; s.len()]).collect();
        if let Some(target) = target {
            let pad = self.pad_id().ok_or_else(|| {
                Error::InvalidInput(
                    "the tokenizer has no pad or eos token to pad with; pass padding=False".into(),
                )
            })?;
            for (seq, mask) in ids.iter_mut().zip(&mut attention_mask) {
                let n = target - seq.len();
                if opts.pad_left {
                    seq.splice(0..0, std::iter::repeat_n(pad, n));
                    mask.splice(0..0, std::iter::repeat_n(0, n));
                } else {
                    seq.extend(std::iter::repeat_n(pad, n));
                    mask.extend(std::iter::repeat_n(0, n));
                }
            }
        }
        Ok(Batch { input_ids: ids, attention_mask })
    }

    /// Text of `ids`; `skip_special_tokens` leaves special tokens out.
    /// Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.decode_unchecked(ids, skip_special_tokens)
    }

    /// [`Tokenizer::decode`] of several sequences.
    pub fn decode_batch(&self, sequences: &[Vec<u32>], skip_special_tokens: bool) -> Result<Vec<String>> {
        sequences.iter().map(|ids| self.decode(ids, skip_special_tokens)).collect()
    }

    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.id_limit) {
            Some(id) => Err(Error::InvalidInput(format!(
                "token id {id} is outside the vocabulary (ids are 0..{})",
                self.id_limit
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn decode_unchecked(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::InvalidInput(format!("could not decode the token ids: {e}")))
    }

    /// A decoder for ids arriving one at a time (see [`StreamDecoder`]).
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special_tokens)
    }

    /// Renders the chat template (see [`ChatTemplate::render`]).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &Json,
    ) -> Result<String> {
        self.require_template()?.render(messages, add_generation_prompt, extra)
    }

    /// Renders the chat template from JSON (see [`ChatTemplate::render_json`]).
    pub fn apply_chat_template_json(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
        extra_json: Option<&str>,
    ) -> Result<String> {
        self.require_template()?.render_json(messages_json, add_generation_prompt, extra_json)
    }

    fn require_template(&self) -> Result<&ChatTemplate> {
        self.chat_template().ok_or_else(|| {
            Error::InvalidInput(
                "this tokenizer has no chat template (none in tokenizer_config.json, chat_template.jinja \
                 or the GGUF metadata); set one with set_chat_template"
                    .into(),
            )
        })
    }
}

/// `[bos] $A [eos]`, as transformers' `update_post_processor`.
fn template_processor(tok: &Tokenizer, add_bos: bool, add_eos: bool) -> Result<TemplateProcessing> {
    let named = |name: &str| tok.special_tokens.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone());
    let bos = named("bos_token").filter(|_| add_bos).zip(tok.bos);
    let eos = named("eos_token").filter(|_| add_eos).zip(tok.eos_id());
    bos_eos_processor(
        bos.as_ref().map(|(s, id)| (s.as_str(), *id)),
        eos.as_ref().map(|(s, id)| (s.as_str(), *id)),
    )
}

/// The post-processor that adds `bos` before and `eos` after each sequence
/// (either may be absent), for single sequences and pairs.
pub(crate) fn bos_eos_processor(
    bos: Option<(&str, u32)>,
    eos: Option<(&str, u32)>,
) -> Result<TemplateProcessing> {
    let piece = |t: Option<(&str, u32)>, type_id: u32| t.map(|(s, _)| format!("{s}:{type_id}"));
    let single: Vec<String> = piece(bos, 0).into_iter().chain(["$A:0".into()]).chain(piece(eos, 0)).collect();
    let pair: Vec<String> =
        single.iter().cloned().chain(piece(bos, 1)).chain(["$B:1".into()]).chain(piece(eos, 1)).collect();
    let mut specials: Vec<(String, u32)> = Vec::new();
    for (s, id) in bos.into_iter().chain(eos) {
        if !specials.iter().any(|(t, _)| t == s) {
            specials.push((s.to_string(), id));
        }
    }
    TemplateProcessing::builder()
        .try_single(single.join(" "))
        .and_then(|b| b.try_pair(pair.join(" ")))
        .map_err(|e| Error::InvalidTokenizer(format!("post-processor template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| Error::InvalidTokenizer(format!("post-processor: {e}")))
}

/// Refuses `Precompiled` normalizers (SentencePiece's compiled charsmap, in
/// T5/ALBERT-style Unigram vocabularies; no family ferrolm runs has one):
/// `tokenizers` panics on a charsmap it cannot parse and `spm_precompiled`
/// indexes a parsed one without bounds checks while encoding, so a damaged
/// file would panic where it must be refused.
fn refuse_precompiled(normalizer: &Json) -> Result<()> {
    match normalizer {
        Json::Object(fields) if fields.get("type").and_then(Json::as_str) == Some("Precompiled") => {
            Err(Error::Unsupported(
                "tokenizer.json: the `Precompiled` normalizer (a SentencePiece charsmap) is not supported"
                    .into(),
            ))
        }
        Json::Object(fields) => fields.values().try_for_each(refuse_precompiled),
        Json::Array(items) => items.iter().try_for_each(refuse_precompiled),
        _ => Ok(()),
    }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::InvalidTokenizer(format!("{} is not valid JSON: {e}", path.display())))
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` in `tokenizer_config.json`: a string, or named templates (`default` is used).
fn chat_template_source(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn json_ids(v: &Json) -> Vec<u32> {
    match v {
        Json::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        Json::Array(items) => items.iter().flat_map(json_ids).collect(),
        _ => Vec::new(),
    }
}
