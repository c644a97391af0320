//! Structured output: a [`Constraint`] (JSON schema, regex, fixed choices, a
//! Lark grammar or a llama.cpp GBNF grammar) compiled by llguidance into a
//! [`ConstraintMatcher`] that, at every step, masks a logits row down to the
//! tokens the grammar allows (the others become -inf) and then follows the
//! token that was picked.
//!
//! Per model there is one [`ConstraintFactory`]: a byte trie over the
//! tokenizer's vocabulary, padded to the logits' width, and llguidance's
//! `ParserFactory` with bounded [`limits`]. Building it takes a few hundred
//! milliseconds, so engines build it on the first constrained request and
//! share it (`Arc`); compiling one constraint takes about a millisecond.
//! The mask goes on before penalties, top-k, top-p, min-p and temperature
//! (vLLM's order), so every filter sees only tokens the grammar allows.
//! Once the grammar is complete only end-of-sequence tokens are allowed.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::gbnf::gbnf_to_lark;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What the generated text must match. Reads and writes as JSON with one key:
/// `{"json_schema": {...}}`, `{"regex": "..."}`, `{"choice": ["a", "b"]}`,
/// `{"grammar": "start: ..."}`, `{"gbnf": "root ::= ..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    /// A JSON document valid under this JSON Schema.
    JsonSchema(Json),
    /// Text matching this regular expression in full (llguidance's regex
    /// syntax, as Rust's `regex`, without look-around or back-references).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A context-free grammar in llguidance's Lark syntax (`start: ...`).
    Grammar(String),
    /// A grammar in llama.cpp's GBNF (`root ::= ...`), translated to Lark
    /// by [`gbnf_to_lark`].
    Gbnf(String),
}

/// Deepest nesting of objects and arrays a JSON schema may have: what
/// serde_json reads from text anyway. llguidance compiles a schema by
/// recursion, and a few thousand levels would overflow the stack.
pub const MAX_SCHEMA_DEPTH: usize = 128;

impl Constraint {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    pub fn json_object() -> Constraint {
        Constraint::JsonSchema(serde_json::json!({"type": "object"}))
    }

