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
//! with `n > 1` wait for their leader's prompt and then share its pages; a
//! sibling whose leader can no longer fork (it has ended, or is past its
//! prompt) computes its prompt itself, so no request waits on one that is gone.

use std::collections::{HashMap, VecDeque};

use super::plan::{Planned, StepPlan};
use super::request::RequestId;
use super::sequence::Sequence;
use crate::error::Result;
use crate::kv::{BlockTables, SeqId};

/// What is left of a step's allowance while it is planned.
struct Budget {
    tokens: usize,
    /// Pages promised to the work planned so far.
    promised_pages: usize,
}

impl Budget {
    /// Whether `need` more pages are free beyond those already promised.
    fn fits(&self, need: usize, cache: &BlockTables) -> bool {
        need + self.promised_pages <= cache.available_pages()
    }

    fn spend(&mut self, tokens: usize, pages: usize) {
        self.tokens -= tokens;
        self.promised_pages += pages;
    }
}

/// The waiting and running requests, and the rules that move them between
/// the two. Its queues change only through its own methods.
#[derive(Debug)]
pub(crate) struct Scheduler {
    waiting: VecDeque<Sequence>,
    /// Admission order: oldest first, so the newest is preempted first.
    running: Vec<Sequence>,
    max_num_seqs: usize,
    max_batch_tokens: usize,
    /// Most waiting requests admitted per step (the engine leaves it unlimited).
    max_admissions: usize,
    preemptions: u64,
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

    /// Admits at most `max_admissions` waiting requests per step.
    pub fn with_max_admissions(mut self, max_admissions: usize) -> Scheduler {
        self.max_admissions = max_admissions;
        self
    }

