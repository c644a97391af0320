//! # ferrolm-core
//!
//! The pure-Rust core of ferrolm: configs, weight loading, one decoder for
//! every supported family (Llama, Mistral, Qwen2, Qwen3), the KV cache,
//! sampling and the generation loop. No Python in here: a Rust service can
//! embed it directly.
//!
//! ```no_run
//! use ferrolm_core::{generate, backend::cpu::Cpu, SamplingConfig, Transformer};
//!
//! let model = std::sync::Arc::new(Transformer::<Cpu>::from_pretrained("path/to/model", Some(512))?);
//! let out = generate(&model, &[vec![1, 15043, 29892]], &SamplingConfig::greedy(16), false)?;
//! println!("{:?}", out[0].tokens);
//! # Ok::<(), ferrolm_core::Error>(())
//! ```
//!
//! Layout: [`config`] (typed `Config`, family registry) -> [`weights`]
//! (checkpoint readers, tensor names) -> [`model`] (the decoder, written
//! against [`backend::Backend`]) -> [`kv`] (the paged cache passed to every
//! forward) -> [`sampling`] -> [`engine`] (continuous batching: the one
//! decode loop, used by [`generate`], [`session`] and servers).

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod formats;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod generate;
pub mod inference_config;
pub mod kv;
pub mod model;
pub mod sampling;
pub mod session;
mod stop;
pub mod tokenizer;
pub mod tools;
pub mod weights;

pub use backend::Device;
pub use config::{Config, Family, RopeScaling};
pub use engine::{Engine, EngineClient, EngineConfig, FinishReason, GenerationRequest};
pub use error::{Error, Result};
pub use eval::{perplexity, Perplexity};
pub use formats::DType;
pub use generate::{generate, Generation};
pub use inference_config::InferenceConfig;
pub use kv::{KvCache, KvLayout, SeqId};
pub use model::{LoadOptions, Logits, SeqInput, Transformer};
pub use sampling::{Sampled, Sampler, SamplingConfig};
pub use session::{Session, TurnSummary};
pub use tokenizer::Tokenizer;
