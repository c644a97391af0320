//! [`Engine`]: the step loop. Each step takes new commands, then runs one
//! batch in three parts: the scheduler's [`StepPlan`], the executor's
//! forward pass over it, and the update that applies its output to the
//! requests (log-probabilities, drawn tokens, stop conditions). Finished,
//! failed and cancelled requests end here and give their pages back at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::client::{Command, EngineClient, EngineStats, Limits, Shared};
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
}

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
            shared: Arc::new(Shared::new(limits, tokenizer, cache.stats())),
            model,
            cache,
            commands,
            sender: Some(sender),
            eos,
            stopping: false,
            paused: false,
            steps_left: 0,
            held_acks: Vec::new(),
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
                    self.fail_all(&format!("the engine thread panicked: {detail}"), false);
                    return;
                }
            }
        }
        self.abort_all();
        self.publish_stats();
    }

    /// Ends every request with an internal error. With `release`, their
    /// pages go back to the pool; after a panic nothing but their channels
    /// is touched.
    fn fail_all(&mut self, reason: &str, release: bool) {
        for s in self.scheduler.drain() {
            if let Some(seq) = s.seq.filter(|_| release) {
                let _ = self.cache.remove_sequence(seq);
            }
            self.shared.count_finished(&s);
            s.fail(Error::Internal(reason.to_string()));
        }
    }

    fn apply(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Add(seq) => self.scheduler.add(*seq),
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
