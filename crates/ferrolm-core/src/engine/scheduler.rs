//! Continuous batching: which requests run in the next forward pass, and
//! how much of each.
//!
//! Every step the budget of `max_batch_tokens` goes first to the running
//! requests, oldest first (one token each when decoding, the next chunk of
//! the prompt while prefilling), then to waiting requests in arrival order.
//! A long prompt is thus cut into chunks that share steps with everyone
//! else's decode tokens instead of stalling them. When the pool cannot
//! supply a page, the newest running request is preempted: its pages are
//! released and it goes back to the front of the queue, to be recomputed
//! (mostly from the prefix cache) when pages free up. Siblings of a request
//! with `n > 1` wait for their leader's prompt and then share its pages.

use std::collections::VecDeque;

use super::sequence::Sequence;
use crate::error::Result;
use crate::kv::BlockTables;

/// A slice of work for one running request: run `tokens[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// Index into the running list.
    pub index: usize,
    pub start: usize,
    pub len: usize,
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    pub waiting: VecDeque<Sequence>,
    /// Admission order: oldest first, so the newest is preempted first.
    pub running: Vec<Sequence>,
    pub max_num_seqs: usize,
    pub max_batch_tokens: usize,
    /// Most waiting requests admitted per step (the engine leaves it unlimited).
    pub max_admissions: usize,
    pub preemptions: u64,
}

/// What [`Scheduler::schedule`] decided.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub work: Vec<Scheduled>,
    /// Running requests (indices) that can never get another page: the pool
    /// is full of their own positions. They end with `FinishReason::Length`.
    pub out_of_room: Vec<usize>,
}

impl Scheduler {
    pub fn new(max_num_seqs: usize, max_batch_tokens: usize) -> Scheduler {
        Scheduler {
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_num_seqs,
            max_batch_tokens,
            max_admissions: usize::MAX,
            preemptions: 0,
        }
    }

    pub fn schedule(&mut self, cache: &mut BlockTables) -> Result<Plan> {
        let mut plan = Plan::default();
        debug_assert!(self.running.iter().all(|s| s.seq.is_some()));
        let mut budget = self.max_batch_tokens;
        // Pages promised to work already planned this step.
        let mut promised = 0;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let s = &self.running[i];
            let seq = s.seq.expect("running requests hold a cache sequence");
            let len = s.pending().min(budget);
            let need = cache.pages_needed(seq, s.computed, s.computed + len);
            if need + promised <= cache.available_pages() {
                plan.work.push(Scheduled { index: i, start: s.computed, len });
                promised += need;
                budget -= len;
                i += 1;
            } else if i == 0 && self.running.len() == 1 {
                // Alone and still short: the pool is full of this request.
                // (Nothing else is planned yet, so ending it moves no index.)
                plan.out_of_room.push(0);
                return Ok(plan);
            } else {
                // Free the newest request's pages (possibly this one's).
                self.preempt_newest(cache)?;
            }
        }
        let mut next = 0;
        let mut admitted = 0;
        while budget > 0
            && self.running.len() < self.max_num_seqs
            && admitted < self.max_admissions
            && next < self.waiting.len()
        {
            let s = &mut self.waiting[next];
            if s.fork_from.is_some() {
                // A sibling waits for its leader's prompt, then forks its pages.
                next += 1;
                continue;
            }
            let seq = match s.seq {
                Some(seq) => seq,
                None => {
                    let (seq, cached) = if s.prompt_logprobs.is_some() {
                        (cache.add_sequence(), 0)
                    } else {
                        cache.add_sequence_with_prefix(&s.tokens)
                    };
                    s.seq = Some(seq);
                    s.computed = cached;
                    s.cached_tokens.get_or_insert(cached);
                    seq
                }
            };
            let len = s.pending().min(budget);
            let need = cache.pages_needed(seq, s.computed, s.computed + len);
            if need + promised > cache.available_pages() {
                // Wait for pages; hand back the prefix pages it took meanwhile.
                cache.remove_sequence(seq)?;
                s.seq = None;
                s.computed = 0;
                break;
            }
            let s = self.waiting.remove(next).expect("index is in range");
            plan.work.push(Scheduled { index: self.running.len(), start: s.computed, len });
            self.running.push(s);
            admitted += 1;
            promised += need;
            budget -= len;
        }
        Ok(plan)
    }

    fn preempt_newest(&mut self, cache: &mut BlockTables) -> Result<()> {
        let mut s = self.running.pop().expect("preempting needs a running request");
        if let Some(seq) = s.seq.take() {
            cache.remove_sequence(seq)?;
        }
        s.computed = 0;
        if let Some(lp) = s.prompt_logprobs.as_mut() {
            lp.truncate(1);
        }
        self.orphan_siblings(s.id);
        self.waiting.push_front(s);
        self.preemptions += 1;
        Ok(())
    }

    /// Takes request `id` out of the running or the waiting queue (its
    /// pages are the caller's to release).
    pub fn take(&mut self, id: super::RequestId) -> Option<Sequence> {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            return Some(self.running.remove(i));
        }
        let i = self.waiting.iter().position(|s| s.id == id)?;
        self.waiting.remove(i)
    }

    /// Siblings still waiting for `leader`'s prompt compute it themselves.
    pub fn orphan_siblings(&mut self, leader: super::RequestId) {
        for s in self.waiting.iter_mut().filter(|s| s.fork_from == Some(leader)) {
            s.fork_from = None;
        }
    }
}
