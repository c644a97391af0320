//! Choosing the next token: `SamplingConfig` (temperature, top-k,
//! top-p, min-p, repetition/frequency/presence penalties over a window,
//! seeds) applied to one row of logits by a per-sequence [`Sampler`],
//! optionally held to a [`Constraint`] (structured output).

mod config;
pub mod constraint;
pub mod gbnf;
mod sampler;

pub use self::config::SamplingConfig;
pub use self::constraint::{compile, Constraint, ConstraintFactory, ConstraintMatcher};
pub use self::sampler::{argmax, log_softmax, softmax, Sampled, Sampler};
