//! The stepped scheduler driven by a fake model that keeps its "keys" (the
//! tokens themselves) in pages: a token is the sum of every cached token
//! read back through the block table, mod 97. Outputs equal a plain
//! per-request loop only if chunking, prefix sharing and recompute after
//! preemption put the right tokens in the right pages.

use ferrolm_core::engine::{FinishReason, Phase, RequestStatus, SteppedConfig, SteppedScheduler, Work};
use ferrolm_core::{Error, KvLayout, SamplingConfig};

const PAGE: usize = 4;

fn config(num_pages: usize, max_batch_tokens: usize) -> SteppedConfig {
    SteppedConfig {
        max_num_seqs: 8,
        max_batch_tokens,
        max_admissions: usize::MAX,
        layout: KvLayout { page_size: PAGE, num_pages },
        max_seq_len: 64,
        eos_token_ids: vec![96],
    }
}

fn sampling(max_tokens: usize) -> SamplingConfig {
    SamplingConfig::greedy(max_tokens)
}

/// The fake model's KV storage: one token per (page, slot).
struct FakeModel {
    kv: Vec<[u32; PAGE]>,
}

impl FakeModel {
    fn new(num_pages: usize) -> Self {
        FakeModel { kv: vec![[u32::MAX; PAGE]; num_pages] }
    }

    /// Writes the item's tokens at their positions and, if a token is
    /// wanted, returns the sum of positions `0..end` read through the pages.
    fn run(&mut self, w: &Work) -> Option<u32> {
        for (i, &t) in w.tokens.iter().enumerate() {
            let pos = w.start_pos + i;
            self.kv[w.pages[pos / PAGE] as usize][pos % PAGE] = t;
        }
        let end = w.start_pos + w.tokens.len();
        let sum: u64 = (0..end).map(|p| u64::from(self.kv[w.pages[p / PAGE] as usize][p % PAGE])).sum();
        w.wants_token.then_some((sum % 97) as u32)
    }
}

/// The same rule, one request at a time: what the scheduler must reproduce.
fn reference(prompt: &[u32], max_tokens: usize, stop: &[u32]) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let t = (seq.iter().map(|&t| u64::from(t)).sum::<u64>() % 97) as u32;
        if stop.contains(&t) {
            break;
        }
        seq.push(t);
        out.push(t);
    }
    out
}

/// Runs every batch through the fake model until all requests finish,
/// checking each batch against the token budget.
fn drive(s: &mut SteppedScheduler, model: &mut FakeModel, budget: usize) -> Vec<Vec<Work>> {
    let mut batches = Vec::new();
    loop {
        let batch = s.next_batch().unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.iter().map(|w| w.tokens.len()).sum::<usize>() <= budget);
        for w in &batch {
            if let Some(t) = model.run(w) {
                s.update(w.request, t).unwrap();
            }
        }
        batches.push(batch);
    }
    batches
}

fn prompts() -> Vec<Vec<u32>> {
    vec![(1..12).collect(), vec![5, 6, 7], (20..30).collect(), vec![3; 9], (40..43).collect()]
}

#[test]
fn many_requests_equal_the_per_request_loop() {
    let mut s = SteppedScheduler::new(config(64, 64)).unwrap();
    let mut model = FakeModel::new(64);
    let ids: Vec<u64> = prompts().into_iter().map(|p| s.add_request(p, sampling(6)).unwrap()).collect();
    drive(&mut s, &mut model, 64);
    for (id, prompt) in ids.iter().zip(prompts()) {
        let done = s.take_completed(*id).unwrap();
        assert_eq!(done.generated, reference(&prompt, 6, &[96]));
        assert_eq!(done.prompt, prompt);
    }
    assert_eq!(s.tables().stats().used_pages, 0, "finished requests hold no pages");
}

/// A work item's (request, start_pos, tokens, phase, wants_token).
type Shape = (u64, usize, usize, Phase, bool);

