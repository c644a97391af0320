//! [`SteppedScheduler`]: the engine's scheduler driven by hand, for callers
//! that run the model themselves (MILI's `ContinuousBatchScheduler`).
//!
//! It is the engine's own [`Scheduler`] (same admission, token budget,
//! chunked prefill, prefix sharing and preemption by recompute) over page
//! bookkeeping alone ([`BlockTables`]: no model, no KV storage), and the
//! engine's own [`Sequence`] for each request (same finishing rules). A
//! caller loops:
//!
//! 1. [`SteppedScheduler::next_batch`] hands out [`Work`]: for each request,
//!    the tokens to run now from `start_pos` (a prompt chunk, a recompute
//!    after preemption, or the last generated token) and its block table.
//!    The batch counts as run: its positions are recorded as cached, and
//!    full pages enter the prefix cache, so run each batch before the next.
//! 2. For each item with `wants_token`, the caller picks a token from the
//!    logits of its last position and reports it with
//!    [`SteppedScheduler::update`]. A request that still owes a token is not
//!    scheduled again: `next_batch` refuses to run until every owed token
//!    is reported (or its request aborted), naming the request.
//!
//! A request ends on `max_tokens`, on an end-of-sequence or stop token id
//! (not kept in its output, as in the engine), or at `max_seq_len`; its
//! pages go back to the pool at once and its result is kept until taken.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::request::{FinishReason, GenerationRequest, RequestId};
use super::scheduler::Scheduler;
use super::sequence::{Drawn, Sequence};
use crate::error::{Error, Result};
use crate::kv::{BlockTables, KvLayout, PageId};
use crate::sampling::SamplingConfig;

/// How a [`SteppedScheduler`] batches and sizes its page pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteppedConfig {
    /// Most requests running (holding pages) at once.
    pub max_num_seqs: usize,
    /// Most tokens in one batch: decode tokens first, then prompt chunks.
    pub max_batch_tokens: usize,
    /// Most waiting requests admitted per batch.
    pub max_admissions: usize,
    /// The page pool: positions per page, and pages.
    pub layout: KvLayout,
    /// Most positions (prompt plus output) a request may reach.
    pub max_seq_len: usize,
    /// Tokens that end every request (the model's end-of-sequence tokens).
    pub eos_token_ids: Vec<u32>,
}

impl SteppedConfig {
    fn validate(&self) -> Result<()> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_admissions", self.max_admissions),
            ("page_size", self.layout.page_size),
            ("num_pages", self.layout.num_pages),
            ("max_seq_len", self.max_seq_len),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((field, _)) => Err(Error::config(*field, "must be at least 1")),
            None => Ok(()),
        }
    }
}

/// What a piece of work computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Prompt positions (or a recompute after preemption).
    Prefill,
    /// The last generated token, everything before it cached.
    Decode,
}

/// One request's share of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub request: RequestId,
    /// Position of `tokens[0]`; positions before it are cached.
    pub start_pos: usize,
    pub tokens: Vec<u32>,
    /// The block table: page `i` holds positions `i * page_size ..`.
    pub pages: Vec<PageId>,
    pub phase: Phase,
    /// The logits of the last token are due a token ([`SteppedScheduler::update`]).
    pub wants_token: bool,
}

/// Where a request stands ([`SteppedScheduler::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Waiting for admission (or readmission after preemption) or running.
    Processing {
        /// The phase of its current work (when a token is owed) or its next.
        phase: Phase,
        /// Queued, holding no pages.
        waiting: bool,
        generated: usize,
        /// Tokens it may still generate (`max_tokens` minus `generated`).
        remaining: usize,
    },
    Finished {
        reason: FinishReason,
        generated: usize,
    },
}

/// A finished request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub prompt: Vec<u32>,
    /// The tokens generated (an end-of-sequence or stop token is not kept).
    pub generated: Vec<u32>,
    pub reason: FinishReason,
    /// Prompt tokens whose pages came from the prefix cache.
    pub cached_tokens: usize,
    /// From `add_request` to the end.
    pub elapsed: Duration,
}

#[derive(Debug)]
pub struct SteppedScheduler {
    tables: BlockTables,
    scheduler: Scheduler,
    eos: Vec<u32>,
    next_id: RequestId,
    added_at: HashMap<RequestId, Instant>,
    /// Requests whose last work item wants a token, with that item's phase.
    owed: HashMap<RequestId, Phase>,
    finished: HashMap<RequestId, Finished>,
}

