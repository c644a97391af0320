//! The serving engine over a fixture model: batched results equal
//! single-request results, chunked prefill, preemption under a small pool,
//! abort, the prefix cache, and no page leaks afterwards.

use std::path::PathBuf;
use std::sync::Arc;

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::engine::{Completion, Engine, EngineConfig, FinishReason, GenerationRequest, OutputKind};
use ferrolm_core::{Error, SamplingConfig, Transformer};
use rand::{Rng, SeedableRng};

fn model() -> Arc<Transformer<Cpu>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama_f32");
    Arc::new(Transformer::from_pretrained(dir, Some(160)).unwrap())
}

/// `n` prompts of mixed lengths (1..=90 tokens) with mixed output lengths.
fn requests(n: usize) -> Vec<GenerationRequest> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let len = if i % 5 == 0 { rng.random_range(50..=90) } else { rng.random_range(1..=30) };
            let prompt = (0..len).map(|_| rng.random_range(3..256)).collect();
            GenerationRequest::new(prompt, SamplingConfig::greedy(rng.random_range(1..=24)))
        })
        .collect()
}

fn run_alone(model: &Arc<Transformer<Cpu>>, request: &GenerationRequest) -> Completion {
    let config = EngineConfig { prefix_caching: false, ..EngineConfig::default() };
    let mut engine = Engine::new(model.clone(), None, config).unwrap();
    let handle = engine.add_request(request.clone()).unwrap();
    engine.run_until_idle().unwrap();
    handle.wait().unwrap()
}

fn run_together(engine: &mut Engine<Cpu>, requests: &[GenerationRequest]) -> Vec<Completion> {
    let handles: Vec<_> = requests.iter().map(|r| engine.add_request(r.clone()).unwrap()).collect();
    engine.run_until_idle().unwrap();
    handles.into_iter().map(|h| h.wait().unwrap()).collect()
}

fn assert_same_tokens(together: &[Completion], alone: &[Completion]) {
    for (i, (t, a)) in together.iter().zip(alone).enumerate() {
        assert_eq!(t.tokens, a.tokens, "request {i}: batched tokens differ from the request run alone");
        assert_eq!(t.finish, a.finish, "request {i}");
    }
}

#[test]
fn batched_results_equal_single_request_results() {
    let model = model();
    let requests = requests(32);
    let alone: Vec<Completion> = requests.iter().map(|r| run_alone(&model, r)).collect();
    // A small token budget: long prompts are prefilled in chunks that share
    // steps with other requests' decode tokens.
    let config = EngineConfig { max_batch_tokens: 48, ..EngineConfig::default() };
    let mut engine = Engine::new(model, None, config).unwrap();
    let together = run_together(&mut engine, &requests);
    assert_same_tokens(&together, &alone);
    assert!(alone.iter().map(|c| c.tokens.len()).sum::<usize>() > 100, "the test must generate something");
    let stats = engine.stats();
    assert_eq!(stats.pool.used_pages, 0, "every page is free again: {stats:?}");
    assert_eq!(stats.requests_finished, 32);
}

#[test]
fn a_short_pool_preempts_and_recomputes_without_losing_anything() {
    let model = model();
    let requests = requests(12);
    let alone: Vec<Completion> = requests.iter().map(|r| run_alone(&model, r)).collect();
    // Room for about two of the longer requests at a time.
    let config = EngineConfig { num_pages: Some(14), page_size: 8, ..EngineConfig::default() };
    let mut engine = Engine::new(model, None, config).unwrap();
    let together = run_together(&mut engine, &requests);
    assert_same_tokens(&together, &alone);
    let stats = engine.stats();
    assert!(stats.preemptions > 0, "the pool was meant to run short: {stats:?}");
    assert_eq!(stats.pool.used_pages, 0, "{stats:?}");
    assert_eq!(stats.running + stats.waiting, 0);
}