#[test]
fn a_small_budget_chunks_the_prompt_and_decodes_alongside() {
    let mut s = SteppedScheduler::new(config(64, 4)).unwrap();
    let mut model = FakeModel::new(64);
    let a = s.add_request(vec![1, 2], sampling(3)).unwrap();
    let b = s.add_request((1..=10).collect(), sampling(3)).unwrap();
    let batches = drive(&mut s, &mut model, 4);
    let shape: Vec<Vec<Shape>> = batches
        .iter()
        .map(|b| b.iter().map(|w| (w.request, w.start_pos, w.tokens.len(), w.phase, w.wants_token)).collect())
        .collect();
    use Phase::{Decode, Prefill};
    assert_eq!(
        shape,
        vec![
            vec![(a, 0, 2, Prefill, true), (b, 0, 2, Prefill, false)],
            vec![(a, 2, 1, Decode, true), (b, 2, 3, Prefill, false)],
            vec![(a, 3, 1, Decode, true), (b, 5, 3, Prefill, false)],
            vec![(b, 8, 2, Prefill, true)],
            vec![(b, 10, 1, Decode, true)],
            vec![(b, 11, 1, Decode, true)],
        ]
    );
    for w in batches.iter().flatten() {
        assert_eq!(w.pages.len(), (w.start_pos + w.tokens.len()).div_ceil(PAGE), "pages cover the positions");
    }
    assert_eq!(s.take_completed(a).unwrap().generated, reference(&[1, 2], 3, &[96]));
    assert_eq!(s.take_completed(b).unwrap().generated, reference(&(1..=10).collect::<Vec<_>>(), 3, &[96]));
}

#[test]
fn requests_end_on_max_tokens_and_on_stop_and_eos_ids() {
    let mut s = SteppedScheduler::new(config(16, 64)).unwrap();
    let long = s.add_request(vec![1], sampling(2)).unwrap();
    let stop = s.add_request(vec![2], SamplingConfig { stop_token_ids: vec![7], ..sampling(5) }).unwrap();
    let eos = s.add_request(vec![3], sampling(5)).unwrap();
    assert_eq!(s.next_batch().unwrap().len(), 3);
    for id in [long, stop, eos] {
        s.update(id, 11).unwrap();
    }
    s.next_batch().unwrap();
    s.update(long, 12).unwrap();
    s.update(stop, 7).unwrap();
    s.update(eos, 96).unwrap();
    let expect = [(long, vec![11, 12], FinishReason::Length), (stop, vec![11], FinishReason::Stop)];
    for (id, generated, reason) in expect.into_iter().chain([(eos, vec![11], FinishReason::Stop)]) {
        assert_eq!(s.status(id), Some(RequestStatus::Finished { reason, generated: generated.len() }));
        let done = s.completed(id).unwrap();
        assert_eq!((&done.generated, done.reason), (&generated, reason));
    }
    assert!(s.next_batch().unwrap().is_empty());
    assert_eq!(s.tables().stats().used_pages, 0);
    assert!(s.take_completed(long).is_some());
    assert_eq!(s.status(long), None, "a taken result is forgotten");
}

#[test]
fn a_short_pool_preempts_and_recomputes_without_losing_anything() {
    // 6 pages of 4 positions: three requests of up to 16 positions each
    // cannot all hold their pages at once.
    let mut s = SteppedScheduler::new(config(6, 64)).unwrap();
    let mut model = FakeModel::new(6);
    let prompts: Vec<Vec<u32>> = vec![(1..6).collect(), (10..16).collect(), (30..35).collect()];
    let ids: Vec<u64> = prompts.iter().map(|p| s.add_request(p.clone(), sampling(10)).unwrap()).collect();
    drive(&mut s, &mut model, 64);
    assert!(s.preemptions() > 0, "the pool was meant to run short");
    for (id, prompt) in ids.iter().zip(&prompts) {
        let done = s.take_completed(*id).unwrap();
        assert_eq!(done.generated, reference(prompt, 10, &[96]));
    }
}

