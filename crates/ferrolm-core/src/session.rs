//! A conversation with a model: chat-templated turns whose KV cache is kept
//! between turns, streamed as UTF-8-safe text pieces.
//!
//! Each turn renders the whole conversation with the model's chat template,
//! tokenizes it, and prefills only what the prefix cache does not already
//! hold (the full KV pages it shares with earlier turns), so earlier turns
//! are not recomputed. Models without a chat template continue plain text instead.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::engine::{Completion, Engine, EngineConfig, FinishReason, GenerationRequest, RequestHandle};
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::sampling::{Sampled, SamplingConfig};
use crate::tokenizer::{ChatMessage, Tokenizer};

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
    handle: RequestHandle,
    done: Completion,
    prompt_tokens: usize,
    want_logprobs: bool,
    /// The user's message, recorded in the history when the turn ends (None for raw completions).
    user: Option<ChatMessage>,
}

/// A multi-turn conversation over one model. Turns run through a private
/// [`Engine`] whose prefix cache keeps the conversation's KV pages between
/// turns, so each turn computes little more than its new tokens.
pub struct Session<B: Backend> {
    engine: Engine<B>,
    tokenizer: Tokenizer,
    system_prompt: Option<String>,
    history: Vec<ChatMessage>,
    turn: Option<Turn>,
    last: Option<TurnSummary>,
}

impl<B: Backend + 'static> Session<B> {
    pub fn new(model: Arc<Transformer<B>>, tokenizer: Tokenizer) -> Result<Self> {
        Self::with_config(model, tokenizer, EngineConfig { num_pages: None, ..EngineConfig::default() })
    }

    /// [`Session::new`] with the engine's page size, pool size, batch token
    /// budget and prefix caching taken from `config` (one conversation runs
    /// at a time, so `max_num_seqs` is 1; without `num_pages`, the pool
    /// holds one full-length conversation).
    pub fn with_config(
        model: Arc<Transformer<B>>,
        tokenizer: Tokenizer,
        config: EngineConfig,
    ) -> Result<Self> {
        let num_pages = config.num_pages.or(Some(model.config.max_seq_len.div_ceil(config.page_size.max(1))));
        let config = EngineConfig { num_pages, max_num_seqs: 1, ..config };
        Ok(Session {
            engine: Engine::new(model, Some(tokenizer.clone()), config)?,
            tokenizer,
            system_prompt: None,
            history: Vec::new(),
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
        self.engine.model()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The system prompt used by every later turn (`None` removes it).
    pub fn set_system_prompt(&mut self, prompt: Option<String>) {
        self.system_prompt = prompt;
    }

    /// Forgets the conversation. The cache keeps its pages, so a new
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
        // A turn needs room for at least one token of answer.
        let max_seq_len = self.model().config.max_seq_len;
        if tokens.len() >= max_seq_len {
            return Err(Error::ContextOverflow { needed: tokens.len() + 1, max_seq_len });
        }
        let want_logprobs = config.logprobs.is_some();
        let prompt_tokens = tokens.len();
        let handle = self.engine.add_request(GenerationRequest::new(tokens, config))?;
        self.turn = Some(Turn { handle, done: Completion::default(), prompt_tokens, want_logprobs, user });
        Ok(())
    }

    /// The next piece of the answer, `Ok(None)` once the turn has ended.
    pub fn next_piece(&mut self) -> Result<Option<String>> {
        loop {
            let Some(turn) = self.turn.as_mut() else { return Ok(None) };
            if let Some(output) = turn.handle.try_recv() {
                let text = output.text().to_string();
                if let Err(e) = turn.done.absorb(output) {
                    self.turn = None;
                    return Err(e);
                }
                if !text.is_empty() {
                    return Ok(Some(text));
                }
            } else if turn.done.finish.is_some() || !self.engine.has_work() && turn.handle.is_closed() {
                self.end_turn();
                return Ok(None);
            } else {
                self.engine.step()?;
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

    /// Records the current turn (if any) in the conversation; an unfinished
    /// one is cancelled and keeps the answer so far.
    fn end_turn(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        if turn.done.finish.is_none() {
            self.engine.abort(turn.handle.id);
            // Let the engine release the request's pages now.
            let _ = self.engine.step();
        }
        let done = turn.done;
        if let Some(user) = turn.user {
            self.history.push(user);
            self.history.push(ChatMessage::assistant(done.text.clone()));
        }
        self.last = Some(TurnSummary {
            finish: done.finish.unwrap_or(FinishReason::Stop),
            prompt_tokens: turn.prompt_tokens,
            cached_tokens: done.usage.cached_tokens,
            completion_tokens: done.tokens.len(),
            logprobs: if turn.want_logprobs { done.logprobs } else { Vec::new() },
            text: done.text,
        });
    }

    /// A description of the model (what `get_model_info` returns).
    pub fn model_info(&self) -> Value {
        self.engine.model_info()
    }
}
