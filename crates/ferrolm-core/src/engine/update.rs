//! The update step: a forward pass's [`StepOutput`] applied to the requests
//! its [`StepPlan`] named. Each moves past its tokens and records its
//! prompt log-probabilities; siblings whose leader has just computed its
//! prompt fork its pages; then every request due a token draws it, which
//! streams it and says whether the request is over. Ending those requests
//! (releasing pages, counting them) is left to the engine.

use std::collections::HashMap;

use rayon::prelude::*;

use super::execute::{Row, StepOutput};
use super::plan::StepPlan;
use super::request::RequestId;
use super::scheduler::Scheduler;
use super::sequence::Drawn;
use crate::error::Result;
use crate::kv::BlockTables;
use crate::sampling::log_softmax;

/// What applying a step's output did.
pub(crate) struct Applied {
    /// Tokens added to requests' outputs.
    pub generated: u64,
    /// Each draw's outcome, in running order.
    pub drawn: Vec<(RequestId, Result<Drawn>)>,
}

pub(crate) fn apply(
    scheduler: &mut Scheduler,
    cache: &mut BlockTables,
    plan: &StepPlan,
    output: &StepOutput,
    eos: &[u32],
) -> Result<Applied> {
    let mut draw_rows = advance(scheduler, plan, output);
    fork_siblings(scheduler, cache, &mut draw_rows)?;
    Ok(draw(scheduler, &draw_rows, output, eos, cache.max_seq_len()))
}

/// Moves each planned request past its tokens and records the
/// log-probabilities of the prompt tokens its rows predict. Returns the
/// output row that each request now due a token draws from.
fn advance(scheduler: &mut Scheduler, plan: &StepPlan, output: &StepOutput) -> HashMap<RequestId, usize> {
    let mut running = scheduler.running_by_id();
    let mut draw_rows = HashMap::new();
    for (p, rows) in plan.output_rows() {
        let s = &mut **running.get_mut(&p.id).expect("planned requests run until their update");
        s.computed += p.tokens.len();
        if let Some(lp) = s.prompt_logprobs.as_mut().filter(|_| p.prompt_logprobs) {
            // The row of position `start + i` predicts the token after it.
            let next = &s.tokens[p.start + 1..(p.end() + 1).min(s.prompt_len)];
            for (row, &token) in rows.clone().zip(next) {
                if let Row::Logits(logits) = output.row(row) {
                    lp.push(log_softmax(logits)[token as usize]);
                }
            }
        }
        if p.draws {
            draw_rows.insert(p.id, rows.end - 1);
        }
    }
    draw_rows
}

/// Siblings of a leader that has just computed its prompt (and drawn
/// nothing yet) join on a fork of its pages and draw from its row.
fn fork_siblings(
    scheduler: &mut Scheduler,
    cache: &mut BlockTables,
    draw_rows: &mut HashMap<RequestId, usize>,
) -> Result<()> {
    let leaders: Vec<(RequestId, usize)> = scheduler
        .running()
        .iter()
        .filter(|s| s.generated() == 0)
        .filter_map(|s| Some((s.id, *draw_rows.get(&s.id)?)))
        .collect();
    for (leader, row) in leaders {
        for sibling in scheduler.fork_siblings(leader, cache)? {
            draw_rows.insert(sibling, row);
        }
    }
    Ok(())
}

/// Every request with a draw row draws from it, in parallel: the draws are
/// independent, and each may cost a sort of the vocabulary.
fn draw(
    scheduler: &mut Scheduler,
    draw_rows: &HashMap<RequestId, usize>,
    output: &StepOutput,
    eos: &[u32],
    max_seq_len: usize,
) -> Applied {
    let drawn: Vec<(RequestId, Result<Drawn>, bool)> = scheduler
        .running_mut()
        .par_iter_mut()
        .filter_map(|s| {
            let row = *draw_rows.get(&s.id)?;
            let before = s.generated();
            let drawn = match output.row(row) {
                Row::Logits(logits) => s.draw(logits, eos, max_seq_len),
                Row::Picked { token, logprob } => s.accept_picked(token, logprob, eos, max_seq_len),
            };
            Some((s.id, drawn, s.generated() > before))
        })
        .collect();
    let generated = drawn.iter().filter(|d| d.2).count() as u64;
    Applied { generated, drawn: drawn.into_iter().map(|(id, result, _)| (id, result)).collect() }
}