impl SteppedScheduler {
    pub fn new(config: SteppedConfig) -> Result<Self> {
        config.validate()?;
        let scheduler = Scheduler::new(config.max_num_seqs, config.max_batch_tokens)
            .with_max_admissions(config.max_admissions);
        Ok(SteppedScheduler {
            tables: BlockTables::new(config.layout, config.max_seq_len, true)?,
            scheduler,
            eos: config.eos_token_ids,
            next_id: 0,
            added_at: HashMap::new(),
            owed: HashMap::new(),
            finished: HashMap::new(),
        })
    }

    /// Queues a request. `sampling` is validated and kept with it; of its
    /// fields the scheduler itself uses `max_tokens` (at least 1) and
    /// `stop_token_ids`. The prompt must be non-empty, and prompt plus
    /// `max_tokens` must fit in `max_seq_len`.
    pub fn add_request(&mut self, prompt: Vec<u32>, sampling: SamplingConfig) -> Result<RequestId> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("prompt_tokens is empty: pass at least one token".into()));
        }
        if sampling.max_tokens == 0 {
            return Err(Error::config("max_tokens", "must be at least 1"));
        }
        let max_seq_len = self.tables.max_seq_len();
        if prompt.len() + sampling.max_tokens > max_seq_len {
            return Err(Error::InvalidInput(format!(
                "prompt_tokens ({} tokens) plus max_tokens ({}) exceed max_seq_len={max_seq_len}; \
                 shorten the prompt, lower max_tokens or raise max_seq_len",
                prompt.len(),
                sampling.max_tokens
            )));
        }
        let pages = self.tables.pages_for(prompt.len());
        if pages > self.tables.pool().total() {
            return Err(Error::KvCacheFull { needed: pages, available: self.tables.pool().total() });
        }
        // The caller picks the tokens here, from logits it reads itself: a
        // mask or a bias would never reach them.
        let shaped =
            [("constraint", sampling.constraint.is_some()), ("logit_bias", !sampling.logit_bias.is_empty())];
        if let Some((field, _)) = shaped.iter().find(|(_, set)| *set) {
            return Err(Error::Unsupported(format!(
                "a sampling `{field}` is not supported by SteppedScheduler; use the Engine"
            )));
        }
        let id = self.next_id;
        let seq = Sequence::new(id, GenerationRequest::new(prompt, sampling), None, None)?;
        self.next_id += 1;
        self.scheduler.add(seq);
        self.added_at.insert(id, Instant::now());
        Ok(id)
    }

    /// The next batch, in the engine's order (running requests oldest
    /// first, then admissions); empty when there is nothing to run. Fails,
    /// naming the request, while a token of the previous batch is owed.
    pub fn next_batch(&mut self) -> Result<Vec<Work>> {
        if let Some(id) = self.owed.keys().min() {
            return Err(Error::InvalidInput(format!(
                "request {id} still owes the token of its last batch item: report it with \
                 update (or abort the request) before asking for the next batch"
            )));
        }
        let plan = self.scheduler.schedule(&mut self.tables)?;
        for &id in &plan.out_of_room {
            self.end(id, FinishReason::Length)?;
        }
        let mut running = self.scheduler.running_by_id();
        let mut batch = Vec::with_capacity(plan.seqs.len());
        for p in plan.seqs {
            let s = running.get_mut(&p.id).expect("planned requests are running");
            let end = p.end();
            // Sequences here start on a page boundary (prefix pages are
            // whole) and are never forked or rewound, so no shared page is
            // ever written to: there is nothing to copy.
            self.tables.make_writable(p.seq, p.start, end, |from, to| {
                Err(Error::Internal(format!("the stepped scheduler cannot copy page {from} to {to}")))
            })?;
            self.tables.commit(p.seq, &p.tokens);
            s.computed = end;
            let phase = if p.draws && p.tokens.len() == 1 && p.start >= s.prompt_len {
                Phase::Decode
            } else {
                Phase::Prefill
            };
            if p.draws {
                self.owed.insert(p.id, phase);
            }
            batch.push(Work {
                request: p.id,
                start_pos: p.start,
                pages: self.tables.pages(p.seq).to_vec(),
                tokens: p.tokens,
                phase,
                wants_token: p.draws,
            });
        }
        Ok(batch)
    }

    /// Reports the token picked for request `id`'s last work item: it is
    /// appended, or ends the request (`max_tokens`, `max_seq_len`, or an
    /// end-of-sequence or stop token id, which is not appended).
    pub fn update(&mut self, id: RequestId, token: u32) -> Result<()> {
        if self.owed.remove(&id).is_none() {
            return Err(self.not_owed(id));
        }
        let max_seq_len = self.tables.max_seq_len();
        let s = self
            .scheduler
            .running_mut()
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::Internal(format!("request {id} owes a token but is not running")))?;
        match s.accept_picked(token, 0.0, &self.eos, max_seq_len)? {
            Drawn::Continue => Ok(()),
            Drawn::Finished(reason) => self.end(id, reason),
            Drawn::Disconnected => Err(Error::Internal("a stepped request has no output channel".into())),
        }
    }

    /// Cancels request `id` (its pages are freed at once; its result, with
    /// `FinishReason::Abort`, is kept). False when it is not waiting or running.
    pub fn abort(&mut self, id: RequestId) -> Result<bool> {
        if self.find(id).is_none() {
            return Ok(false);
        }
        self.end(id, FinishReason::Abort)?;
        Ok(true)
    }

    /// Where request `id` stands; `None` for an id never handed out or
    /// whose result was taken.
    pub fn status(&self, id: RequestId) -> Option<RequestStatus> {
        if let Some(f) = self.finished.get(&id) {
            return Some(RequestStatus::Finished { reason: f.reason, generated: f.generated.len() });
        }
        let (s, waiting) = self.find(id)?;
        let phase = match self.owed.get(&id) {
            Some(&phase) => phase,
            // Next comes a decode iff only the last generated token is pending.
            None if s.generated() > 0 && s.pending() == 1 => Phase::Decode,
            None => Phase::Prefill,
        };
        let max_tokens = s.sampler.config().max_tokens;
        Some(RequestStatus::Processing {
            phase,
            waiting,
            generated: s.generated(),
            remaining: max_tokens.saturating_sub(s.generated()),
        })
    }

    /// Request `id`'s prompt followed by the tokens generated so far
    /// (waiting or running requests), and the prompt's length.
    pub fn tokens(&self, id: RequestId) -> Option<(&[u32], usize)> {
        self.find(id).map(|(s, _)| (&s.tokens[..], s.prompt_len))
    }

    /// Request `id`'s block table (empty while it waits).
    pub fn pages(&self, id: RequestId) -> Option<&[PageId]> {
        let (s, _) = self.find(id)?;
        Some(s.seq.map_or(&[][..], |seq| self.tables.pages(seq)))
    }

    /// A finished request's result (kept until taken).
    pub fn completed(&self, id: RequestId) -> Option<&Finished> {
        self.finished.get(&id)
    }

    /// Takes a finished request's result; its id is then forgotten.
    pub fn take_completed(&mut self, id: RequestId) -> Option<Finished> {
        self.finished.remove(&id)
    }

    /// Requests waiting for admission.
    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting()
    }

    /// Requests holding pages.
    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }

    /// Requests preempted so far (each recomputed later).
    pub fn preemptions(&self) -> u64 {
        self.scheduler.preemptions()
    }

    /// The page bookkeeping (pool counters, block tables).
    pub fn tables(&self) -> &BlockTables {
        &self.tables
    }

    /// The request and whether it is waiting (else running).
    fn find(&self, id: RequestId) -> Option<(&Sequence, bool)> {
        self.scheduler.find(id)
    }

    /// Takes request `id` out of the queues, frees its pages, keeps its result.
    fn end(&mut self, id: RequestId, reason: FinishReason) -> Result<()> {
        let Some(s) = self.scheduler.take(id) else { return Ok(()) };
        if let Some(seq) = s.seq {
            self.tables.remove_sequence(seq)?;
        }
        self.owed.remove(&id);
        let elapsed = self.added_at.remove(&id).map_or(Duration::ZERO, |t| t.elapsed());
        self.finished.insert(
            id,
            Finished {
                prompt: s.tokens[..s.prompt_len].to_vec(),
                generated: s.tokens[s.prompt_len..].to_vec(),
                reason,
                cached_tokens: s.cached_tokens.unwrap_or(0),
                elapsed,
            },
        );
        Ok(())
    }

    /// Why request `id` cannot take a token now.
    fn not_owed(&self, id: RequestId) -> Error {
        Error::InvalidInput(if self.finished.contains_key(&id) {
            format!("request {id} has finished; read its result instead of updating it")
        } else if self.find(id).is_some() {
            format!(
                "request {id} is not due a token: its last batch item ran only part of its prompt, \
                 or it was not in the last batch"
            )
        } else {
            format!("unknown request {id}: use an id returned by add_request")
        })
    }
}