#[test]
fn a_repeated_prompt_shares_its_full_pages() {
    let mut s = SteppedScheduler::new(config(16, 64)).unwrap();
    let mut model = FakeModel::new(16);
    let prompt: Vec<u32> = (1..=9).collect(); // two full pages and one token
    let first = s.add_request(prompt.clone(), sampling(2)).unwrap();
    let first_pages = drive(&mut s, &mut model, 64)[0][0].pages.clone();
    let second = s.add_request(prompt.clone(), sampling(2)).unwrap();
    let batches = drive(&mut s, &mut model, 64);
    let w = &batches[0][0];
    assert_eq!((w.start_pos, w.tokens.as_slice()), (8, &[9][..]), "only the last token is computed");
    assert_eq!(w.pages[..2], first_pages[..2]);
    let done = s.take_completed(second).unwrap();
    assert_eq!(done.cached_tokens, 8);
    assert_eq!(done.generated, s.take_completed(first).unwrap().generated);
}

#[test]
fn admissions_per_batch_are_capped() {
    let mut s = SteppedScheduler::new(SteppedConfig { max_admissions: 2, ..config(16, 64) }).unwrap();
    for p in 1..=3 {
        s.add_request(vec![p], sampling(1)).unwrap();
    }
    assert_eq!(s.next_batch().unwrap().len(), 2);
    assert_eq!(s.num_waiting(), 1);
}

#[test]
fn misuse_is_refused_with_a_message_naming_it() {
    let mut s = SteppedScheduler::new(config(16, 64)).unwrap();
    let msg = |e: Error| e.to_string();
    assert!(msg(s.add_request(vec![], sampling(1)).unwrap_err()).contains("prompt_tokens is empty"));
    assert!(msg(s.add_request(vec![1; 60], sampling(5)).unwrap_err()).contains("max_seq_len=64"));
    assert!(msg(s.add_request(vec![1], sampling(0)).unwrap_err()).contains("max_tokens"));
    let bad_top_p = SamplingConfig { top_p: 2.0, ..sampling(1) };
    assert!(msg(s.add_request(vec![1], bad_top_p).unwrap_err()).contains("top_p"));
    assert!(msg(s.update(42, 1).unwrap_err()).contains("unknown request 42"));

    let id = s.add_request(vec![1, 2], sampling(2)).unwrap();
    assert!(msg(s.update(id, 1).unwrap_err()).contains("not due a token"));
    s.next_batch().unwrap();
    assert!(msg(s.next_batch().unwrap_err()).contains(&format!("request {id} still owes")));
    assert!(s.abort(id).unwrap());
    assert_eq!(s.completed(id).unwrap().reason, FinishReason::Abort);
    assert!(msg(s.update(id, 1).unwrap_err()).contains("has finished"));
    assert!(s.next_batch().unwrap().is_empty());
    let zero = SteppedConfig { max_batch_tokens: 0, ..config(16, 64) };
    assert!(msg(SteppedScheduler::new(zero).unwrap_err()).contains("max_batch_tokens"));
}

#[test]
fn status_follows_a_request_from_queue_to_result() {
    let mut s = SteppedScheduler::new(config(16, 2)).unwrap();
    let id = s.add_request(vec![1, 2, 3], sampling(2)).unwrap();
    let processing = |phase, waiting, generated, remaining| RequestStatus::Processing {
        phase,
        waiting,
        generated,
        remaining,
    };
    assert_eq!(s.status(id), Some(processing(Phase::Prefill, true, 0, 2)));
    s.next_batch().unwrap(); // positions 0..2: no token yet
    assert_eq!(s.status(id), Some(processing(Phase::Prefill, false, 0, 2)));
    s.next_batch().unwrap(); // position 2: a token is owed
    s.update(id, 5).unwrap();
    assert_eq!(s.status(id), Some(processing(Phase::Decode, false, 1, 1)));
    assert_eq!(s.tokens(id), Some((&[1, 2, 3, 5][..], 3)));
    assert_eq!(s.pages(id).unwrap().len(), 1, "positions 0..4 fit in one page");
    s.next_batch().unwrap();
    s.update(id, 6).unwrap();
    assert_eq!(s.status(id), Some(RequestStatus::Finished { reason: FinishReason::Length, generated: 2 }));
    assert_eq!(s.status(id + 1), None);
}
