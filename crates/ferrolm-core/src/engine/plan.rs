//! [`StepPlan`]: what one step runs, written by the scheduler and read by
//! the executor and the update step. It names each request by id and
//! carries what the forward pass needs (its new tokens, their positions,
//! its KV sequence) and what the request wants back (logits rows for
//! prompt log-probabilities, a row to draw its next token from).
//!
//! The plan owns copies of the tokens and refers to no index into the
//! scheduler's queues, so requests may come and go (finish, abort, fork)
//! between planning and applying the results without it going stale.

use std::ops::Range;

use super::request::RequestId;
use super::sequence::Sequence;
use crate::kv::SeqId;

/// One request's share of a step: `tokens` at positions `start..end()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    pub id: RequestId,
    /// The cache sequence its keys and values go to.
    pub seq: SeqId,
    /// Position of `tokens[0]`; the positions before it are cached.
    pub start: usize,
    pub tokens: Vec<u32>,
    /// The chunk ends at the request's last token: a token is drawn from
    /// the logits of its last position.
    pub draws: bool,
    /// The chunk covers prompt positions whose log-probabilities were asked
    /// for: the logits of all its positions come back.
    pub prompt_logprobs: bool,
}

impl Planned {
    /// The next `len` tokens of running request `s`, which holds pages.
    pub fn next_chunk(s: &Sequence, len: usize) -> Planned {
        let (start, end) = (s.computed, s.computed + len);
        Planned {
            id: s.id,
            seq: s.seq.expect("scheduled requests hold pages"),
            start,
            tokens: s.tokens[start..end].to_vec(),
            draws: end == s.tokens.len(),
            prompt_logprobs: s.wants_prompt_logprobs(start),
        }
    }

    /// One past the position of its last token.
    pub fn end(&self) -> usize {
        self.start + self.tokens.len()
    }

    /// How many logits rows it gets back: every position's, its last
    /// position's (to draw from), or none (a prompt chunk short of the end).
    pub fn logits_wanted(&self) -> usize {
        if self.prompt_logprobs {
            self.tokens.len()
        } else {
            usize::from(self.draws)
        }
    }
}

/// What [`super::scheduler::Scheduler::schedule`] decided for one step.
#[derive(Debug, Default)]
pub(crate) struct StepPlan {
    /// The batch in forward order: running requests oldest first, then
    /// the requests admitted this step.
    pub seqs: Vec<Planned>,
    /// Running requests that can never get another page: the pool is full
    /// of their own positions. They end with `FinishReason::Length`.
    pub out_of_room: Vec<RequestId>,
}

impl StepPlan {
    /// Nothing to run (there may still be requests out of room).
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The batch's token rows whose logits come back (row `r` is the
    /// `r`-th token of the batch), in order.
    pub fn token_rows(&self) -> Vec<usize> {
        let mut rows = Vec::new();
        let mut first = 0;
        for p in &self.seqs {
            let len = p.tokens.len();
            rows.extend(first + len - p.logits_wanted()..first + len);
            first += len;
        }
        rows
    }

    /// Each planned request with its rows of the returned logits (or of
    /// the tokens picked from them), in plan order.
    pub fn output_rows(&self) -> impl Iterator<Item = (&Planned, Range<usize>)> {
        let mut next = 0;
        self.seqs.iter().map(move |p| {
            let rows = next..next + p.logits_wanted();
            next = rows.end;
            (p, rows)
        })
    }
}
