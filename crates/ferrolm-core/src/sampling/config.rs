//! `SamplingConfig`: every knob of the session API's `SamplingConfig` with its
//! defaults, plus stop
//! conditions and log-probabilities. Validation names the offending field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Constraint;
use crate::error::{Error, Result};

/// How to pick tokens and when to stop. Defaults are the session API's. Reads and
/// writes as JSON with these field names (unknown fields are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 disables).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 disables).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 disables).
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of recent tokens (1 disables).
    pub repetition_penalty: f32,
    /// Subtracted once per earlier occurrence of a token in the window.
    pub frequency_penalty: f32,
    /// Subtracted once from every token that occurs in the window.
    pub presence_penalty: f32,
    /// How many recent tokens (prompt included) the penalties look at.
    pub penalty_window: usize,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Fixes the random draws; `None` seeds from the operating system.
    pub seed: Option<u64>,
    /// 1 asks a reasoning model to think first (Qwen3's `enable_thinking`).
    pub reasoning_mode: u8,
    /// Generation ends before any of these strings appears in the output.
    pub stop: Vec<String>,
    /// Generation ends at any of these tokens (besides the model's end-of-sequence tokens).
    pub stop_token_ids: Vec<u32>,
    /// Report this many most likely alternatives per token (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
    /// Keep going past the model's end-of-sequence tokens (benchmarks);
    /// `stop_token_ids` and stop strings still end generation.
    pub ignore_eos: bool,
    /// Structured output: what the text must match (`None`: anything).
    /// Compiled per request against the model's tokenizer; see
    /// [`super::constraint`].
    pub constraint: Option<Constraint>,
    /// Added to the logits of these token ids before anything else but the
    /// constraint's mask (OpenAI's `logit_bias`: -100 all but bans a token,
    /// +100 all but forces it). Each bias is within [-100, 100].
    pub logit_bias: BTreeMap<u32, f32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.6,
            top_k: 20,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.1,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_window: 64,
            max_tokens: 512,
            seed: None,
            reasoning_mode: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            logprobs: None,
            ignore_eos: false,
            constraint: None,
            logit_bias: BTreeMap::new(),
        }
    }
}

/// Largest bias `logit_bias` may add or subtract (OpenAI's bound).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// Most alternatives `logprobs` may ask for.
pub const MAX_LOGPROBS: usize = 20;

impl SamplingConfig {
    /// Greedy decoding with no penalties: the model's own argmax.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingConfig { temperature: 0.0, ..Self::plain(max_tokens) }
    }

    /// Meta's llama sampling: temperature and top-p only, no other filter or penalty.
    pub fn temperature_top_p(temperature: f32, top_p: f32, max_tokens: usize, seed: Option<u64>) -> Self {
        SamplingConfig { temperature, top_p, seed, ..Self::plain(max_tokens) }
    }

    fn plain(max_tokens: usize) -> Self {
        SamplingConfig {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Parses the JSON form and validates it.
    pub fn from_json(json: &str) -> Result<SamplingConfig> {
        let config: SamplingConfig = serde_json::from_str(json)
            .map_err(|e| Error::InvalidInput(format!("invalid sampling config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::config(field, why));
        let finite = |v: f32| v.is_finite();
        if !(finite(self.temperature) && self.temperature >= 0.0) {
            return bad("temperature", format!("must be >= 0 (0 = greedy), got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if !(finite(self.repetition_penalty) && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("must be > 0 (1 = off), got {}", self.repetition_penalty),
            );
        }
        for (field, v) in
            [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)]
        {
            if !(finite(v) && (-2.0..=2.0).contains(&v)) {
                return bad(field, format!("must be in [-2, 2], got {v}"));
            }
        }
        if self.reasoning_mode > 1 {
            return bad("reasoning_mode", format!("must be 0 (off) or 1 (on), got {}", self.reasoning_mode));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "stop strings must not be empty".into());
        }
        if let Some(constraint) = &self.constraint {
            constraint.validate()?;
        }
        if let Some((t, b)) =
            self.logit_bias.iter().find(|(_, b)| !(b.is_finite() && b.abs() <= MAX_LOGIT_BIAS))
        {
            return bad("logit_bias", format!("token {t}: each bias must be in [-100, 100], got {b}"));
        }
        if self.logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return bad("logprobs", format!("at most {MAX_LOGPROBS} alternatives, got {:?}", self.logprobs));
        }
        Ok(())
    }

    /// Whether any penalty is active.
    pub(crate) fn has_penalties(&self) -> bool {
        self.penalty_window > 0
            && (self.repetition_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}
