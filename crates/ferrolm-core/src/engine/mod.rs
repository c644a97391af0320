//! The serving engine: requests in, streamed tokens out, many at once.
//!
//! An [`Engine`] owns a model's paged KV cache and a continuous-batching
//! scheduler: every [`Engine::step`] admits waiting requests, runs one
//! forward pass over a ragged batch that mixes decode tokens and chunks of
//! prompts under a token budget, samples, and streams each request's
//! [`Output`]s to its [`RequestHandle`]. When pages run out, the newest
//! request is preempted (its pages freed, its tokens recomputed later).
//!
//! Callers that run the model themselves drive the same scheduler by hand
//! through a [`SteppedScheduler`] (page bookkeeping only, no model).
//!
//! Drive it step by step from your own loop, or move it onto its own thread
//! with [`Engine::spawn`] and talk to it through an [`EngineClient`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferrolm_core::{backend::cpu::Cpu, engine::{Engine, EngineConfig, GenerationRequest}};
//! use ferrolm_core::{SamplingConfig, Tokenizer, Transformer};
//!
//! let model = Arc::new(Transformer::<Cpu>::from_pretrained("model.gguf", Some(2048))?);
//! let tokenizer = Tokenizer::from_pretrained("model.gguf")?;
//! let (client, _thread) = Engine::new(model, Some(tokenizer), EngineConfig::default())?.spawn();
//! let handle = client.add_text_request("Once upon a time", SamplingConfig::greedy(32))?;
//! for output in handle {
//!     print!("{}", output.text());
//! }
//! # Ok::<(), ferrolm_core::Error>(())
//! ```

mod client;
mod config;
mod core;
mod execute;
mod plan;
mod request;
mod scheduler;
mod sequence;
mod stepped;
mod ticket;
mod update;

pub use self::client::{EngineClient, EngineStats};
pub use self::config::EngineConfig;
pub use self::core::Engine;
pub use self::request::{
    Completion, FinishReason, GenerationRequest, Output, OutputKind, RequestHandle, RequestId, Usage,
};
pub use self::stepped::{Finished, Phase, RequestStatus, SteppedConfig, SteppedScheduler, Work};
