//! The executor: one forward pass over a [`StepPlan`], and where the
//! step's tokens are picked ([`SampleSite`]): on the host from logits rows,
//! or where the logits are, so a GPU copies back only token ids.

use std::collections::HashMap;

use super::plan::StepPlan;
use super::request::RequestId;
use super::scheduler::Scheduler;
use super::sequence::Sequence;
use crate::backend::Backend;
use crate::backend::RowSampling;
use crate::error::Result;
use crate::kv::KvCache;
use crate::model::{Logits, SeqInput, Transformer};

/// Where a step's tokens are picked.
#[derive(Debug)]
pub(crate) enum SampleSite {
    /// From logits rows copied to the host.
    Host,
    /// Where the logits are, one [`RowSampling`] per drawing request in plan order.
    Device(Vec<RowSampling>),
}

impl SampleSite {
    /// Batches whose drawing requests are all plain greedy, or (on a backend
    /// that samples on the device) all free of penalties and top-N
    /// log-probabilities, pick their tokens where the logits are; anything
    /// else samples on the host. So does a batch with prompt
    /// log-probabilities (they need every row), and one whose sampled
    /// leader has siblings about to fork: each sibling draws its own first
    /// token from the leader's row of logits.
    ///
    /// Device sampling draws each request's random number now, from its
    /// sampler's stream, as host sampling would when it draws.
    pub fn choose(plan: &StepPlan, scheduler: &mut Scheduler, samples_on_device: bool) -> SampleSite {
        let running: HashMap<RequestId, &Sequence> = scheduler.running().iter().map(|s| (s.id, s)).collect();
        let on_device = plan.seqs.iter().all(|p| {
            let sampler = &running[&p.id].sampler;
            let samples_there =
                samples_on_device && sampler.fits_device() && !scheduler.has_waiting_siblings(p.id);
            !p.prompt_logprobs && (!p.draws || sampler.is_plain_greedy() || samples_there)
        });
        if !on_device {
            return SampleSite::Host;
        }
        let mut running = scheduler.running_by_id();
        let params = plan
            .seqs
            .iter()
            .filter(|p| p.logits_wanted() > 0)
            .map(|p| running.get_mut(&p.id).expect("planned requests are running").sampler.device_params())
            .collect();
        SampleSite::Device(params)
    }
}

/// What a forward pass handed back, one entry per row the plan wants
/// ([`StepPlan::output_rows`]).
#[derive(Debug)]
pub(crate) enum StepOutput {
    /// `[rows, vocab]` logits, to sample from on the host.
    Logits { logits: Vec<f32>, vocab: usize },
    /// Each row's token, picked where the logits are, and its log-probability.
    Tokens(Vec<(u32, f32)>),
}

/// One row of a [`StepOutput`].
pub(crate) enum Row<'a> {
    Logits(&'a [f32]),
    Picked { token: u32, logprob: f32 },
}

impl StepOutput {
    pub fn row(&self, row: usize) -> Row<'_> {
        match self {
            StepOutput::Logits { logits, vocab } => Row::Logits(&logits[row * vocab..(row + 1) * vocab]),
            StepOutput::Tokens(picked) => Row::Picked { token: picked[row].0, logprob: picked[row].1 },
        }
    }
}

/// Runs the planned batch through `model` (its keys and values go to
/// `cache`) and picks its tokens at `site`. The requests themselves are
/// untouched: the update step applies the output to them.
pub(crate) fn execute<B: Backend>(
    model: &Transformer<B>,
    cache: &mut KvCache<B>,
    plan: &StepPlan,
    site: &SampleSite,
) -> Result<StepOutput> {
    let inputs: Vec<SeqInput> =
        plan.seqs.iter().map(|p| SeqInput { seq: p.seq, start_pos: p.start, tokens: &p.tokens }).collect();
    let rows = Logits::Rows(plan.token_rows());
    match site {
        SampleSite::Host => model
            .forward(cache, &inputs, rows)
            .map(|logits| StepOutput::Logits { logits, vocab: model.config.vocab_size }),
        SampleSite::Device(params) => {
            model.forward_sampled(cache, &inputs, rows, params).map(StepOutput::Tokens)
        }
    }
}
