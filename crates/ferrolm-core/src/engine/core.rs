//! [`Engine`]: the step loop. Each step takes new commands, asks the
//! scheduler for a batch, runs one forward pass, draws tokens, and streams
//! outputs; finished and cancelled requests give their pages back at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::client::{Command, EngineClient, EngineStats, Limits, Shared};
use super::config::EngineConfig;
use super::request::{FinishReason, GenerationRequest, RequestHandle, RequestId};
use super::scheduler::Scheduler;
use super::sequence::{token_logprobs, Drawn, Sequence};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::model::{Logits, SeqInput, Transformer};
use crate::sampling::device::RowSampling;
use crate::sampling::Sampled;
use crate::tokenizer::Tokenizer;

/// What a forward pass handed back: logits rows to sample from on the host,
/// or each row's token, picked where the logits are, and its log-probability.
enum Picked {
    Logits(Vec<f32>),
    Tokens(Vec<(u32, f32)>),
}

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
        let layout =
            config.layout(c.num_hidden_layers, c.kv_dim(), c.max_seq_len, model.backend.kv_element_bytes());
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
        !self.scheduler.waiting.is_empty() || !self.scheduler.running.is_empty()
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
            "parameters": c.parameter_count(),
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
        let sched = &mut self.scheduler;
        let all: Vec<Sequence> = sched.running.drain(..).chain(sched.waiting.drain(..)).collect();
        for s in all {
            if let Some(seq) = s.seq.filter(|_| release) {
                let _ = self.cache.remove_sequence(seq);
            }
            self.shared.count_finished(&s);
            s.fail(Error::Internal(reason.to_string()));
        }
    }

    fn apply(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Add(seq) => self.scheduler.waiting.push_back(*seq),
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

    fn run_batch(&mut self) -> Result<()> {
        let plan = self.scheduler.schedule(&mut self.cache)?;
        let out_of_room: Vec<RequestId> =
            plan.out_of_room.iter().map(|&i| self.scheduler.running[i].id).collect();
        for id in out_of_room {
            self.end(id, FinishReason::Length)?;
        }
        if plan.work.is_empty() {
            return Ok(());
        }
        let vocab = self.model.config.vocab_size;
        let running = &self.scheduler.running;

        // Logits rows: the last row of each request that draws this step,
        // and every row of a prompt whose log-probabilities were asked for.
        // `taken[i]` = how many of the returned rows belong to work item i.
        let mut rows = Vec::new();
        let mut taken = Vec::with_capacity(plan.work.len());
        let mut row = 0;
        for w in &plan.work {
            let s = &running[w.index];
            let before = rows.len();
            if s.wants_prompt_logprobs(w.start) {
                rows.extend(row..row + w.len);
            } else if w.start + w.len == s.tokens.len() {
                rows.push(row + w.len - 1);
            }
            taken.push(rows.len() - before);
            row += w.len;
        }
        // Where tokens are picked: batches whose drawing requests are all
        // plain greedy, or (on a backend that samples on the device) all
        // free of penalties and top-N log-probabilities, pick them where the
        // logits are (a GPU copies back only ids); anything else samples on
        // the host from the logits rows. A sampled leader whose siblings
        // fork this step keeps its row of logits: each sibling draws its own
        // first token from it.
        let device_ok = self.model.samples_on_device();
        let waiting = &self.scheduler.waiting;
        let has_siblings = |id| waiting.iter().any(|x| x.fork_from == Some(id));
        let on_device = plan.work.iter().zip(&taken).all(|(w, &n)| {
            let s = &running[w.index];
            let samples_there = device_ok && s.sampler.fits_device() && !has_siblings(s.id);
            !s.wants_prompt_logprobs(w.start) && (n == 0 || s.sampler.is_plain_greedy() || samples_there)
        });
        let params: Vec<RowSampling> = if on_device {
            let running = &mut self.scheduler.running;
            plan.work
                .iter()
                .zip(&taken)
                .filter(|(_, &n)| n > 0)
                .map(|(w, _)| running[w.index].sampler.device_params())
                .collect()
        } else {
            Vec::new()
        };
        let running = &self.scheduler.running;
        let inputs: Vec<SeqInput> = plan
            .work
            .iter()
            .map(|w| {
                let s = &running[w.index];
                SeqInput {
                    seq: s.seq.expect("scheduled requests hold pages"),
                    start_pos: w.start,
                    tokens: &s.tokens[w.start..w.start + w.len],
                }
            })
            .collect();
        let picked = if on_device {
            self.model
                .forward_sampled(&mut self.cache, &inputs, Logits::Rows(rows), &params)
                .map(Picked::Tokens)
        } else {
            self.model.forward(&mut self.cache, &inputs, Logits::Rows(rows)).map(Picked::Logits)
        };
        let picked = match picked {
            Ok(p) => p,
            Err(e) => {
                // The batch failed as a whole (e.g. out of memory): its
                // requests end with the error; everyone else carries on.
                let message = e.to_string();
                let ids: Vec<RequestId> = plan.work.iter().map(|w| running[w.index].id).collect();
                for id in ids {
                    if let Some(s) = self.remove(id)? {
                        s.fail(Error::Internal(format!("the engine could not run this request: {message}")));
                    }
                }
                return Ok(());
            }
        };

        // Bookkeeping in order; then the draws, which are independent per
        // request (and cost a vocabulary sort each), in parallel.
        let mut draw_row: Vec<Option<usize>> = vec![None; self.scheduler.running.len()];
        let mut offset = 0;
        for (w, &n) in plan.work.iter().zip(&taken) {
            let s = &mut self.scheduler.running[w.index];
            s.computed += w.len;
            let wants = s.wants_prompt_logprobs(w.start);
            if let (Some(lp), Picked::Logits(logits)) =
                (s.prompt_logprobs.as_mut().filter(|_| wants), &picked)
            {
                let next = &s.tokens[w.start + 1..(w.start + w.len + 1).min(s.prompt_len)];
                lp.extend(token_logprobs(&logits[offset * vocab..(offset + n) * vocab], vocab, next));
            }
            if s.computed == s.tokens.len() {
                draw_row[w.index] = Some(offset + n - 1);
            }
            offset += n;
        }
        self.fork_siblings(&mut draw_row)?;
        let (eos, max_seq_len) = (&self.eos, self.cache.max_seq_len());
        let drawn: Vec<(RequestId, Result<Drawn>, bool)> = self
            .scheduler
            .running
            .par_iter_mut()
            .zip(draw_row)
            .filter_map(|(s, row)| {
                let row = row?;
                let before = s.generated();
                let drawn = match &picked {
                    Picked::Logits(logits) => {
                        s.draw(&logits[row * vocab..(row + 1) * vocab], eos, max_seq_len)
                    }
                    Picked::Tokens(best) => match s.out_of_room(max_seq_len) {
                        Some(full) => Ok(full),
                        None => {
                            let (token, logprob) = best[row];
                            s.accept(Sampled { token, logprob, top_logprobs: Vec::new() }, eos, max_seq_len)
                        }
                    },
                };
                Some((s.id, drawn, s.generated() > before))
            })
            .collect();
        self.shared.count_generated(drawn.iter().filter(|d| d.2).count() as u64);
        let mut ended = Vec::new();
        for (id, result, _) in drawn {
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

    /// Siblings whose leader just computed its prompt join the running list
    /// on a fork of its pages (the partly filled last page is copied when
    /// first written) and draw from the leader's logits row.
    fn fork_siblings(&mut self, draw_row: &mut Vec<Option<usize>>) -> Result<()> {
        let sched = &mut self.scheduler;
        let leaders: Vec<(usize, usize)> = (0..sched.running.len())
            .filter_map(|i| draw_row[i].filter(|_| sched.running[i].generated() == 0).map(|row| (i, row)))
            .collect();
        for (leader, row) in leaders {
            let id = sched.running[leader].id;
            while sched.running.len() < sched.max_num_seqs {
                let Some(at) = sched.waiting.iter().position(|s| s.fork_from == Some(id)) else { break };
                let mut sibling = sched.waiting.remove(at).expect("index from position");
                let parent = &sched.running[leader];
                sibling.seq = Some(self.cache.fork(parent.seq.expect("running requests hold pages"))?);
                sibling.computed = parent.computed;
                sibling.cached_tokens = parent.cached_tokens;
                if sibling.prompt_logprobs.is_some() {
                    sibling.prompt_logprobs = parent.prompt_logprobs.clone();
                }
                sibling.fork_from = None;
                sibling.forked = true;
                sched.running.push(sibling);
                draw_row.push(Some(row));
            }
            // No room left: the rest compute their prompt themselves.
            sched.orphan_siblings(id);
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
        let ids: Vec<RequestId> =
            self.scheduler.running.iter().chain(&self.scheduler.waiting).map(|s| s.id).collect();
        for id in ids {
            let _ = self.end(id, FinishReason::Abort);
        }
    }

    fn publish_stats(&self) {
        let s = &self.scheduler;
        self.shared.publish(s.running.len(), s.waiting.len(), s.preemptions, self.cache.stats());
    }
}
