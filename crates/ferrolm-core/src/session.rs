//! A conversation with a model: chat-templated turns whose KV cache is kept
//! between turns, streamed as UTF-8-safe text pieces.
//!
//! Each turn renders the whole conversation with the model's chat template,
//! tokenizes it, and prefills only what the cache does not already hold (the
//! longest common prefix with the cached tokens), so earlier turns are not
//! recomputed. Models without a chat template continue plain text instead.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generate::{Decoding, FinishReason, Request};
use crate::kv::KvCache;
use crate::model::Transformer;
use crate::sampling::{Sampled, Sampler, SamplingConfig};
use crate::stop::StopStrings;
use crate::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};

/// What a finished turn produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSummary {
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the cache instead of being recomputed.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// Each output token with its log-probability and the top alternatives,
    /// when the turn's `SamplingConfig::logprobs` asked for them.
    pub logprobs: Vec<Sampled>,
}

struct Turn {
    decoding: Decoding,
    stream: StreamDecoder,
    stops: StopStrings,
    text: String,
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
    logprobs: Option<Vec<Sampled>>,
    finish: Option<FinishReason>,
    /// The user's message, recorded in the history when the turn ends (None for raw completions).
    user: Option<ChatMessage>,
}

/// A multi-turn conversation over one model (one KV cache slot).
pub struct Session<B: Backend> {
    model: Arc<Transformer<B>>,
    tokenizer: Tokenizer,
    cache: KvCache<B>,
    system_prompt: Option<String>,
    history: Vec<ChatMessage>,
    /// Tokens whose keys/values sit in the cache, in order.
    cached: Vec<u32>,
    turn: Option<Turn>,
    last: Option<TurnSummary>,
}

impl<B: Backend> Session<B> {
    pub fn new(model: Arc<Transformer<B>>, tokenizer: Tokenizer) -> Result<Self> {
        let cache = model.new_cache(1)?;
        Ok(Session {
            model,
            tokenizer,
            cache,
            system_prompt: None,
            history: Vec::new(),
            cached: Vec::new(),
            turn: None,
            last: None,
        })
    }

    /// Opens a model directory or `.gguf` file with its tokenizer.
    pub fn from_pretrained(path: impl AsRef<std::path::Path>, max_seq_len: Option<usize>) -> Result<Self>
    where
        B: Default,
    {
        let path = path.as_ref();
        let model = Transformer::from_pretrained(path, max_seq_len)?;
        let tokenizer = Tokenizer::from_pretrained(path)?;
        Session::new(Arc::new(model), tokenizer)
    }

    pub fn model(&self) -> &Transformer<B> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The system prompt used by every later turn (`None` removes it).
    pub fn set_system_prompt(&mut self, prompt: Option<String>) {
        self.system_prompt = prompt;
    }

    /// Forgets the conversation. The cache keeps its tokens, so a new
    /// conversation that starts the same way (same system prompt) reuses them.
    pub fn reset(&mut self) {
        self.end_turn();
        self.history.clear();
    }

    /// The messages of the conversation so far (without the system prompt).
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// Starts a chat turn answering `prompt`; read the answer with
    /// [`Session::next_piece`]. `system_prompt` overrides the session's for
    /// this turn. An unfinished earlier turn is ended first (its partial
    /// answer stays in the conversation).
    pub fn start_turn(
        &mut self,
        prompt: &str,
        config: SamplingConfig,
        system_prompt: Option<&str>,
    ) -> Result<()> {
        self.end_turn();
        let user = ChatMessage::user(prompt);
        let tokens = match self.tokenizer.chat_template() {
            Some(_) => {
                let mut messages = Vec::new();
                if let Some(system) = system_prompt.or(self.system_prompt.as_deref()) {
                    messages.push(ChatMessage::system(system));
                }
                messages.extend(self.history.iter().cloned());
                messages.push(user.clone());
                let extra = json!({ "enable_thinking": config.reasoning_mode == 1 });
                let text = self.tokenizer.apply_chat_template(&messages, true, &extra)?;
                self.tokenizer.encode(&text, false)?
            }
            None => {
                // No template: the conversation is one running text.
                let mut text = String::new();
                if let Some(system) = system_prompt.or(self.system_prompt.as_deref()) {
                    text.push_str(system);
                    text.push_str("\n\n");
                }
                for m in self.history.iter().chain(std::iter::once(&user)) {
                    text.push_str(&m.content);
                }
                self.tokenizer.encode(&text, true)?
            }
        };
        self.begin(tokens, config, Some(user))
    }