#[test]
fn a_prompt_that_can_never_fit_is_refused_up_front() {
    let model = model();
    let config = EngineConfig { num_pages: Some(4), page_size: 8, ..EngineConfig::default() };
    let engine = Engine::new(model, None, config).unwrap();
    let long = GenerationRequest::new(vec![5; 40], SamplingConfig::greedy(4));
    assert!(matches!(engine.add_request(long), Err(Error::KvCacheFull { needed: 5, available: 4 })));
    let too_long = GenerationRequest::new(vec![5; 161], SamplingConfig::greedy(4));
    assert!(matches!(engine.add_request(too_long), Err(Error::ContextOverflow { .. })));
    let bad_token = GenerationRequest::new(vec![100_000], SamplingConfig::greedy(4));
    assert!(matches!(engine.add_request(bad_token), Err(Error::InvalidInput(_))));
    let empty = GenerationRequest::new(vec![], SamplingConfig::greedy(4));
    assert!(engine.add_request(empty).is_err());
    assert_eq!(engine.stats().requests_added, 0);
}

#[test]
fn a_request_that_outgrows_the_whole_pool_ends_with_length() {
    let model = model();
    let config = EngineConfig { num_pages: Some(2), page_size: 8, ..EngineConfig::default() };
    let mut engine = Engine::new(model, None, config).unwrap();
    let handle =
        engine.add_request(GenerationRequest::new(vec![5, 6, 7], SamplingConfig::greedy(100))).unwrap();
    engine.run_until_idle().unwrap();
    let done = handle.wait().unwrap();
    // Both pages fill up (16 positions); the token drawn from the last one
    // is still returned, as at max_seq_len.
    assert_eq!((done.finish, done.tokens.len()), (Some(FinishReason::Length), 14));
    assert_eq!(engine.stats().pool.used_pages, 0);
}

#[test]
fn abort_ends_a_request_and_frees_its_pages_at_once() {
    let model = model();
    let mut engine = Engine::new(model, None, EngineConfig::default()).unwrap();
    let mut sampling = SamplingConfig::greedy(1000);
    sampling.temperature = 1.0;
    sampling.seed = Some(1);
    let handle = engine.add_request(GenerationRequest::new(vec![9; 40], sampling)).unwrap();
    for _ in 0..3 {
        engine.step().unwrap();
    }
    assert!(engine.stats().pool.used_pages > 0);
    engine.abort(handle.id);
    engine.step().unwrap();
    assert_eq!(engine.stats().pool.used_pages, 0);
    assert!(!engine.has_work());
    let last = handle.into_iter().last().unwrap();
    assert!(matches!(last.kind, OutputKind::Finished { reason: FinishReason::Abort, .. }));
}

#[test]
fn dropping_a_handle_cancels_its_request() {
    let model = model();
    let mut engine = Engine::new(model, None, EngineConfig::default()).unwrap();
    drop(engine.add_request(GenerationRequest::new(vec![9; 20], SamplingConfig::greedy(500))).unwrap());
    engine.run_until_idle().unwrap();
    let stats = engine.stats();
    assert!(stats.generation_tokens <= 1, "nobody listens, so it stops at its first token: {stats:?}");
    assert_eq!(stats.pool.used_pages, 0);
}

#[test]
fn a_shared_prompt_prefix_is_computed_once() {
    let model = model();
    let system: Vec<u32> = (10..60).collect(); // 50 tokens: three full pages of 16
    let ask = |tail: &[u32]| {
        GenerationRequest::new(system.iter().chain(tail).copied().collect(), SamplingConfig::greedy(8))
    };
    let mut engine = Engine::new(model.clone(), None, EngineConfig::default()).unwrap();
    let first = run_together(&mut engine, &[ask(&[100, 101])]).remove(0);
    assert_eq!(first.usage.cached_tokens, 0);
    let second_request = ask(&[200, 201, 202]);
    let second = run_together(&mut engine, std::slice::from_ref(&second_request)).remove(0);
    assert_eq!(second.usage.cached_tokens, 48, "three full pages of the shared prompt come from the cache");
    assert_eq!(engine.stats().cached_prompt_tokens, 48);
    assert_eq!(engine.stats().prompt_tokens, 52 + 53);
    // Cached pages give the same continuation as computing everything.
    assert_eq!(second.tokens, run_alone(&model, &second_request).tokens);
    assert_eq!(engine.stats().pool.used_pages, 0);
}

#[test]
fn prompt_logprobs_survive_chunked_prefill() {
    let model = model();
    let prompt: Vec<u32> = (20..90).collect();
    let mut request = GenerationRequest::new(prompt.clone(), SamplingConfig::greedy(3));
    request.prompt_logprobs = true;
    let whole = run_alone(&model, &request);
    let config = EngineConfig { max_batch_tokens: 16, ..EngineConfig::default() };
    let mut engine = Engine::new(model, None, config).unwrap();
    let chunked = run_together(&mut engine, &[request]).remove(0);
    let (a, b) = (whole.prompt_logprobs.unwrap(), chunked.prompt_logprobs.unwrap());
    assert_eq!(a.len(), prompt.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
    }
    assert_eq!(whole.tokens, chunked.tokens);
}

