//! [`EngineClient`]: a cheap, clonable handle for talking to an engine from
//! any thread — queue requests (checked before they are queued), cancel
//! them, read the engine's counters.
//!
//! Two things are decided here, race-free, before a request is queued:
//! whether the engine still takes requests (its [`Door`], closed by the
//! engine thread when it stops or fails) and whether the waiting queue has
//! room (`max_waiting`, counted by [`Ticket`]s).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, RwLock};

use super::request::{GenerationRequest, Output, RequestHandle, RequestId};
use super::sequence::Sequence;
use super::ticket::Ticket;
use crate::error::{Error, Result};
use crate::kv::PoolStats;
use crate::sampling::{ConstraintFactory, ConstraintMatcher, SamplingConfig};
use crate::tokenizer::Tokenizer;

pub(crate) enum Command {
    /// New requests, taken in together: a group's samples all reach the
    /// scheduler in the same step.
    Add(Vec<Sequence>),
    Abort(RequestId),
    /// Hold the engine between steps; the sender hears once it is held.
    Pause(Sender<()>),
    /// While held: run this many steps, then hold again (the sender hears then).
    Step(usize, Sender<()>),
    Resume,
    Shutdown,
}

/// What a request must fit in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub vocab_size: usize,
    pub max_seq_len: usize,
    pub page_size: usize,
    pub num_pages: usize,
}

/// The engine's counters, as of its last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub pool: PoolStats,
    pub page_size: usize,
    /// Requests ever added and ever ended (any reason).
    pub requests_added: u64,
    pub requests_finished: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens served from the prefix cache instead of recomputed.
    pub cached_prompt_tokens: u64,
    pub generation_tokens: u64,
    pub preemptions: u64,
    /// Requests queued and never admitted yet (what `max_waiting` bounds):
    /// unlike `waiting`, it counts requests on their way to the engine
    /// thread, and not preempted ones waiting to run again.
    pub queued: usize,
}

/// Whether the engine thread still takes requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Door {
    Open,
    /// Shut down (or every client is gone).
    Stopped,
    /// The engine thread failed; the reason.
    Failed(String),
}

impl Door {
    fn check(&self) -> Result<()> {
        match self {
            Door::Open => Ok(()),
            Door::Stopped => Err(Error::EngineStopped),
            Door::Failed(reason) => Err(Error::EngineFailed(reason.clone())),
        }
    }
}

pub(crate) struct Shared {
    next_id: AtomicU64,
    pub limits: Limits,
    pub tokenizer: Option<Tokenizer>,
    stats: Mutex<EngineStats>,
    /// Requests holding a [`Ticket`].
    queued: Arc<AtomicUsize>,
    max_waiting: Option<usize>,
    /// Read-locked by each client across the send of its requests and
    /// write-locked by the engine thread to close it: once it is closed,
    /// every request sent before is in the channel for the engine to end.
    door: RwLock<Door>,
    /// Compiles `SamplingConfig::constraint`s for this model; built on the
    /// first constrained request (a few hundred milliseconds), then shared.
    constraints: Mutex<Option<Arc<ConstraintFactory>>>,
}

impl Shared {
    pub fn new(
        limits: Limits,
        tokenizer: Option<Tokenizer>,
        pool: PoolStats,
        max_waiting: Option<usize>,
    ) -> Shared {
        let stats = EngineStats { pool, page_size: limits.page_size, ..Default::default() };
        Shared {
            next_id: AtomicU64::new(0),
            limits,
            tokenizer,
            stats: Mutex::new(stats),
            queued: Arc::new(AtomicUsize::new(0)),
            max_waiting,
            door: RwLock::new(Door::Open),
            constraints: Mutex::new(None),
        }
    }