    /// Checks what can be checked without a tokenizer: a `choice` has
    /// strings, a schema is not nested past [`MAX_SCHEMA_DEPTH`].
    pub fn validate(&self) -> Result<()> {
        match self {
            Constraint::Choice(c) if c.is_empty() => {
                Err(Error::config("constraint", "`choice` needs at least one string"))
            }
            Constraint::JsonSchema(schema) if depth(schema) > MAX_SCHEMA_DEPTH => Err(Error::config(
                "constraint",
                format!("the JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels"),
            )),
            _ => Ok(()),
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar> {
        self.validate()?;
        Ok(match self {
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Choice(choices) => {
                // Lark string literals take JSON's escapes.
                let alternatives: Vec<String> =
                    choices.iter().map(|c| serde_json::to_string(c).expect("strings serialize")).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            Constraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Constraint::Gbnf(gbnf) => TopLevelGrammar::from_lark(gbnf_to_lark(gbnf).map_err(|e| {
                let why = match e {
                    Error::InvalidInput(why) => why,
                    other => other.to_string(),
                };
                Error::config("constraint", format!("invalid `gbnf` constraint: {why}"))
            })?),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "json_schema",
            Constraint::Regex(_) => "regex",
            Constraint::Choice(_) => "choice",
            Constraint::Grammar(_) => "grammar",
            Constraint::Gbnf(_) => "gbnf",
        }
    }
}

/// How deeply `value` nests objects and arrays (a scalar is 0), without
/// recursing: the value may be far deeper than the stack allows.
fn depth(value: &Json) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Json>> = match v {
            Json::Object(fields) => Box::new(fields.values()),
            Json::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        if deepest > MAX_SCHEMA_DEPTH {
            break;
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// `schema` with llguidance's JSON whitespace fixed to none between tokens
/// (`"x-guidance": {"whitespace_flexible": false}`) unless it says otherwise:
/// with flexible whitespace small models fill objects with newlines and tabs.
fn compact(schema: &Json) -> Json {
    let mut schema = schema.clone();
    if let Json::Object(fields) = &mut schema {
        fields.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// The bounds every compiled constraint runs under: llguidance's defaults,
/// with fewer lexer states (memory) and short error messages.
pub fn limits() -> ParserLimits {
    ParserLimits {
        // Grammar size (symbols in productions): a few megabytes of schema.
        max_grammar_size: 500_000,
        // Building the lexer: ~20 ms of work at most.
        initial_lexer_fuel: 1_000_000,
        // One mask: ~15 ms of lexer work and ~2.5 ms of parser items at most.
        step_lexer_fuel: 200_000,
        step_max_items: 50_000,
        max_items_in_row: 2_000,
        // ~1-2 kB each: bounds a constraint's lexer to ~100 MB.
        max_lexer_states: 50_000,
        precompute_large_lexemes: true,
        // Errors name the problem, not the whole grammar and token history.
        verbose_errors: false,
    }
}

/// llguidance's view of a tokenizer: the trie of token bytes and our encoder.
struct TokenEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for TokenEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer.encode(text, false).unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// Compiles constraints for one model (tokenizer plus logits width). Cheap
/// to share: clone the `Arc` it usually lives in.
pub struct ConstraintFactory {
    factory: ParserFactory,
}

impl std::fmt::Debug for ConstraintFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintFactory").field("vocab_size", &self.vocab_size()).finish()
    }
}

impl ConstraintFactory {
    /// The factory for `tokenizer` under logits `vocab_size` wide (the
    /// model's `vocab_size`, which may exceed the tokenizer's ids: padding).
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<ConstraintFactory> {
        let mut bytes = tokenizer.token_bytes()?;
        if bytes.len() > vocab_size {
            return Err(Error::Unsupported(format!(
                "constrained decoding: the tokenizer has {} token ids but the model's logits only {vocab_size}",
                bytes.len()
            )));
        }
        let eos: Vec<u32> =
            tokenizer.eos_ids().iter().copied().filter(|&t| (t as usize) < vocab_size).collect();
        let Some(&first_eos) = eos.first() else {
            return Err(Error::Unsupported(
                "constrained decoding needs an end-of-sequence token and this tokenizer declares none".into(),
            ));
        };
        bytes.resize(vocab_size, Vec::new());
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        // The trie asserts its invariants; a vocabulary that breaks them is
        // reported, not a crash.
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &bytes).with_eos_tokens(&eos))
            .map_err(|_| Error::InvalidTokenizer("its token bytes do not form a valid token trie".into()))?;
        let env: TokEnv = Arc::new(TokenEnv { trie, tokenizer: tokenizer.clone() });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Internal(format!("building the constraint parser factory: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = limits();
        Ok(ConstraintFactory { factory })
    }

    /// The logits width the masks cover.
    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// Compiles `constraint`; see [`compile`].
    pub fn compile(&self, constraint: &Constraint) -> Result<ConstraintMatcher> {
        compile(constraint, self)
    }
}

/// Compiles `constraint` into a fresh matcher. A constraint that does not
/// compile (a bad regex, an invalid schema, a grammar over the limits) is
/// [`Error::InvalidConfig`] of the field `constraint`, naming the problem.
pub fn compile(constraint: &Constraint, factory: &ConstraintFactory) -> Result<ConstraintMatcher> {
    let invalid =
        |e: String| Error::config("constraint", format!("invalid `{}` constraint: {e}", constraint.kind()));
    let parser = factory.factory.create_parser(constraint.grammar()?).map_err(|e| invalid(e.to_string()))?;
    let matcher = Matcher::new(Ok(parser));
    if let Some(e) = matcher.get_error() {
        return Err(invalid(e));
    }
    Ok(ConstraintMatcher { matcher, vocab_size: factory.vocab_size() })
}

/// One sequence's position in its grammar.
pub struct ConstraintMatcher {
    matcher: Matcher,
    vocab_size: usize,
}

impl std::fmt::Debug for ConstraintMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintMatcher").field("finished", &self.is_finished()).finish()
    }
}

impl ConstraintMatcher {
    /// The tokens allowed next, as a bit per token id: only end-of-sequence
    /// tokens once the grammar is complete.
    fn allowed(&mut self) -> Result<toktrie::SimpleVob> {
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| self.failed(e))?;
        if mask.is_zero() {
            return Err(Error::InvalidInput("constraint: no token can continue the output".into()));
        }
        Ok(mask)
    }

    /// Sets every logit the grammar does not allow next to -inf.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        if logits.len() != self.vocab_size {
            return Err(Error::Internal(format!(
                "constraint masks {} logits but the row has {}",
                self.vocab_size,
                logits.len()
            )));
        }
        let allowed = self.allowed()?;
        allowed.iter_unset_entries(|t| logits[t] = f32::NEG_INFINITY);
        Ok(())
    }

    /// Follows the token that was picked. Past the end of the grammar (an
    /// end-of-sequence token) there is nothing left to follow.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| self.failed(e))
    }

    /// Whether the output is complete (only end-of-sequence may follow).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the output so far is a whole text of the grammar, that is,
    /// whether an end-of-sequence token would be allowed now (it may also
    /// go on, unlike [`is_finished`](Self::is_finished)).
    pub fn accepts_eos(&mut self) -> Result<bool> {
        // A matcher in error is "stopped" too: ask it first, so errors surface.
        let accepting = self.matcher.is_accepting().map_err(|e| self.failed(e))?;
        Ok(accepting || self.matcher.is_stopped())
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        Error::InvalidInput(format!(
            "constraint: {}",
            self.matcher.get_error().unwrap_or_else(|| e.to_string())
        ))
    }
}
