//! Tokenizers embedded in GGUF files, rebuilt as HF `tokenizers::Tokenizer`s.
//!
//! A GGUF carries no `tokenizer.json`, only llama.cpp's `tokenizer.ggml.*`
//! metadata. [`GgufVocab`] is that metadata as a plain struct, and
//! [`GgufVocab::build`] turns it into the tokenizer HF transformers builds
//! for `AutoTokenizer.from_pretrained(dir, gguf_file=...)`
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py` in 5.x, the
//! `GGUFGPTConverter`/`GGUFLlamaConverter`/`GGUFQwen2Converter` of 4.x):
//!
//! - `gpt2` (byte-level BPE: GPT-2, Llama 3, Qwen2/3, SmolLM): the vocabulary
//!   (tokens spelled outside the byte alphabet are respelled in it), the
//!   file's merges, `ByteLevel` pre-tokenization whose split regex is chosen
//!   by `tokenizer.ggml.pre`, `ByteLevel` decoding.
//! - `llama` (SentencePiece BPE: Llama 1/2, Mistral, TinyLlama): the
//!   vocabulary with its scores, merges recovered from the scores (HF's
//!   `generate_merges`), byte fallback to the `<0xNN>` tokens, `▁` for spaces
//!   with a prefix space when `add_space_prefix` says so.
//!
//! In both, control tokens (`token_type` 3) become special added tokens and
//! user-defined ones (4) plain added tokens, so they are never split; the
//! bos/eos/unk/pad tokens are special too. `add_bos_token`/`add_eos_token`
//! become the post-processor.
//!
//! Two deliberate differences from transformers 5.x, both where it diverges
//! from llama.cpp: an unknown `tokenizer.ggml.pre` is an error (HF silently
//! falls back to the GPT-2 regex), and `add_space_prefix = false` is honoured
//! (HF 5.x always prepends `▁`; transformers 4.x and llama.cpp do not).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::weights::gguf::{GgufFile, GgufValue};

/// llama.cpp's `tokenizer.ggml.token_type` values.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer metadata of a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer regex a `gpt2` vocabulary was trained with.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One of [`token_type`] per token (empty: all normal).
    pub token_types: Vec<i32>,
    /// SentencePiece scores (required by `llama`, unused by `gpt2`).
    pub scores: Vec<f32>,
    /// `"left right"` pairs, best first (`gpt2`; rebuilt from the scores when absent).
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// End-of-turn / end-of-message tokens (`tokenizer.ggml.eot_token_id`, `eom_token_id`).
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// Whether SentencePiece text gets a leading `▁` (`tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
}

/// `tokenizer.ggml.pre` values and the split regex each one means (`None`: GPT-2's).
const PRE_TOKENIZERS: &[(&str, Option<&str>)] = &[
    ("default", None),
    ("gpt2", None),
    ("gpt-2", None),
    ("phi-2", None),
    // llama.cpp isolates digits first for these; HF's GGUF loader does not (see module docs).
    ("smollm", None),
    ("starcoder", None),
    ("refact", None),
    ("llama3", Some(LLAMA3_SPLIT)),
    ("llama-v3", Some(LLAMA3_SPLIT)),
    ("llama-bpe", Some(LLAMA3_SPLIT)),
    ("falcon3", Some(LLAMA3_SPLIT)),
    ("falcon-h1", Some(LLAMA3_SPLIT)),
    ("pixtral", Some(LLAMA3_SPLIT)),
    ("midm-2.0", Some(LLAMA3_SPLIT)),
    ("lfm2", Some(LLAMA3_SPLIT)),
    ("dbrx", Some(LLAMA3_SPLIT)),
    ("smaug-bpe", Some(LLAMA3_SPLIT)),
    ("tekken", Some(TEKKEN_SPLIT)),
    ("qwen2", Some(QWEN2_SPLIT)),
    ("deepseek-r1-qwen", Some(QWEN2_SPLIT)),
    ("megrez", Some(QWEN2_SPLIT)),
    ("gpt-4o", Some(GPT4O_SPLIT)),
    ("llama4", Some(GPT4O_SPLIT)),
];

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Special-token names in the order HF adds them (`SPECIAL_TOKENS_ATTRIBUTES`).
const NAMED_SPECIALS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