#[test]
fn the_engine_serves_many_threads_from_its_own_thread() {
    let model = model();
    let requests = requests(8);
    let alone: Vec<Completion> = requests.iter().map(|r| run_alone(&model, r)).collect();
    let (client, thread) = Engine::new(model, None, EngineConfig::default()).unwrap().spawn();
    let workers: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let client = client.clone();
            std::thread::spawn(move || client.add_request(r).unwrap().wait().unwrap())
        })
        .collect();
    let together: Vec<Completion> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_same_tokens(&together, &alone);
    client.shutdown();
    thread.join().unwrap();
    assert_eq!(client.stats().pool.used_pages, 0);
    assert!(client.add_request(GenerationRequest::new(vec![5], SamplingConfig::greedy(1))).is_err());
}

#[test]
fn a_held_engine_runs_exactly_the_steps_it_is_given() {
    let model = model();
    let (client, thread) = Engine::new(model, None, EngineConfig::default()).unwrap().spawn();
    client.pause().unwrap();
    let mut sampling = SamplingConfig::greedy(100);
    sampling.ignore_eos = true;
    let handle = client.add_request(GenerationRequest::new(vec![9; 20], sampling)).unwrap();
    // Held: the request waits, whatever the time.
    client.pause().unwrap();
    assert!(handle.try_recv().is_none());
    // Step 1 prefills and draws the first token, step 2 the second; then held again.
    client.step(2).unwrap();
    let tokens: Vec<_> = std::iter::from_fn(|| handle.try_recv()).collect();
    assert_eq!(tokens.len(), 2, "two steps, two tokens");
    assert!(tokens.iter().all(|o| matches!(o.kind, OutputKind::Token { .. })));
    assert_eq!(client.stats().running, 1);
    // An abort ends a request on a held engine at once.
    client.abort(handle.id);
    let last = handle.recv().unwrap();
    match last.kind {
        OutputKind::Finished { reason, usage, .. } => {
            assert_eq!((reason, usage.completion_tokens), (FinishReason::Abort, 2));
        }
        _ => panic!("expected the end of the request"),
    }
    assert_eq!(client.stats().pool.used_pages, 0);
    // Resumed, it runs on; held, shutdown still works.
    client.resume();
    let done = client.add_request(GenerationRequest::new(vec![9; 5], SamplingConfig::greedy(3))).unwrap();
    assert_eq!(done.wait().unwrap().tokens.len(), 3);
    client.pause().unwrap();
    client.shutdown();
    thread.join().unwrap();
    assert!(client.pause().is_err() && client.step(1).is_err());
}

#[test]
fn parallel_samples_share_the_prompt_and_equal_separate_requests() {
    let model = model();
    let prompt: Vec<u32> = (30..70).collect(); // 40 tokens: two full pages and a half-filled one
    let mut sampling = SamplingConfig::greedy(6);
    sampling.temperature = 1.0;
    sampling.seed = Some(11);
    let request = GenerationRequest::new(prompt.clone(), sampling);
    let alone: Vec<Completion> =
        (0..4).map(|i| run_alone(&model, &GenerationRequest { stream: i, ..request.clone() })).collect();

    let mut engine = Engine::new(model, None, EngineConfig::default()).unwrap();
    let (sink, outputs) = std::sync::mpsc::channel();
    let ids = engine.client().add_request_group(request, 4, sink).unwrap();
    // One step prefills the prompt once and forks it: 3 prompt pages, shared.
    engine.step().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.running, 4);
    assert_eq!(stats.pool.used_pages, 3, "the siblings share the leader's pages: {stats:?}");
    engine.step().unwrap();
    assert_eq!(engine.stats().pool.used_pages, 3 + 3, "each writer but one copied the half-filled page");
    engine.run_until_idle().unwrap();

    let mut got = vec![Completion::default(); 4];
    for output in outputs.try_iter() {
        let i = ids.iter().position(|&id| id == output.request).unwrap();
        got[i].absorb(output).unwrap();
    }
    for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
        assert_eq!(g.tokens, a.tokens, "sample {i} equals the same stream run alone");
        assert_eq!(g.usage.prompt_tokens, 40);
    }
    assert!(got.iter().any(|g| g.tokens != got[0].tokens), "different streams draw differently");
    assert_eq!(engine.stats().pool.used_pages, 0);
    assert_eq!(engine.stats().prompt_tokens, 40, "the group's prompt counts once");
}