    /// Starts a raw completion of `text` (no template, no conversation).
    pub fn start_completion(&mut self, text: &str, config: SamplingConfig) -> Result<()> {
        self.end_turn();
        let tokens = self.tokenizer.encode(text, true)?;
        self.begin(tokens, config, None)
    }

    fn begin(&mut self, tokens: Vec<u32>, config: SamplingConfig, user: Option<ChatMessage>) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        let max = self.cache.max_seq_len();
        if tokens.len() >= max {
            return Err(Error::ContextOverflow { needed: tokens.len() + 1, max_seq_len: max });
        }
        // Reuse the cached prefix; at least one token must run to give logits.
        let common = self.cached.iter().zip(&tokens).take_while(|(a, b)| a == b).count();
        let reuse = common.min(tokens.len() - 1);
        let stops = StopStrings::new(config.stop.clone());
        let logprobs = config.logprobs.map(|_| Vec::new());
        let sampler = Sampler::new(config, 0)?;
        let prompt_tokens = tokens.len();
        // Whatever happens next, the cache no longer holds more than the reused prefix.
        self.cached.truncate(reuse);
        let request = Request { slot: 0, tokens, cached: reuse, sampler };
        let eos = self.tokenizer.eos_ids().to_vec();
        let decoding = Decoding::start(&self.model, &mut self.cache, vec![request], &eos, false)?;
        self.turn = Some(Turn {
            decoding,
            stream: self.tokenizer.stream_decoder(true),
            stops,
            text: String::new(),
            prompt_tokens,
            cached_tokens: reuse,
            completion_tokens: 0,
            logprobs,
            finish: None,
            user,
        });
        Ok(())
    }

    /// The next piece of the answer, `Ok(None)` once the turn has ended.
    pub fn next_piece(&mut self) -> Result<Option<String>> {
        loop {
            let Some(turn) = self.turn.as_mut() else { return Ok(None) };
            if turn.finish.is_some() {
                self.end_turn();
                return Ok(None);
            }
            let mut piece = String::new();
            for event in turn.decoding.step(&self.model, &mut self.cache)? {
                if let Some(s) = event.sampled {
                    turn.completion_tokens += 1;
                    piece += &turn.stream.push(s.token)?;
                    if let Some(all) = turn.logprobs.as_mut() {
                        all.push(s);
                    }
                }
                if let Some(f) = event.finish {
                    turn.finish = Some(f);
                    piece += &turn.stream.flush()?;
                }
            }
            let (emit, stopped) = turn.stops.feed(&piece, turn.finish.is_some());
            if stopped {
                turn.finish = Some(FinishReason::Stop);
                turn.decoding.finish(0);
            }
            turn.text += &emit;
            if !emit.is_empty() {
                return Ok(Some(emit));
            }
        }
    }

    /// Runs the current turn to its end and returns its whole text.
    pub fn finish_turn(&mut self) -> Result<String> {
        let mut text = String::new();
        while let Some(piece) = self.next_piece()? {
            text += &piece;
        }
        Ok(self.last.as_ref().map_or(text, |s| s.text.clone()))
    }

    /// What the last finished turn produced.
    pub fn last_turn(&self) -> Option<&TurnSummary> {
        self.last.as_ref()
    }

    /// Records the current turn (if any) in the conversation.
    fn end_turn(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        let positions = self.cache.len(0);
        self.cached = turn.decoding.tokens(0)[..positions].to_vec();
        if let Some(user) = turn.user {
            self.history.push(user);
            self.history.push(ChatMessage::assistant(turn.text.clone()));
        }
        self.last = Some(TurnSummary {
            text: turn.text,
            finish: turn.finish.unwrap_or(FinishReason::Stop),
            prompt_tokens: turn.prompt_tokens,
            cached_tokens: turn.cached_tokens,
            completion_tokens: turn.completion_tokens,
            logprobs: turn.logprobs.unwrap_or_default(),
        });
    }

    /// A description of the model (what `get_model_info` returns).
    pub fn model_info(&self) -> Value {
        let c = &self.model.config;
        json!({
            "architecture": c.family.architecture(),
            "context_length": c.max_position_embeddings,
            "max_seq_len": c.max_seq_len,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "intermediate_size": c.intermediate_size,
            "parameters": c.parameter_count(),
            "dtype": c.dtype.name(),
            "device": self.model.device().to_string(),
            "bos_token_id": self.tokenizer.bos_id(),
            "eos_token_ids": self.tokenizer.eos_ids(),
            "has_chat_template": self.tokenizer.chat_template().is_some(),
        })
    }
}