impl GgufVocab {
    /// Reads the `tokenizer.*` keys of a GGUF file's metadata.
    pub fn from_metadata(meta: &BTreeMap<String, GgufValue>) -> Result<GgufVocab> {
        let model = match meta.get("tokenizer.ggml.model") {
            Some(v) => string(v, "tokenizer.ggml.model")?,
            None => {
                return Err(Error::InvalidTokenizer(
                    "the GGUF file has no tokenizer (`tokenizer.ggml.model` is missing); \
                     load a tokenizer.json instead"
                        .into(),
                ))
            }
        };
        let key = |k: &str| meta.get(&format!("tokenizer.ggml.{k}"));
        let strings = |k: &str| -> Result<Vec<String>> {
            key(k).map_or(Ok(Vec::new()), |v| {
                array(v, k)?.iter().map(|t| string(t, k)).collect::<Result<Vec<_>>>()
            })
        };
        let id = |k: &str| -> Result<Option<u32>> {
            key(k)
                .map(|v| {
                    v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| bad(k, "a token id", v))
                })
                .transpose()
        };
        let flag = |k: &str| -> Result<Option<bool>> {
            key(k).map(|v| v.as_bool().ok_or_else(|| bad(k, "a boolean", v))).transpose()
        };
        let token_types = match key("token_type") {
            Some(v) => array(v, "token_type")?
                .iter()
                .map(|t| {
                    t.as_i64()
                        .and_then(|x| i32::try_from(x).ok())
                        .ok_or_else(|| bad("token_type", "integers", t))
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let scores = match key("scores") {
            Some(v) => array(v, "scores")?
                .iter()
                .map(|s| s.as_f64().map(|x| x as f32).ok_or_else(|| bad("scores", "numbers", s)))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let is_spm = model == "llama";
        let chat_template =
            meta.get("tokenizer.chat_template").map(|v| string(v, "chat_template")).transpose()?;
        let vocab = GgufVocab {
            pre: key("pre").map(|v| string(v, "pre")).transpose()?,
            tokens: strings("tokens")?,
            token_types,
            scores,
            merges: strings("merges")?,
            bos: id("bos_token_id")?,
            eos: id("eos_token_id")?,
            unk: id("unknown_token_id")?,
            pad: id("padding_token_id")?,
            eot: id("eot_token_id")?,
            eom: id("eom_token_id")?,
            // Older SentencePiece files have no flag, and llama.cpp adds BOS to them (as HF does).
            add_bos: flag("add_bos_token")?.unwrap_or(is_spm),
            add_eos: flag("add_eos_token")?.unwrap_or(false),
            add_space_prefix: flag("add_space_prefix")?.unwrap_or(true),
            chat_template,
            model,
        };
        vocab.validate()?;
        Ok(vocab)
    }

    /// Reads the tokenizer metadata of a GGUF file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<GgufVocab> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::NotFound { what: "GGUF file", path: path.to_path_buf() });
        }
        GgufVocab::from_metadata(GgufFile::open(path)?.metadata())
    }

    fn validate(&self) -> Result<()> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(Error::InvalidTokenizer(
                "the GGUF vocabulary (`tokenizer.ggml.tokens`) is empty".into(),
            ));
        }
        if !self.token_types.is_empty() && self.token_types.len() != n {
            return Err(Error::InvalidTokenizer(format!(
                "`tokenizer.ggml.token_type` has {} entries for {n} tokens",
                self.token_types.len()
            )));
        }
        if !self.scores.is_empty() && self.scores.len() != n {
            return Err(Error::InvalidTokenizer(format!(
                "`tokenizer.ggml.scores` has {} entries for {n} tokens",
                self.scores.len()
            )));
        }
        for (name, id) in [("bos", self.bos), ("eos", self.eos), ("unk", self.unk), ("pad", self.pad)]
            .into_iter()
            .chain([("eot", self.eot), ("eom", self.eom)])
        {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(Error::InvalidTokenizer(format!(
                    "`tokenizer.ggml.{name}_token_id` is {id} but the vocabulary has {n} tokens"
                )));
            }
        }
        Ok(())
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(token_type::NORMAL)
    }

    /// The token text of `id`, if `id` is set.
    pub fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|id| self.tokens.get(id as usize)).map(String::as_str)
    }

    /// `(name, token)` of the bos/eos/unk/pad tokens that are set, as chat templates see them.
    pub fn special_tokens(&self) -> Vec<(String, String)> {
        NAMED_SPECIALS
            .iter()
            .zip([self.bos, self.eos, self.unk, self.pad])
            .filter_map(|(name, id)| self.token(id).map(|t| (name.to_string(), t.to_string())))
            .collect()
    }

    /// The HF tokenizer this vocabulary describes.
    pub fn build(&self) -> Result<tokenizers::Tokenizer> {
        self.validate()?;
        let mut tokenizer = match self.model.as_str() {
            "gpt2" => self.byte_level()?,
            "llama" => self.sentencepiece()?,
            other => {
                return Err(Error::Unsupported(format!(
                    "GGUF tokenizer model `{other}` is not supported; supported: `gpt2` (byte-level BPE) \
                     and `llama` (SentencePiece BPE)"
                )))
            }
        };
        self.add_tokens(&mut tokenizer);
        tokenizer.with_post_processor(Some(self.post_processor()?));
        Ok(tokenizer)
    }

    /// Byte-level BPE (HF `byte_level_tokenizer` + `set_split_regex`).
    fn byte_level(&self) -> Result<tokenizers::Tokenizer> {
        let split = self.split_regex()?;
        let alphabet = byte_alphabet();
        let mut vocab = HashMap::with_capacity(self.tokens.len());
        for (id, token) in self.tokens.iter().enumerate() {
            let spelled = if token.chars().all(|c| alphabet.contains(&c)) {
                token.clone()
            } else {
                token.bytes().map(|b| BYTES_TO_UNICODE[b as usize]).collect()
            };
            vocab.insert(spelled, id as u32);
        }
        let merges = if self.merges.is_empty() { self.generate_merges(&vocab)? } else { self.file_merges()? };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(String::new())
            .fuse_unk(false)
            .build()
            .map_err(|e| Error::InvalidTokenizer(format!("GGUF byte-level BPE: {e}")))?;
        let mut tokenizer = tokenizers::Tokenizer::new(bpe);
        let pre: PreTokenizerWrapper = match split {
            None => ByteLevel::new(false, true, true).into(),
            Some(regex) => {
                let split =
                    Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
                        .map_err(|e| Error::InvalidTokenizer(format!("pre-tokenizer regex: {e}")))?;
                PreTokenizerSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()])
                    .into()
            }
        };
        tokenizer.with_pre_tokenizer(Some(pre));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        Ok(tokenizer)
    }

    /// SentencePiece BPE with byte fallback (HF `sentencepiece_tokenizer` + `LlamaTokenizer`).
    fn sentencepiece(&self) -> Result<tokenizers::Tokenizer> {
        if self.scores.is_empty() && self.merges.is_empty() {
            return Err(Error::InvalidTokenizer(
                "a `llama` (SentencePiece) GGUF vocabulary needs `tokenizer.ggml.scores` or merges".into(),
            ));
        }
        let vocab: HashMap<String, u32> =
            self.tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
        let merges = if self.merges.is_empty() { self.generate_merges(&vocab)? } else { self.file_merges()? };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .map_err(|e| Error::InvalidTokenizer(format!("GGUF SentencePiece vocabulary: {e}")))?;
        let mut tokenizer = tokenizers::Tokenizer::new(bpe);
        let scheme = if self.add_space_prefix { PrependScheme::First } else { PrependScheme::Never };
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
        let replace = Replace::new("▁", " ").map_err(|e| Error::InvalidTokenizer(e.to_string()))?;
        let mut decoders: Vec<DecoderWrapper> =
            vec![replace.into(), ByteFallback::new().into(), Fuse::new().into()];
        if self.add_space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
        Ok(tokenizer)
    }

    fn split_regex(&self) -> Result<Option<&'static str>> {
        let pre = self.pre.as_deref().unwrap_or("default");
        PRE_TOKENIZERS.iter().find(|(name, _)| *name == pre).map(|(_, regex)| *regex).ok_or_else(|| {
            let names: Vec<_> = PRE_TOKENIZERS.iter().map(|(n, _)| *n).collect();
            Error::Unsupported(format!(
                "GGUF pre-tokenizer `tokenizer.ggml.pre = {pre}` is not supported; supported: {}",
                names.join(", ")
            ))
        })
    }

    fn file_merges(&self) -> Result<Vec<(String, String)>> {
        self.merges
            .iter()
            .map(|m| {
                let mut parts = m.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                    _ => Err(Error::InvalidTokenizer(format!(
                        "merge `{m}` is not two tokens separated by a space"
                    ))),
                }
            })
            .collect()
    }

    /// Merges recovered from a vocabulary and its scores, as HF's `generate_merges`:
    /// every split of a token into two tokens of the vocabulary, ordered by the
    /// score of the merged token (best first), then by longer left and right parts.
    fn generate_merges(&self, vocab: &HashMap<String, u32>) -> Result<Vec<(String, String)>> {
        if self.scores.is_empty() {
            return Err(Error::InvalidTokenizer(
                "the GGUF vocabulary has neither `tokenizer.ggml.merges` nor `tokenizer.ggml.scores`".into(),
            ));
        }
        // The merges are sorted by score: NaN has no place in that order (and
        // a comparison that is no total order makes the sort panic).
        if let Some(i) = self.scores.iter().position(|s| s.is_nan()) {
            return Err(Error::InvalidTokenizer(format!(
                "`tokenizer.ggml.scores` is NaN for token {i} (`{}`); scores must be numbers",
                self.tokens.get(i).map_or("", String::as_str)
            )));
        }
        // Python's `dict(zip(tokens, scores))`: first position, last score.
        let mut order: Vec<&str> = Vec::with_capacity(self.tokens.len());
        let mut score: HashMap<&str, f32> = HashMap::with_capacity(self.tokens.len());
        for (token, &s) in self.tokens.iter().zip(&self.scores) {
            if score.insert(token, s).is_none() {
                order.push(token);
            }
        }
        let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
        let mut local = Vec::new();
        for token in order {
            local.clear();
            for (i, _) in token.char_indices().skip(1) {
                let (l, r) = token.split_at(i);
                if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                    local.push((li, ri, l, r));
                }
            }
            local.sort_by_key(|&(li, ri, _, _)| (li, ri));
            let s = score[token];
            merges.extend(local.iter().map(|&(_, _, l, r)| (l, r, s, l.chars().count(), r.chars().count())));
        }
        // Stable and descending: Python's `sorted(..., reverse=True)`.
        merges.sort_by(|a, b| {
            b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4))
        });
        Ok(merges.into_iter().map(|(l, r, ..)| (l.to_string(), r.to_string())).collect())
    }

    /// Control tokens as special tokens, user-defined ones as plain added tokens,
    /// then the named special tokens not added yet (HF's `add_gguf_special_tokens`
    /// followed by `TokenizersBackend.__init__`).
    fn add_tokens(&self, tokenizer: &mut tokenizers::Tokenizer) {
        let byte_level = self.model == "gpt2";
        let alphabet = byte_alphabet();
        let typed = |wanted: i32| {
            self.tokens
                .iter()
                .enumerate()
                .filter(move |&(id, _)| self.token_type(id) == wanted)
                .map(|(_, t)| t)
        };
        let control: Vec<AddedToken> = typed(token_type::CONTROL)
            // A control token spelled outside the byte alphabet is a llama.cpp mislabel.
            .filter(|t| !byte_level || t.chars().all(|c| alphabet.contains(&c)))
            .map(|t| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        tokenizer.add_special_tokens(&control);
        let user: Vec<AddedToken> = typed(token_type::USER_DEFINED)
            .filter(|t| tokenizer.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        tokenizer.add_tokens(&user);
        let added: HashSet<String> =
            tokenizer.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        let named: Vec<AddedToken> = [self.bos, self.eos, self.unk, self.pad]
            .into_iter()
            .filter_map(|id| self.token(id))
            .filter(|t| !added.contains(*t))
            .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        for token in named {
            tokenizer.add_special_tokens(std::slice::from_ref(&token));
        }
    }

    /// `[bos] $A [eos]` as HF's `update_post_processor` writes it.
    fn post_processor(&self) -> Result<TemplateProcessing> {
        let bos = self.token(self.bos).filter(|_| self.add_bos).zip(self.bos);
        let eos = self.token(self.eos).filter(|_| self.add_eos).zip(self.eos);
        super::bos_eos_processor(bos, eos)
    }
}

fn string(v: &GgufValue, key: &str) -> Result<String> {
    v.as_str().map(str::to_string).ok_or_else(|| bad(key, "a string", v))
}

fn array<'a>(v: &'a GgufValue, key: &str) -> Result<&'a [GgufValue]> {
    v.as_array().ok_or_else(|| bad(key, "an array", v))
}

fn bad(key: &str, expected: &str, got: &GgufValue) -> Error {
    let key = if key.contains('.') { key.to_string() } else { format!("tokenizer.ggml.{key}") };
    Error::InvalidTokenizer(format!("GGUF metadata `{key}` should be {expected}, found {}", got.type_name()))
}

/// GPT-2's printable spelling of every byte (`bytes_to_unicode`).
pub(super) const BYTES_TO_UNICODE: [char; 256] = bytes_to_unicode();

const fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        let code = if printable {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
}

fn byte_alphabet() -> HashSet<char> {
    BYTES_TO_UNICODE.iter().copied().collect()
}
