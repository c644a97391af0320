//! Batch generation as Meta's `generate`: every prompt becomes a request to
//! a private [`Engine`], which runs them together to the end. There is one
//! decode loop in ferrolm, and this is a caller of it.

use std::sync::Arc;

use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig, FinishReason, GenerationRequest};
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::sampling::SamplingConfig;

/// The new tokens of one prompt and their log-probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// Log-probabilities of the prompt tokens, when asked for (0 for the first).
    pub prompt_logprobs: Option<Vec<f32>>,
}

/// Generates a continuation of each prompt (prompt `i` draws from random
/// stream `i` of `config.seed`). A sequence stops at an end-of-sequence or
/// stop token (not included in its output), after `max_tokens`, or when
/// prompt plus output reach the model's `max_seq_len` (as Meta's `total_len`).
pub fn generate<B: Backend + 'static>(
    model: &Arc<Transformer<B>>,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    prompt_logprobs: bool,
) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Err(Error::InvalidInput("nothing to generate: pass at least one prompt".into()));
    }
    // Room for every prompt at full length: nothing is ever preempted.
    let page_size = EngineConfig::default().page_size;
    let engine_config = EngineConfig {
        num_pages: Some(prompts.len() * model.config.max_seq_len.div_ceil(page_size)),
        max_num_seqs: prompts.len(),
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model.clone(), None, engine_config)?;
    let handles = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            engine.add_request(GenerationRequest {
                prompt: prompt.clone(),
                sampling: config.clone(),
                stream: i as u64,
                prompt_logprobs,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    engine.run_until_idle()?;
    handles
        .into_iter()
        .map(|h| {
            let done = h.wait()?;
            Ok(Generation {
                logprobs: done.logprobs.iter().map(|s| s.logprob).collect(),
                tokens: done.tokens,
                finish: done.finish.unwrap_or(FinishReason::Length),
                prompt_logprobs: done.prompt_logprobs,
            })
        })
        .collect()
}
