//! One request inside the engine: its tokens, how many of them the KV cache
//! holds, its sampler, and the text pipeline (streaming detokenizer and stop
//! strings) that turns drawn tokens into [`Output`]s.

use std::sync::mpsc::Sender;

use super::request::{FinishReason, GenerationRequest, Output, OutputKind, RequestId, Usage};
use super::ticket::Ticket;
use crate::error::Result;
use crate::kv::SeqId;
use crate::sampling::{Sampled, Sampler};
use crate::stop::StopStrings;
use crate::tokenizer::{StreamDecoder, Tokenizer};

pub(crate) struct Sequence {
    pub id: RequestId,
    /// Prompt followed by the tokens generated so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose keys/values are in the cache.
    pub computed: usize,
    /// The cache sequence while the request holds pages.
    pub seq: Option<SeqId>,
    pub sampler: Sampler,
    pub cached_tokens: Option<usize>,
    /// A sibling of a parallel-sampling group waits for this request's
    /// prompt, then forks its KV pages instead of computing them again.
    pub fork_from: Option<RequestId>,
    /// Position in its group (0 for a lone request).
    pub index: usize,
    /// Its prompt came from its leader's pages (so it is not counted again).
    pub forked: bool,
    pub prompt_logprobs: Option<Vec<f32>>,
    text: Option<(StreamDecoder, StopStrings)>,
    /// A stop string matched: text after it is not part of the answer.
    stop_matched: bool,
    /// Its place in the count of requests not yet admitted (`max_waiting`),
    /// dropped at its first admission; `None` for one driven by hand.
    pub ticket: Option<Ticket>,
    /// Where outputs go; `None` for a request driven by hand
    /// ([`super::SteppedScheduler`]), whose caller reads its tokens directly.
    sink: Option<Sender<Output>>,
}

/// What drawing a token did to a sequence.
pub(crate) enum Drawn {
    Continue,
    Finished(FinishReason),
    /// The caller is gone (its receiver was dropped).
    Disconnected,
}

impl Sequence {
    pub fn new(
        id: RequestId,
        request: GenerationRequest,
        tokenizer: Option<&Tokenizer>,
        sink: Option<Sender<Output>>,
    ) -> Result<Sequence> {
        let stops = StopStrings::new(request.sampling.stop.clone());
        let sampler = Sampler::new(request.sampling, request.stream)?;
        Ok(Sequence {
            id,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            computed: 0,
            seq: None,
            sampler,
            cached_tokens: None,
            fork_from: None,
            index: 0,
            forked: false,
            prompt_logprobs: request.prompt_logprobs.then(|| vec![0.0]),
            text: tokenizer.map(|t| (t.stream_decoder(true), stops)),
            stop_matched: false,
            ticket: None,
            sink,
        })
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether a chunk starting at `start` covers prompt positions whose
    /// log-probabilities were asked for (then all its logits rows are needed).
    pub fn wants_prompt_logprobs(&self, start: usize) -> bool {
        self.prompt_logprobs.is_some() && start < self.prompt_len
    }

    /// Tokens still to run through the model before the next draw.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Samples the next token from `logits`, streams it, and says whether the
    /// request is over. `max_seq_len` bounds prompt plus output.
    pub fn draw(&mut self, logits: &[f32], eos: &[u32], max_seq_len: usize) -> Result<Drawn> {
        if let Some(full) = self.out_of_room(max_seq_len) {
            return Ok(full);
        }
        let sampled = self.sampler.sample(logits, &self.tokens)?;
        self.accept(sampled, eos, max_seq_len)
    }

    /// Whether no further token may be drawn (`max_tokens` or `max_seq_len` reached).
    pub fn out_of_room(&self, max_seq_len: usize) -> Option<Drawn> {
        (self.generated() >= self.sampler.config().max_tokens || self.tokens.len() >= max_seq_len)
            .then_some(Drawn::Finished(FinishReason::Length))
    }

    /// Takes a token picked elsewhere (on the device, or by the caller of a
    /// [`super::SteppedScheduler`]), unless no further token may be drawn.
    pub fn accept_picked(
        &mut self,
        token: u32,
        logprob: f32,
        eos: &[u32],
        max_seq_len: usize,
    ) -> Result<Drawn> {
        if let Some(full) = self.out_of_room(max_seq_len) {
            return Ok(full);
        }
        self.sampler.commit(token)?;
        self.accept(Sampled { token, logprob, top_logprobs: Vec::new() }, eos, max_seq_len)
    }

    /// Takes a drawn token (sampled here, or picked elsewhere), streams it,
    /// and says whether the request is over.
    pub fn accept(&mut self, sampled: Sampled, eos: &[u32], max_seq_len: usize) -> Result<Drawn> {
        let config = self.sampler.config();
        // `ignore_eos` runs on past end-of-sequence, but not past a complete
        // constraint: nothing else could follow.
        let ends = !config.ignore_eos || self.sampler.constraint_finished();
        if (ends && eos.contains(&sampled.token)) || config.stop_token_ids.contains(&sampled.token) {
            return Ok(Drawn::Finished(FinishReason::Stop));
        }
        self.tokens.push(sampled.token);
        let mut finish = (self.generated() >= config.max_tokens || self.tokens.len() >= max_seq_len)
            .then_some(FinishReason::Length);
        let text = match self.text.as_mut() {
            Some((stream, stops)) => {
                let mut piece = stream.push(sampled.token)?;
                if finish.is_some() {
                    piece += &stream.flush()?;
                }
                let (emit, stopped) = stops.feed(&piece, finish.is_some());
                if stopped {
                    self.stop_matched = true;
                    finish = Some(FinishReason::Stop);
                }
                emit
            }
            None => String::new(),
        };
        if !self.send(OutputKind::Token { sampled, text }) {
            return Ok(Drawn::Disconnected);
        }
        Ok(finish.map_or(Drawn::Continue, Drawn::Finished))
    }

    /// Sends the last output: whatever text was held back, and the usage.
    pub fn finish(&mut self, reason: FinishReason) -> Result<()> {
        let text = match self.text.as_mut() {
            // After a stop string, the held-back text is not part of the answer.
            Some((stream, stops)) if !self.stop_matched => {
                let tail = stream.flush()?;
                stops.feed(&tail, true).0
            }
            _ => String::new(),
        };
        let usage = Usage {
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens.unwrap_or(0),
            completion_tokens: self.generated(),
        };
        let prompt_logprobs = self.prompt_logprobs.take();
        self.send(OutputKind::Finished { reason, text, usage, prompt_logprobs });
        Ok(())
    }

    /// Sends a failure (the request is over).
    pub fn fail(&self, error: crate::Error) {
        self.send(OutputKind::Failed(error));
    }

    /// Sends an output; false when nobody listens any more.
    fn send(&self, kind: OutputKind) -> bool {
        let output = || Output { request: self.id, index: self.index, kind };
        self.sink.as_ref().is_none_or(|sink| sink.send(output()).is_ok())
    }
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("id", &self.id)
            .field("prompt_len", &self.prompt_len)
            .field("generated", &self.generated())
            .field("computed", &self.computed)
            .finish()
    }
}