    /// The model's constraint factory, built on first use.
    pub fn constraint_factory(&self) -> Result<Arc<ConstraintFactory>> {
        let tokenizer = self.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "a sampling `constraint` needs the model's tokenizer, and this engine has none".into(),
            )
        })?;
        let mut slot = self.constraints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(factory) = slot.as_ref() {
            return Ok(factory.clone());
        }
        let factory = Arc::new(ConstraintFactory::new(tokenizer, self.limits.vocab_size)?);
        *slot = Some(factory.clone());
        Ok(factory)
    }

    pub fn stats(&self) -> EngineStats {
        let mut stats = *self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.queued = self.queued.load(Ordering::Acquire);
        stats
    }

    /// Closes the door (the engine thread, as it stops or fails); requests
    /// sent before are in the command channel.
    pub fn close_door(&self, door: Door) {
        *self.door.write().unwrap_or_else(|e| e.into_inner()) = door;
    }

    /// Why the engine stopped taking requests, if it failed.
    pub fn failure(&self) -> Option<String> {
        match &*self.door.read().unwrap_or_else(|e| e.into_inner()) {
            Door::Failed(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// `n` tickets, or `Overloaded` when they would take the count past
    /// `max_waiting`. A group larger than the limit is still taken when
    /// nothing waits, so that every request can run eventually.
    fn tickets(&self, n: usize) -> Result<Vec<Ticket>> {
        let mut current = self.queued.load(Ordering::Acquire);
        loop {
            if let Some(max_waiting) = self.max_waiting {
                if current > 0 && current + n > max_waiting {
                    return Err(Error::Overloaded { waiting: current, max_waiting });
                }
            }
            match self.queued.compare_exchange_weak(current, current + n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        Ok((0..n).map(|_| Ticket::new(self.queued.clone())).collect())
    }

    fn update(&self, f: impl FnOnce(&mut EngineStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn publish(&self, running: usize, waiting: usize, preemptions: u64, pool: PoolStats) {
        self.update(|s| {
            s.running = running;
            s.waiting = waiting;
            s.preemptions = preemptions;
            s.pool = pool;
        });
    }

    pub fn count_generated(&self, n: u64) {
        self.update(|s| s.generation_tokens += n);
    }

    pub fn count_finished(&self, seq: &Sequence) {
        self.update(|s| {
            s.requests_finished += 1;
            // A group's prompt counts once, with its leader.
            if !seq.forked {
                s.prompt_tokens += seq.prompt_len as u64;
                s.cached_prompt_tokens += seq.cached_tokens.unwrap_or(0) as u64;
            }
        });
    }
}

#[derive(Clone)]
pub struct EngineClient {
    sender: Sender<Command>,
    shared: Arc<Shared>,
}

impl EngineClient {
    pub(crate) fn new(sender: Sender<Command>, shared: Arc<Shared>) -> Self {
        EngineClient { sender, shared }
    }

    /// Queues a request; its outputs arrive on the returned handle.
    pub fn add_request(&self, request: GenerationRequest) -> Result<RequestHandle> {
        let (sink, outputs) = channel();
        let id = self.add_request_with_sink(request, sink)?;
        Ok(RequestHandle { id, outputs })
    }

    /// Queues a request whose outputs go to `sink` (one sink may serve many
    /// requests: each [`Output`] names its request). Bad requests are
    /// refused here, before anything is queued.
    pub fn add_request_with_sink(
        &self,
        request: GenerationRequest,
        sink: Sender<Output>,
    ) -> Result<RequestId> {
        Ok(self.add_request_group(request, 1, sink)?[0])
    }

    /// Queues `n` samples of one prompt (OpenAI's `n`): sample `i` draws
    /// from random stream `request.stream + i`. The samples go to the engine
    /// as one command, so they are queued in the same step; the prompt is
    /// computed once and the other samples share its KV pages. Returns the
    /// ids in sample order.
    pub fn add_request_group(
        &self,
        request: GenerationRequest,
        n: usize,
        sink: Sender<Output>,
    ) -> Result<Vec<RequestId>> {
        if n == 0 {
            return Err(Error::InvalidInput("n must be at least 1".into()));
        }
        self.check(&request)?;
        // One matcher per sample, compiled before anything is queued.
        let mut matchers: Vec<Option<ConstraintMatcher>> = match &request.sampling.constraint {
            Some(c) => {
                let factory = self.shared.constraint_factory()?;
                (0..n).map(|_| factory.compile(c).map(Some)).collect::<Result<_>>()?
            }
            None => (0..n).map(|_| None).collect(),
        };
        // Held until the requests are sent (see `Shared::door`).
        let door = self.shared.door.read().unwrap_or_else(|e| e.into_inner());
        door.check()?;
        let tickets = self.shared.tickets(n)?;
        let first = self.shared.next_id.fetch_add(n as u64, Ordering::Relaxed);
        let seqs = (0..n as u64)
            .zip(tickets)
            .map(|(i, ticket)| {
                let r = GenerationRequest { stream: request.stream + i, ..request.clone() };
                let mut seq =
                    Sequence::new(first + i, r, self.shared.tokenizer.as_ref(), Some(sink.clone()))?;
                if let Some(matcher) = matchers[i as usize].take() {
                    seq.sampler.constrain(matcher);
                }
                seq.fork_from = (i > 0).then_some(first);
                seq.index = i as usize;
                seq.ticket = Some(ticket);
                Ok(seq)
            })
            .collect::<Result<Vec<_>>>()?;
        // The engine thread closes the door before it drops the channel, so
        // this fails only if it died without closing it.
        self.sender.send(Command::Add(seqs)).map_err(|_| Error::EngineStopped)?;
        drop(door);
        self.shared.update(|s| s.requests_added += n as u64);
        Ok((first..first + n as u64).collect())
    }

    /// Tokenizes `prompt` (with the model's BOS token) and queues it.
    pub fn add_text_request(&self, prompt: &str, sampling: SamplingConfig) -> Result<RequestHandle> {
        let tokens = self.tokenizer()?.encode(prompt, true)?;
        self.add_request(GenerationRequest::new(tokens, sampling))
    }

    /// Cancels a request: it ends with `FinishReason::Abort` and its pages
    /// are freed at the engine's next step. Unknown or finished ids are ignored.
    pub fn abort(&self, id: RequestId) {
        let _ = self.sender.send(Command::Abort(id));
    }

    /// Holds the engine between two steps and returns once it is held (at
    /// once when it is idle). A held engine still takes requests and
    /// aborts (an abort ends its request at once), but runs no forward
    /// pass until [`EngineClient::step`] or [`EngineClient::resume`]; what
    /// a request has produced by then is fixed, whatever the machine's
    /// speed. Tests use it to reach an exact state; shutdown still works.
    pub fn pause(&self) -> Result<()> {
        let (ack, held) = channel();
        self.sender.send(Command::Pause(ack)).map_err(|_| self.stopped())?;
        held.recv().map_err(|_| self.stopped())
    }

    /// On a held engine: runs exactly `steps` steps (each one scheduled
    /// batch, as when running), then holds again; returns once it is held.
    /// On a running engine it does nothing.
    pub fn step(&self, steps: usize) -> Result<()> {
        let (ack, held) = channel();
        self.sender.send(Command::Step(steps, ack)).map_err(|_| self.stopped())?;
        held.recv().map_err(|_| self.stopped())
    }

    /// Lets a held engine run on (a no-op on a running one).
    pub fn resume(&self) {
        let _ = self.sender.send(Command::Resume);
    }

    /// Asks the engine thread to cancel everything and exit.
    pub fn shutdown(&self) {
        let _ = self.sender.send(Command::Shutdown);
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.stats()
    }

    /// Why the engine thread failed, once it has (`None` while it runs,
    /// and after a plain shutdown).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.shared.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidInput("this engine has no tokenizer; pass token ids instead of text".into())
        })
    }

    /// Largest number of positions a sequence may hold.
    pub fn max_seq_len(&self) -> usize {
        self.shared.limits.max_seq_len
    }

    fn check(&self, r: &GenerationRequest) -> Result<()> {
        let limits = self.shared.limits;
        r.sampling.validate()?;
        if r.prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty: pass at least one token".into()));
        }
        if let Some(t) = r.prompt.iter().find(|&&t| t as usize >= limits.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary (vocab_size={})",
                limits.vocab_size
            )));
        }
        if let Some(t) = r.sampling.logit_bias.keys().find(|&&t| t as usize >= limits.vocab_size) {
            return Err(Error::config(
                "logit_bias",
                format!("token id {t} is outside the vocabulary (vocab_size={})", limits.vocab_size),
            ));
        }
        // A prompt that fills the context exactly is run and ends with no
        // new token (as Meta's `generate` does); callers that need room for
        // an answer check for it themselves.
        if r.prompt.len() > limits.max_seq_len {
            return Err(Error::ContextOverflow { needed: r.prompt.len(), max_seq_len: limits.max_seq_len });
        }
        let pages = r.prompt.len().div_ceil(limits.page_size);
        if pages > limits.num_pages {
            return Err(Error::KvCacheFull { needed: pages, available: limits.num_pages });
        }
        if !r.sampling.stop.is_empty() && self.shared.tokenizer.is_none() {
            return Err(Error::InvalidInput("stop strings need an engine with a tokenizer".into()));
        }
        Ok(())
    }
}

impl EngineClient {
    /// The error for a command the engine thread can no longer take.
    fn stopped(&self) -> Error {
        self.shared.failure().map_or(Error::EngineStopped, Error::EngineFailed)
    }
}
