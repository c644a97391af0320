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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sequence::Sequence;
    use crate::engine::GenerationRequest;
    use crate::kv::KvLayout;
    use crate::sampling::SamplingConfig;

    const VOCAB: usize = 16;

    fn request(id: RequestId, prompt: Vec<u32>, prompt_logprobs: bool) -> Sequence {
        let mut r = GenerationRequest::new(prompt, SamplingConfig::greedy(8));
        r.prompt_logprobs = prompt_logprobs;
        Sequence::new(id, r, None, None).unwrap()
    }

    /// Logits rows whose argmax is `peaks[r]` in row `r`.
    fn logits(peaks: &[u32]) -> StepOutput {
        let mut logits = vec![0.0; peaks.len() * VOCAB];
        for (r, &peak) in peaks.iter().enumerate() {
            logits[r * VOCAB + peak as usize] = 5.0;
        }
        StepOutput::Logits { logits, vocab: VOCAB }
    }

    fn tokens(scheduler: &Scheduler, id: RequestId) -> &[u32] {
        &scheduler.find(id).unwrap().0.tokens
    }

    #[test]
    fn each_request_reads_its_own_rows() {
        let mut scheduler = Scheduler::new(8, 64);
        let mut cache = BlockTables::new(KvLayout { page_size: 4, num_pages: 16 }, 64, false).unwrap();
        scheduler.add(request(50, vec![1, 2, 3], false));
        scheduler.add(request(51, vec![4, 5], true));
        let plan = scheduler.schedule(&mut cache).unwrap();
        // Rows: 50's last position, then both of 51's (prompt log-probabilities).
        let output = logits(&[10, 11, 12]);
        let applied = apply(&mut scheduler, &mut cache, &plan, &output, &[]).unwrap();

        assert_eq!(applied.generated, 2);
        let ids: Vec<RequestId> = applied.drawn.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![50, 51]);
        assert_eq!(tokens(&scheduler, 50), [1, 2, 3, 10]);
        // 51 draws from its last row, not from the first one it was given.
        assert_eq!(tokens(&scheduler, 51), [4, 5, 12]);
        let s = scheduler.find(51).unwrap().0;
        assert_eq!(s.computed, 2);
        // Its first row predicts prompt token 5.
        let Row::Logits(row) = output.row(1) else { unreachable!() };
        assert_eq!(s.prompt_logprobs.as_deref(), Some(&[0.0, log_softmax(row)[5]][..]));
    }

    #[test]
    fn tokens_picked_on_the_device_go_to_the_requests_that_drew_them() {
        let mut scheduler = Scheduler::new(8, 64);
        let mut cache = BlockTables::new(KvLayout { page_size: 4, num_pages: 16 }, 64, false).unwrap();
        scheduler.add(request(60, vec![1], false));
        scheduler.add(request(61, vec![2, 3, 4, 5, 6], false));
        scheduler.add(request(62, vec![7, 8], false));
        let plan = scheduler.schedule(&mut cache).unwrap();
        let output = StepOutput::Tokens(vec![(9, -0.5), (13, -0.25), (14, -1.0)]);
        let applied = apply(&mut scheduler, &mut cache, &plan, &output, &[13]).unwrap();
        // 61 picked an end-of-sequence token: it finishes without keeping it.
        let finished: Vec<RequestId> = applied
            .drawn
            .iter()
            .filter(|(_, d)| matches!(d, Ok(Drawn::Finished(_))))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(finished, vec![61]);
        assert_eq!(applied.generated, 2);
        assert_eq!(tokens(&scheduler, 60), [1, 9]);
        assert_eq!(tokens(&scheduler, 61), [2, 3, 4, 5, 6]);
        assert_eq!(tokens(&scheduler, 62), [7, 8, 14]);
    }
}
