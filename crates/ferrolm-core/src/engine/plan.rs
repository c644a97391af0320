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

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(id: RequestId, start: usize, len: usize, draws: bool, prompt_logprobs: bool) -> Planned {
        let tokens = (0..len as u32).collect();
        Planned { id, seq: id as SeqId, start, tokens, draws, prompt_logprobs }
    }

    #[test]
    fn logits_rows_map_to_the_requests_that_want_them() {
        let plan = StepPlan {
            seqs: vec![
                planned(7, 12, 1, true, false), // a decode token: its one row
                planned(3, 0, 4, false, false), // a prompt chunk short of the end: no row
                planned(9, 0, 3, true, true),   // a whole prompt with log-probabilities: every row
                planned(5, 16, 2, true, false), // the last chunk of a prompt: its last row
                planned(4, 2, 2, false, true),  // a middle chunk with log-probabilities: every row
            ],
            out_of_room: Vec::new(),
        };
        // Token rows: 7 -> 0; 3 -> 1..5; 9 -> 5..8; 5 -> 8..10; 4 -> 10..12.
        assert_eq!(plan.token_rows(), vec![0, 5, 6, 7, 9, 10, 11]);
        let rows: Vec<(RequestId, Range<usize>)> = plan.output_rows().map(|(p, r)| (p.id, r)).collect();
        assert_eq!(rows, vec![(7, 0..1), (3, 1..1), (9, 1..4), (5, 4..5), (4, 5..7)]);
        let draw_rows: Vec<(RequestId, usize)> =
            plan.output_rows().filter(|(p, _)| p.draws).map(|(p, r)| (p.id, r.end - 1)).collect();
        assert_eq!(draw_rows, vec![(7, 0), (9, 3), (5, 4)]);
    }

    #[test]
    fn an_empty_plan_wants_no_rows() {
        let plan = StepPlan { seqs: Vec::new(), out_of_room: vec![2] };
        assert!(plan.is_empty());
        assert!(plan.token_rows().is_empty());
        assert_eq!(plan.output_rows().count(), 0);
    }
}
