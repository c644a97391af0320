//! [`Engine`]: the step loop. Each step takes new commands, then runs one
//! batch in three parts: the scheduler's [`StepPlan`], the executor's
//! forward pass over it, and the update that applies its output to the
//! requests (log-probabilities, drawn tokens, stop conditions). Finished,
//! failed and cancelled requests end here and give their pages back at once.
//!
//! A spawned engine whose thread panics fails every request it holds (and
//! every one on its way in) with [`Error::EngineFailed`], closes its door
//! so that later requests are refused at once, and ends its thread.
//!
//! Test hook (for tests only, never for production use): with
//! `FERROLM_TEST_PANIC_AFTER_STEPS=N` in the environment when an engine is
//! spawned, its thread panics at the first step with work after `N` such
//! steps, so that tests can prove nothing hangs when the engine dies.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::client::{Command, Door, EngineClient, EngineStats, Limits, Shared};
use super::config::EngineConfig;
use super::execute::{execute, SampleSite};
use super::plan::StepPlan;
use super::request::{FinishReason, GenerationRequest, RequestHandle, RequestId};
use super::scheduler::Scheduler;
use super::sequence::{Drawn, Sequence};
use super::update;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;

pub struct Engine<B: Backend> {
    model: Arc<Transformer<B>>,
    cache: KvCache<B>,
    scheduler: Scheduler,
    commands: Receiver<Command>,
    /// Kept to hand out clients; dropped by [`Engine::spawn`] so the thread
    /// ends once every client is gone.
    sender: Option<Sender<Command>>,
    shared: Arc<Shared>,
    eos: Vec<u32>,
    stopping: bool,
    /// Held between steps ([`EngineClient::pause`]) ...
    paused: bool,
    /// ... except for this many steps still to run ([`EngineClient::step`]).
    steps_left: usize,
    /// Who waits to hear that the engine is held.
    held_acks: Vec<Sender<()>>,
    /// Test hook only (`FERROLM_TEST_PANIC_AFTER_STEPS`): steps with work
    /// left before the engine thread panics.
    panic_after: Option<usize>,
}

/// The environment variable of the test-only panic hook (see the module doc).
const PANIC_AFTER_STEPS: &str = "FERROLM_TEST_PANIC_AFTER_STEPS";