#[test]
fn a_long_prompt_is_chunked_and_never_stalls_running_requests() {
    let model = model();
    let config = EngineConfig { max_batch_tokens: 16, ..EngineConfig::default() };
    let mut engine = Engine::new(model, None, config).unwrap();
    let mut sampling = SamplingConfig::greedy(40);
    sampling.temperature = 1.0; // keep drawing: no early end-of-sequence by greedy ties
    sampling.seed = Some(5);
    let short = engine.add_request(GenerationRequest::new(vec![7, 8, 9], sampling.clone())).unwrap();
    engine.step().unwrap();
    assert!(short.try_recv().is_some(), "the short request drew its first token");

    let long = engine
        .add_request(GenerationRequest::new((0..120).map(|i| 3 + i % 200).collect(), sampling))
        .unwrap();
    // 120 prompt tokens at 15 per step (one budget slot goes to the decode):
    // eight steps of prefill, and the short request gets a token in each.
    for step in 0..8 {
        engine.step().unwrap();
        let out =
            short.try_recv().unwrap_or_else(|| panic!("no token for the running request at step {step}"));
        assert!(matches!(out.kind, OutputKind::Token { .. }));
        let first_of_long = long.try_recv();
        assert_eq!(first_of_long.is_some(), step == 7, "the long prompt draws only once fully prefilled");
    }
}

#[test]
fn ignore_eos_keeps_generating_past_end_of_sequence_tokens() {
    let first =
        run_alone(&model(), &GenerationRequest::new(vec![5, 6, 7], SamplingConfig::greedy(1))).tokens[0];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama_f32");
    let mut eos_model = Transformer::from_pretrained(dir, Some(160)).unwrap();
    eos_model.config.eos_token_ids = vec![first];
    let eos_model = Arc::new(eos_model);
    let stops = run_alone(&eos_model, &GenerationRequest::new(vec![5, 6, 7], SamplingConfig::greedy(5)));
    assert_eq!((stops.tokens.len(), stops.finish), (0, Some(FinishReason::Stop)));
    let mut sampling = SamplingConfig::greedy(5);
    sampling.ignore_eos = true;
    let goes_on = run_alone(&eos_model, &GenerationRequest::new(vec![5, 6, 7], sampling));
    assert_eq!((goes_on.tokens.len(), goes_on.finish), (5, Some(FinishReason::Length)));
    assert_eq!(goes_on.tokens[0], first);
}

/// `kv_cache_bytes` buys as many pages as fit in the pool's own precision:
/// a quantized model's f16 cache gets twice the pages of an f32 one.
#[test]
fn kv_cache_bytes_buys_pages_in_the_pools_precision() {
    use ferrolm_core::formats::GgmlType;
    use ferrolm_core::model::Checkpoint;
    use ferrolm_core::{DType, LoadOptions};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama_f32");
    // 2 layers x (K, V) x 16 positions x 2 KV heads x head_dim 16.
    let values_per_page = 2 * 2 * 16 * 2 * 16;
    let config = EngineConfig { kv_cache_bytes: 10 * values_per_page * 2, ..EngineConfig::default() };
    let q8 = Some(GgmlType::Q8_0.into());
    let max_seq_len = Some(160);
    for (options, pages) in [
        (LoadOptions { quantize: q8, max_seq_len, ..Default::default() }, 10),
        (LoadOptions { quantize: q8, kv_dtype: Some(DType::F32), max_seq_len, ..Default::default() }, 5),
        (LoadOptions { max_seq_len, ..Default::default() }, 5),
    ] {
        let checkpoint = Checkpoint::resolve(&dir).unwrap();
        let model = Arc::new(Transformer::load(&checkpoint, Cpu::default(), &options).unwrap());
        let engine = Engine::new(model, None, config.clone()).unwrap();
        assert_eq!(engine.stats().pool.total_pages, pages, "{options:?}");
    }
}
