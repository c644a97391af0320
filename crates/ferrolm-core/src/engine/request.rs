//! What goes into the engine (a [`GenerationRequest`]) and what comes out
//! ([`Output`]s on a [`RequestHandle`]).

use std::sync::mpsc::Receiver;

use crate::error::{Error, Result};
use crate::sampling::{Sampled, SamplingConfig};

/// Engine-wide request number, unique for the engine's lifetime.
pub type RequestId = u64;

/// One generation job: a tokenized prompt and how to sample its continuation.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingConfig,
    /// Which random stream of `sampling.seed` to draw from (requests with
    /// the same seed and stream draw the same numbers).
    pub stream: u64,
    /// Also report the log-probability of each prompt token (the prompt is
    /// then computed in full, never taken from the prefix cache).
    pub prompt_logprobs: bool,
}

impl GenerationRequest {
    pub fn new(prompt: Vec<u32>, sampling: SamplingConfig) -> Self {
        GenerationRequest { prompt, sampling, stream: 0, prompt_logprobs: false }
    }
}

/// Why a request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token, or a stop string.
    Stop,
    /// `max_tokens` reached, or the sequence reached `max_seq_len`.
    Length,
    /// Cancelled by the caller.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys/values came from the prefix cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// One message from the engine about one request.
#[derive(Debug)]
pub struct Output {
    pub request: RequestId,
    /// Which sample of a group (`n` > 1) this request is; 0 otherwise.
    pub index: usize,
    pub kind: OutputKind,
}

#[derive(Debug)]
pub enum OutputKind {
    /// A generated token and the text it completes (empty while the
    /// detokenizer waits for more bytes or a possible stop string is held back).
    Token { sampled: Sampled, text: String },
    /// The request ended; `text` is whatever text was still held back.
    Finished { reason: FinishReason, text: String, usage: Usage, prompt_logprobs: Option<Vec<f32>> },
    /// The request could not be served (it is over; nothing else follows).
    Failed(Error),
}

impl Output {
    /// The text this output adds to the request's answer.
    pub fn text(&self) -> &str {
        match &self.kind {
            OutputKind::Token { text, .. } | OutputKind::Finished { text, .. } => text,
            OutputKind::Failed(_) => "",
        }
    }

    /// Whether this is the request's last output.
    pub fn is_last(&self) -> bool {
        !matches!(self.kind, OutputKind::Token { .. })
    }
}

/// The whole result of a request, gathered from its outputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub tokens: Vec<u32>,
    pub text: String,
    /// Each token's log-probability and its top alternatives, when asked for.
    pub logprobs: Vec<Sampled>,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
    pub prompt_logprobs: Option<Vec<f32>>,
}

impl Completion {
    /// Adds one output; returns an error for a failed request.
    pub fn absorb(&mut self, output: Output) -> Result<()> {
        match output.kind {
            OutputKind::Token { sampled, text } => {
                self.tokens.push(sampled.token);
                self.text += &text;
                self.logprobs.push(sampled);
            }
            OutputKind::Finished { reason, text, usage, prompt_logprobs } => {
                self.text += &text;
                self.finish = Some(reason);
                self.usage = usage;
                self.prompt_logprobs = prompt_logprobs;
            }
            OutputKind::Failed(e) => return Err(e),
        }
        Ok(())
    }
}

/// The receiving end of one request's outputs. Iterating yields outputs
/// until the last one; dropping the handle cancels the request.
pub struct RequestHandle {
    pub id: RequestId,
    pub(crate) outputs: Receiver<Output>,
}

impl RequestHandle {
    /// Blocks for the next output; `None` after the last one.
    pub fn recv(&self) -> Option<Output> {
        self.outputs.recv().ok()
    }

    /// The next output if one is ready.
    pub fn try_recv(&self) -> Option<Output> {
        self.outputs.try_recv().ok()
    }

    /// Whether the engine has let go of this request (no more outputs will come).
    pub fn is_closed(&self) -> bool {
        matches!(self.outputs.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected))
    }

    /// Blocks until the request ends and returns everything it produced.
    pub fn wait(self) -> Result<Completion> {
        let mut done = Completion::default();
        for output in self {
            done.absorb(output)?;
        }
        Ok(done)
    }
}

impl Iterator for RequestHandle {
    type Item = Output;

    fn next(&mut self) -> Option<Output> {
        self.recv()
    }
}