impl<B: Backend + 'static> Engine<B> {
    /// An engine over `model`. With a tokenizer, outputs carry text and
    /// requests may use stop strings; its end-of-turn tokens also end requests.
    pub fn new(
        model: Arc<Transformer<B>>,
        tokenizer: Option<Tokenizer>,
        config: EngineConfig,
    ) -> Result<Self> {
        config.validate()?;
        let c = &model.config;
        let layout = config.layout(model.kv_shape(), c.max_seq_len);
        let cache = model.new_paged_cache(layout, config.prefix_caching)?;
        let mut eos: Vec<u32> = Vec::new();
        for &id in tokenizer.iter().flat_map(|t| t.eos_ids()).chain(&c.eos_token_ids) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let limits = Limits {
            vocab_size: c.vocab_size,
            max_seq_len: c.max_seq_len,
            page_size: layout.page_size,
            num_pages: layout.num_pages,
        };
        let (sender, commands) = channel();
        Ok(Engine {
            scheduler: Scheduler::new(config.max_num_seqs, config.max_batch_tokens),
            shared: Arc::new(Shared::new(limits, tokenizer, cache.stats(), config.max_waiting)),
            model,
            cache,
            commands,
            sender: Some(sender),
            eos,
            stopping: false,
            paused: false,
            steps_left: 0,
            held_acks: Vec::new(),
            panic_after: None,
        })
    }

    /// A handle for adding and cancelling requests from any thread.
    pub fn client(&self) -> EngineClient {
        let sender = self.sender.clone().expect("a spawned engine is driven by its thread");
        EngineClient::new(sender, self.shared.clone())
    }

    /// Queues a request (see [`EngineClient::add_request`]).
    pub fn add_request(&self, request: GenerationRequest) -> Result<RequestHandle> {
        self.client().add_request(request)
    }

    pub fn abort(&self, id: RequestId) {
        self.client().abort(id);
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.stats()
    }

    pub fn model(&self) -> &Arc<Transformer<B>> {
        &self.model
    }

    /// A description of the model and tokenizer (what `get_model_info` and
    /// the server's `/health` report).
    pub fn model_info(&self) -> serde_json::Value {
        let c = &self.model.config;
        let tokenizer = self.shared.tokenizer.as_ref();
        serde_json::json!({
            "architecture": c.family.architecture(),
            "context_length": c.max_position_embeddings,
            "max_seq_len": c.max_seq_len,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "intermediate_size": c.intermediate_size,
            "parameters": crate::model::parameter_count(c),
            "dtype": c.dtype.name(),
            "device": self.model.device().to_string(),
            "bos_token_id": tokenizer.and_then(Tokenizer::bos_id),
            "eos_token_ids": &self.eos,
            "has_chat_template": tokenizer.is_some_and(|t| t.chat_template().is_some()),
        })
    }

    /// Takes queued commands, then runs one scheduled batch (if there is
    /// work and the engine is not held).
    pub fn step(&mut self) -> Result<()> {
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command)?;
        }
        if !self.held() {
            if self.paused {
                self.steps_left -= 1;
            }
            if self.has_work() {
                self.panic_for_tests();
                self.run_batch()?;
            }
        }
        self.publish_stats();
        Ok(())
    }

    /// Steps until every queued request has ended (or a client holds the engine).
    pub fn run_until_idle(&mut self) -> Result<()> {
        self.step()?;
        while self.has_work() && !self.held() {
            self.step()?;
        }
        self.acknowledge_held();
        Ok(())
    }

    /// Held by a client: no forward pass until it steps or resumes the engine.
    fn held(&self) -> bool {
        self.paused && self.steps_left == 0
    }

    fn acknowledge_held(&mut self) {
        if self.held() {
            for ack in self.held_acks.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    /// Moves the engine onto its own thread. It runs while there is work,
    /// sleeps when idle, and exits on [`EngineClient::shutdown`] or when the
    /// last client is dropped (cancelling what is left).
    pub fn spawn(mut self) -> (EngineClient, JoinHandle<()>) {
        let client = self.client();
        self.sender = None;
        if self.panic_after.is_none() {
            self.panic_after = std::env::var(PANIC_AFTER_STEPS).ok().and_then(|v| v.trim().parse().ok());
        }
        let thread = std::thread::Builder::new()
            .name("ferrolm-engine".into())
            .spawn(move || self.serve())
            .expect("spawning the engine thread");
        (client, thread)
    }

    fn serve(mut self) {
        while !self.stopping {
            self.acknowledge_held();
            // Idle or held: wait for a command (a held engine still takes
            // requests and aborts, and publishes what they changed).
            if self.held() || (!self.paused && !self.has_work()) {
                match self.commands.recv() {
                    Ok(command) => {
                        if let Err(e) = self.apply(command) {
                            self.fail_all(&e.to_string(), true);
                        }
                    }
                    Err(_) => break,
                }
                if self.held() {
                    self.publish_stats();
                    continue;
                }
            }
            // Only a broken invariant fails a step or panics. Every request
            // is told (none is left waiting forever); after a panic the
            // engine's state cannot be trusted, so the thread ends.
            match catch_unwind(AssertUnwindSafe(|| self.step())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail_all(&e.to_string(), true),
                Err(panic) => {
                    let detail = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown panic");
                    let reason = format!("the engine thread panicked: {detail}");
                    self.close(Door::Failed(reason.clone()));
                    self.fail_all(&reason, false);
                    return;
                }
            }
        }
        self.close(Door::Stopped);
        self.abort_all();
        self.publish_stats();
    }

    /// Refuses new requests from now on, and takes in every command sent
    /// before: their requests join the queues, to end with the rest.
    fn close(&mut self, door: Door) {
        self.shared.close_door(door);
        while let Ok(command) = self.commands.try_recv() {
            // Pause and step acknowledgements are dropped: their callers hear the engine stopped.
            if let Command::Add(seqs) = command {
                seqs.into_iter().for_each(|s| self.scheduler.add(s));
            }
        }
    }

    /// The test hook (see the module doc): panics once the steps with work are used up.
    fn panic_for_tests(&mut self) {
        if let Some(left) = self.panic_after {
            if left == 0 {
                panic!("{PANIC_AFTER_STEPS} was set: a panic injected for tests");
            }
            self.panic_after = Some(left - 1);
        }
    }

    /// Ends every request with an error: after a panic (`release` false)
    /// the engine failed and nothing but their channels is touched; after a
    /// failed step their pages go back to the pool and the engine carries on.
    fn fail_all(&mut self, reason: &str, release: bool) {
        for s in self.scheduler.drain() {
            if let Some(seq) = s.seq.filter(|_| release) {
                let _ = self.cache.remove_sequence(seq);
            }
            self.shared.count_finished(&s);
            let reason = reason.to_string();
            s.fail(if release { Error::Internal(reason) } else { Error::EngineFailed(reason) });
        }
    }

    fn apply(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Add(seqs) => seqs.into_iter().for_each(|s| self.scheduler.add(s)),
            Command::Abort(id) => self.end(id, FinishReason::Abort)?,
            Command::Pause(ack) => {
                self.paused = true;
                self.steps_left = 0;
                self.held_acks.push(ack);
            }
            Command::Step(steps, ack) => {
                if self.paused {
                    self.steps_left += steps;
                    self.held_acks.push(ack);
                } else {
                    let _ = ack.send(());
                }
            }
            Command::Resume => {
                self.paused = false;
                self.steps_left = 0;
                // Nobody waits for a hold that will not come.
                for ack in self.held_acks.drain(..) {
                    let _ = ack.send(());
                }
            }
            Command::Shutdown => self.stopping = true,
        }
        Ok(())
    }

    /// One step over the scheduled batch: plan it, run it, apply its output.
    fn run_batch(&mut self) -> Result<()> {
        let plan = self.scheduler.schedule(&mut self.cache)?;
        for &id in &plan.out_of_room {
            self.end(id, FinishReason::Length)?;
        }
        if plan.is_empty() {
            return Ok(());
        }
        let site = SampleSite::choose(&plan, &mut self.scheduler, self.model.samples_on_device());
        let output = match execute(&self.model, &mut self.cache, &plan, &site) {
            Ok(output) => output,
            Err(e) => return self.fail_planned(&plan, &e),
        };
        let applied = update::apply(&mut self.scheduler, &mut self.cache, &plan, &output, &self.eos)?;
        self.shared.count_generated(applied.generated);
        self.finish_drawn(applied.drawn)
    }

    /// The batch failed as a whole (e.g. out of memory): its requests end
    /// with the error; everyone else carries on.
    fn fail_planned(&mut self, plan: &StepPlan, error: &Error) -> Result<()> {
        for p in &plan.seqs {
            if let Some(s) = self.remove(p.id)? {
                s.fail(Error::Internal(format!("the engine could not run this request: {error}")));
            }
        }
        Ok(())
    }

    /// Ends the requests whose draw finished them or found their caller
    /// gone. A failed draw (a broken invariant) fails the step before any
    /// request is ended.
    fn finish_drawn(&mut self, drawn: Vec<(RequestId, Result<Drawn>)>) -> Result<()> {
        let mut ended = Vec::new();
        for (id, result) in drawn {
            match result? {
                Drawn::Continue => {}
                Drawn::Finished(reason) => ended.push((id, Some(reason))),
                Drawn::Disconnected => ended.push((id, None)),
            }
        }
        for (id, reason) in ended {
            match reason {
                Some(reason) => self.end(id, reason)?,
                None => drop(self.remove(id)?),
            }
        }
        Ok(())
    }

    /// Ends request `id` (if it is still here) with `reason`.
    fn end(&mut self, id: RequestId, reason: FinishReason) -> Result<()> {
        if let Some(mut s) = self.remove(id)? {
            s.finish(reason)?;
        }
        Ok(())
    }

    /// Takes request `id` out of the queues and releases its pages.
    fn remove(&mut self, id: RequestId) -> Result<Option<Sequence>> {
        let Some(s) = self.scheduler.take(id) else { return Ok(None) };
        if let Some(seq) = s.seq {
            self.cache.remove_sequence(seq)?;
        }
        self.scheduler.orphan_siblings(id);
        self.shared.count_finished(&s);
        // Counters before the caller tells the request it ended: whoever
        // sees the end must also see its pages freed.
        self.publish_stats();
        Ok(Some(s))
    }

    fn abort_all(&mut self) {
        for id in self.scheduler.ids() {
            let _ = self.end(id, FinishReason::Abort);
        }
    }

    fn publish_stats(&self) {
        let s = &self.scheduler;
        self.shared.publish(s.num_running(), s.num_waiting(), s.preemptions(), self.cache.stats());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::mpsc::Receiver;

    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::engine::{Completion, Output};
    use crate::sampling::SamplingConfig;

    /// Steps a test gives the engine before calling a request stuck.
    const STEP_LIMIT: usize = 12;

    fn engine() -> Engine<Cpu> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama_f32");
        let model = Arc::new(Transformer::from_pretrained(dir, Some(160)).unwrap());
        Engine::new(model, None, EngineConfig::default()).unwrap()
    }

    fn request(max_tokens: usize) -> GenerationRequest {
        let mut sampling = SamplingConfig::greedy(max_tokens);
        sampling.ignore_eos = true; // every sample answers exactly max_tokens tokens
        GenerationRequest::new((40..60).collect(), sampling)
    }

    /// Queues requests as one command, as a client does.
    fn send(engine: &Engine<Cpu>, seqs: Vec<Sequence>) {
        engine.sender.as_ref().unwrap().send(Command::Add(seqs)).unwrap();
    }

    /// The samples of a group with ids `first..first + n`, as
    /// `EngineClient::add_request_group` makes them.
    fn group(
        request: &GenerationRequest,
        first: RequestId,
        n: usize,
        sink: &Sender<Output>,
    ) -> Vec<Sequence> {
        (0..n)
            .map(|i| {
                let r = GenerationRequest { stream: i as u64, ..request.clone() };
                let mut seq = Sequence::new(first + i as u64, r, None, Some(sink.clone())).unwrap();
                seq.fork_from = (i > 0).then_some(first);
                seq.index = i;
                seq
            })
            .collect()
    }

    /// Steps (at most [`STEP_LIMIT`]) until the engine is idle; then every
    /// request's completion, by id.
    fn finish(engine: &mut Engine<Cpu>, outputs: &Receiver<Output>) -> HashMap<RequestId, Completion> {
        // The first step also takes in what is queued.
        for _ in 0..STEP_LIMIT {
            engine.step().unwrap();
            if !engine.has_work() {
                break;
            }
        }
        let stats = engine.stats();
        assert!(!engine.has_work(), "requests never ran: {stats:?}");
        assert_eq!((stats.running, stats.waiting, stats.pool.used_pages), (0, 0, 0), "{stats:?}");
        let mut got: HashMap<RequestId, Completion> = HashMap::new();
        for output in outputs.try_iter() {
            got.entry(output.request).or_default().absorb(output).unwrap();
        }
        got
    }

    fn assert_answered(got: &HashMap<RequestId, Completion>, ids: &[RequestId], max_tokens: usize) {
        for id in ids {
            let c = got.get(id).unwrap_or_else(|| panic!("request {id} never answered"));
            assert_eq!(c.finish, Some(FinishReason::Length), "request {id}");
            assert_eq!(c.tokens.len(), max_tokens, "request {id}");
        }
    }

    #[test]
    fn past_max_waiting_a_request_is_refused_and_admission_frees_its_place() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama_f32");
        let model = Arc::new(Transformer::from_pretrained(dir, Some(160)).unwrap());
        let config = EngineConfig { max_waiting: Some(2), max_num_seqs: 1, ..EngineConfig::default() };
        let mut engine = Engine::new(model, None, config).unwrap();
        let (sink, outputs) = channel();
        let client = engine.client();
        let a = client.add_request_with_sink(request(2), sink.clone()).unwrap();
        let b = client.add_request_with_sink(request(2), sink.clone()).unwrap();
        let refused = client.add_request_with_sink(request(2), sink.clone()).unwrap_err();
        assert!(matches!(refused, Error::Overloaded { waiting: 2, max_waiting: 2 }), "{refused}");
        assert_eq!(engine.stats().queued, 2);
        // One slot: the first step admits `a` only, which frees one place.
        engine.step().unwrap();
        assert_eq!(engine.stats().queued, 1);
        let c = client.add_request_with_sink(request(2), sink.clone()).unwrap();
        // An abort while waiting frees its place too.
        client.abort(c);
        let got = finish(&mut engine, &outputs);
        assert_answered(&got, &[a, b], 2);
        assert_eq!(got[&c].finish, Some(FinishReason::Abort));
        assert_eq!(engine.stats().queued, 0);
        // A group larger than the limit is taken when nothing waits.
        let ids = client.add_request_group(request(1), 3, sink).unwrap();
        let got = finish(&mut engine, &outputs);
        assert_answered(&got, &ids, 1);
        assert_eq!(engine.stats().queued, 0);
    }

    #[test]
    fn a_panicking_engine_thread_fails_every_request_and_refuses_new_ones() {
        let mut engine = engine();
        engine.panic_after = Some(1);
        let (client, thread) = engine.spawn();
        let (sink, outputs) = channel();
        client.pause().unwrap();
        let running = client.add_request_with_sink(request(8), sink.clone()).unwrap();
        client.step(1).unwrap(); // `running` is admitted and prefilled
        let waiting = client.add_request_with_sink(request(8), sink.clone()).unwrap();
        // The next step panics: the acknowledgement never comes.
        assert!(matches!(client.step(1), Err(Error::EngineFailed(_))));
        thread.join().unwrap();
        let mut ended = HashMap::new();
        for output in outputs.try_iter() {
            if let crate::engine::OutputKind::Failed(e) = output.kind {
                ended.insert(output.request, e.to_string());
            }
        }
        for id in [running, waiting] {
            assert!(ended.get(&id).is_some_and(|e| e.contains("the engine failed")), "{id}: {ended:?}");
        }
        let refused = client.add_request_with_sink(request(8), sink).unwrap_err();
        assert!(matches!(refused, Error::EngineFailed(_)), "{refused}");
        assert!(client.failure().is_some_and(|f| f.contains("panic injected for tests")));
        assert_eq!(client.stats().queued, 0);
    }

    #[test]
    fn a_group_taken_in_one_command_at_a_time_still_answers_every_sample() {
        // The worst interleaving a client thread can meet: the engine steps
        // between any two of its commands, so a first sample done at its
        // prefill has ended before the next command is taken in.
        for max_tokens in [0, 1] {
            for n in [2, 3] {
                let mut engine = engine();
                let (sink, outputs) = channel();
                let ids = engine.client().add_request_group(request(max_tokens), n, sink).unwrap();
                let queued: Vec<Command> = engine.commands.try_iter().collect();
                for command in queued {
                    engine.apply(command).unwrap();
                    engine.step().unwrap();
                }
                let got = finish(&mut engine, &outputs);
                assert_answered(&got, &ids, max_tokens);
                // The group was taken in at once: its prompt was computed once
                // and the other samples forked its pages.
                assert_eq!(engine.stats().prompt_tokens, 20, "max_tokens={max_tokens} n={n}");
            }
        }
    }

    #[test]
    fn samples_whose_first_sample_has_ended_compute_their_own_prompt() {
        // Siblings that name a request no longer in the engine (finished at
        // its prefill, or aborted before it ran) must not wait for it.
        for max_tokens in [0, 1] {
            for n in [2, 3] {
                for abort in [false, true] {
                    let mut engine = engine();
                    let (sink, outputs) = channel();
                    let mut seqs = group(&request(max_tokens), 100, n, &sink);
                    let siblings = seqs.split_off(1);
                    send(&engine, seqs);
                    if abort {
                        engine.client().abort(100);
                    }
                    engine.step().unwrap();
                    assert!(!engine.has_work(), "the first sample has ended");
                    send(&engine, siblings);
                    let got = finish(&mut engine, &outputs);
                    let ids: Vec<RequestId> = (101..100 + n as u64).collect();
                    assert_answered(&got, &ids, max_tokens);
                    let first = &got[&100];
                    let expect = if abort { FinishReason::Abort } else { FinishReason::Length };
                    assert_eq!(first.finish, Some(expect), "max_tokens={max_tokens} n={n}");
                }
            }
        }
    }
}