    /// Queues a request behind those already waiting.
    pub fn add(&mut self, s: Sequence) {
        self.waiting.push_back(s);
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Running requests preempted so far (each recomputed later).
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// The running requests, oldest first.
    pub fn running(&self) -> &[Sequence] {
        &self.running
    }

    /// The running requests, to change in place (not to add or remove).
    pub fn running_mut(&mut self) -> &mut [Sequence] {
        &mut self.running
    }

    /// The running requests by id (one lookup table for a whole batch).
    pub fn running_by_id(&mut self) -> HashMap<RequestId, &mut Sequence> {
        self.running.iter_mut().map(|s| (s.id, s)).collect()
    }

    /// Request `id`, and whether it is waiting (else running).
    pub fn find(&self, id: RequestId) -> Option<(&Sequence, bool)> {
        let running = self.running.iter().find(|s| s.id == id).map(|s| (s, false));
        running.or_else(|| self.waiting.iter().find(|s| s.id == id).map(|s| (s, true)))
    }

    /// Every request's id: the running ones oldest first, then the waiting ones.
    pub fn ids(&self) -> Vec<RequestId> {
        self.running.iter().chain(&self.waiting).map(|s| s.id).collect()
    }

    /// Takes every request out (running, then waiting); their pages are
    /// the caller's to release.
    pub fn drain(&mut self) -> Vec<Sequence> {
        self.running.drain(..).chain(self.waiting.drain(..)).collect()
    }

    /// Whether a sibling still waits to fork `leader`'s pages.
    pub fn has_waiting_siblings(&self, leader: RequestId) -> bool {
        self.waiting.iter().any(|s| s.fork_from == Some(leader))
    }

    /// Plans the next step under the token budget; may preempt running
    /// requests and admit waiting ones.
    pub fn schedule(&mut self, cache: &mut BlockTables) -> Result<StepPlan> {
        debug_assert!(self.running.iter().all(|s| s.seq.is_some()));
        let mut plan = StepPlan::default();
        let mut budget = Budget { tokens: self.max_batch_tokens, promised_pages: 0 };
        self.plan_running(cache, &mut plan, &mut budget)?;
        if plan.out_of_room.is_empty() {
            self.admit_waiting(cache, &mut plan, &mut budget)?;
        }
        Ok(plan)
    }

    /// The running requests' next tokens, oldest first, preempting the
    /// newest while the pool is short.
    fn plan_running(
        &mut self,
        cache: &mut BlockTables,
        plan: &mut StepPlan,
        budget: &mut Budget,
    ) -> Result<()> {
        let mut i = 0;
        while i < self.running.len() && budget.tokens > 0 {
            let s = &self.running[i];
            let seq = s.seq.expect("running requests hold a cache sequence");
            let len = s.pending().min(budget.tokens);
            let need = cache.pages_needed(seq, s.computed, s.computed + len);
            if budget.fits(need, cache) {
                plan.seqs.push(Planned::next_chunk(s, len));
                budget.spend(len, need);
                i += 1;
            } else if i == 0 && self.running.len() == 1 {
                // Alone and still short: the pool is full of this request.
                plan.out_of_room.push(s.id);
                return Ok(());
            } else {
                // Free the newest request's pages (possibly this one's).
                self.preempt_newest(cache)?;
            }
        }
        Ok(())
    }

    /// Waiting requests in arrival order, while the budget, the pool and
    /// `max_num_seqs` allow; their prompts' pages are looked up in the
    /// prefix cache first.
    fn admit_waiting(
        &mut self,
        cache: &mut BlockTables,
        plan: &mut StepPlan,
        budget: &mut Budget,
    ) -> Result<()> {
        let mut next = 0;
        let mut admitted = 0;
        while budget.tokens > 0
            && self.running.len() < self.max_num_seqs
            && admitted < self.max_admissions
            && next < self.waiting.len()
        {
            if let Some(leader) = self.waiting[next].fork_from {
                if self.will_fork(leader) {
                    // A sibling waits for its leader's prompt, then forks its pages.
                    next += 1;
                    continue;
                }
                self.waiting[next].fork_from = None;
            }
            let s = &mut self.waiting[next];
            let seq = claim_pages(s, cache);
            let len = s.pending().min(budget.tokens);
            let need = cache.pages_needed(seq, s.computed, s.computed + len);
            if !budget.fits(need, cache) {
                // Wait for pages; hand back the prefix pages it took meanwhile.
                cache.remove_sequence(seq)?;
                s.seq = None;
                s.computed = 0;
                break;
            }
            let mut s = self.waiting.remove(next).expect("index is in range");
            s.ticket = None; // admitted: no longer counts against max_waiting
            plan.seqs.push(Planned::next_chunk(&s, len));
            self.running.push(s);
            admitted += 1;
            budget.spend(len, need);
        }
        Ok(())
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
    pub fn take(&mut self, id: RequestId) -> Option<Sequence> {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            return Some(self.running.remove(i));
        }
        let i = self.waiting.iter().position(|s| s.id == id)?;
        self.waiting.remove(i)
    }

    /// Whether request `leader` will still hand its prompt's pages to its
    /// siblings: it is waiting, or running with its prompt not yet computed
    /// (it forks them at the step that computes it, before its first draw).
    fn will_fork(&self, leader: RequestId) -> bool {
        match self.find(leader) {
            Some((_, true)) => true,
            Some((s, false)) => s.generated() == 0,
            None => false,
        }
    }

    /// Siblings still waiting for `leader`'s prompt compute it themselves.
    pub fn orphan_siblings(&mut self, leader: RequestId) {
        for s in self.waiting.iter_mut().filter(|s| s.fork_from == Some(leader)) {
            s.fork_from = None;
        }
    }

    /// Siblings waiting for running request `leader`'s prompt join the
    /// running list on a fork of its pages (the partly filled last page is
    /// copied when first written), while there is room; the rest compute
    /// their prompt themselves. Returns the ids that joined, in order.
    pub fn fork_siblings(&mut self, leader: RequestId, cache: &mut BlockTables) -> Result<Vec<RequestId>> {
        let parent = self.running.iter().position(|s| s.id == leader).expect("a leader is running");
        let mut joined = Vec::new();
        while self.running.len() < self.max_num_seqs {
            let Some(at) = self.waiting.iter().position(|s| s.fork_from == Some(leader)) else { break };
            let mut sibling = self.waiting.remove(at).expect("index from position");
            let parent = &self.running[parent];
            sibling.seq = Some(cache.fork(parent.seq.expect("running requests hold pages"))?);
            sibling.computed = parent.computed;
            sibling.cached_tokens = parent.cached_tokens;
            if sibling.prompt_logprobs.is_some() {
                sibling.prompt_logprobs = parent.prompt_logprobs.clone();
            }
            sibling.fork_from = None;
            sibling.forked = true;
            sibling.ticket = None;
            joined.push(sibling.id);
            self.running.push(sibling);
        }
        self.orphan_siblings(leader);
        Ok(joined)
    }
}

/// The cache sequence of waiting request `s`, made on first use from the
/// prefix cache (which a request that wants its prompt's log-probabilities
/// does not use: it computes every position).
fn claim_pages(s: &mut Sequence, cache: &mut BlockTables) -> SeqId {
    if let Some(seq) = s.seq {
        return seq;
    }
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

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::*;
    use crate::engine::GenerationRequest;
    use crate::kv::KvLayout;
    use crate::sampling::SamplingConfig;

    /// The token every request draws in these tests.
    const DRAWN: u32 = 7;

    fn request(id: RequestId, prompt_len: u32, prompt_logprobs: bool) -> Sequence {
        let mut r = GenerationRequest::new((1..=prompt_len).collect(), SamplingConfig::greedy(8));
        r.prompt_logprobs = prompt_logprobs;
        Sequence::new(id, r, None, None).unwrap()
    }

    /// A pool of `pages` pages of 4 positions, without prefix caching.
    fn tables(pages: usize) -> BlockTables {
        BlockTables::new(KvLayout { page_size: 4, num_pages: pages }, 64, false).unwrap()
    }

    /// What the engine does with a plan, minus the model: the positions are
    /// written, and each request due a token draws [`DRAWN`].
    fn run(scheduler: &mut Scheduler, tables: &mut BlockTables, plan: &StepPlan) {
        let mut running = scheduler.running_by_id();
        for p in &plan.seqs {
            tables.make_writable(p.seq, p.start, p.end(), |_, _| Ok(())).unwrap();
            tables.commit(p.seq, &p.tokens);
            let s = running.get_mut(&p.id).unwrap();
            s.computed = p.end();
            if p.draws {
                s.tokens.push(DRAWN);
            }
        }
    }

    /// Each planned request as (id, start, number of tokens, draws).
    fn shape(plan: &StepPlan) -> Vec<(RequestId, usize, usize, bool)> {
        plan.seqs.iter().map(|p| (p.id, p.start, p.tokens.len(), p.draws)).collect()
    }

    #[test]
    fn a_plan_runs_decodes_first_then_prompt_chunks_under_the_budget() {
        let mut scheduler = Scheduler::new(8, 8);
        let mut tables = tables(16);
        for (id, len) in [(10, 3), (11, 10), (12, 2)] {
            scheduler.add(request(id, len, false));
        }
        let plan = scheduler.schedule(&mut tables).unwrap();
        // 3 + 5 tokens fill the budget: request 12 is not admitted yet.
        assert_eq!(shape(&plan), vec![(10, 0, 3, true), (11, 0, 5, false)]);
        assert_eq!(plan.seqs[1].tokens, vec![1, 2, 3, 4, 5]);
        assert_eq!((scheduler.num_running(), scheduler.num_waiting()), (2, 1));
        run(&mut scheduler, &mut tables, &plan);

        let plan = scheduler.schedule(&mut tables).unwrap();
        assert_eq!(shape(&plan), vec![(10, 3, 1, true), (11, 5, 5, true), (12, 0, 2, true)]);
        assert_eq!(plan.seqs[0].tokens, vec![DRAWN]);
        assert_eq!(plan.seqs[1].tokens, vec![6, 7, 8, 9, 10]);
        assert!(plan.out_of_room.is_empty());
    }

    #[test]
    fn after_an_abort_the_plan_names_the_requests_left_and_their_rows() {
        let mut scheduler = Scheduler::new(8, 64);
        let mut tables = tables(16);
        for id in [20, 21, 22] {
            scheduler.add(request(id, 4, false));
        }
        let plan = scheduler.schedule(&mut tables).unwrap();
        run(&mut scheduler, &mut tables, &plan);
        // The middle request goes: the ones after it move up in the
        // running list, and the plan still names each by its id.
        let aborted = scheduler.take(21).unwrap();
        tables.remove_sequence(aborted.seq.unwrap()).unwrap();
        scheduler.add(request(23, 2, true));

        let plan = scheduler.schedule(&mut tables).unwrap();
        assert_eq!(shape(&plan), vec![(20, 4, 1, true), (22, 4, 1, true), (23, 0, 2, true)]);
        let seqs: Vec<SeqId> = plan.seqs.iter().map(|p| p.seq).collect();
        let held: Vec<SeqId> =
            [20, 22, 23].iter().map(|&id| scheduler.find(id).unwrap().0.seq.unwrap()).collect();
        assert_eq!(seqs, held);
        // One row each for the decodes; both prompt rows for the request
        // that wants its prompt's log-probabilities.
        assert_eq!(plan.token_rows(), vec![0, 1, 2, 3]);
        let rows: Vec<(RequestId, Range<usize>)> = plan.output_rows().map(|(p, r)| (p.id, r)).collect();
        assert_eq!(rows, vec![(20, 0..1), (22, 1..2), (23, 2..4)]);
    }

    #[test]
    fn a_short_pool_preempts_the_newest_request_out_of_the_plan() {
        let mut scheduler = Scheduler::new(8, 64);
        let mut tables = tables(3);
        scheduler.add(request(30, 4, false));
        scheduler.add(request(31, 4, false));
        let plan = scheduler.schedule(&mut tables).unwrap();
        run(&mut scheduler, &mut tables, &plan);
        // Both decodes need a new page; one is left.
        let plan = scheduler.schedule(&mut tables).unwrap();
        assert_eq!(shape(&plan), vec![(30, 4, 1, true)]);
        assert_eq!(scheduler.preemptions(), 1);
        let (preempted, waiting) = scheduler.find(31).unwrap();
        assert!(waiting);
        assert_eq!((preempted.seq, preempted.computed, preempted.tokens.len()), (None, 0, 5));
    }

    #[test]
    fn a_sibling_waits_only_for_a_leader_that_will_still_fork() {
        let mut scheduler = Scheduler::new(8, 64);
        let mut tables = tables(16);
        let sibling = |id, leader| {
            let mut s = request(id, 6, false);
            s.fork_from = Some(leader);
            s
        };
        // Leader 50 runs its prompt (its sibling 51 waits); 60 is in no queue.
        scheduler.add(request(50, 6, false));
        scheduler.add(sibling(51, 50));
        scheduler.add(sibling(61, 60));
        let plan = scheduler.schedule(&mut tables).unwrap();
        assert_eq!(shape(&plan), vec![(50, 0, 6, true), (61, 0, 6, true)]);
        run(&mut scheduler, &mut tables, &plan);
        // 50 is past its prompt without having forked (51 came too late):
        // 51 computes its own.
        let plan = scheduler.schedule(&mut tables).unwrap();
        assert_eq!(shape(&plan), vec![(50, 6, 1, true), (61, 6, 1, true), (51, 0, 6, true)]);
        assert!(scheduler.running().iter().all(|s| s.fork_from.is_none()));
    }

    #[test]
    fn a_request_alone_in_a_full_pool_is_out_of_room() {
        let mut scheduler = Scheduler::new(8, 64);
        let mut tables = tables(1);
        scheduler.add(request(40, 4, false));
        let plan = scheduler.schedule(&mut tables).unwrap();
        run(&mut scheduler, &mut tables, &plan);
        let plan = scheduler.schedule(&mut tables).unwrap();
        assert!(plan.is_empty());
        assert_eq!(plan.out_of_room, vec![40]);
    }
}
