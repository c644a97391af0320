//! Embedding ferrolm in a Rust program: load an HF model directory and print
//! the greedy continuation of a prompt given as token ids.
//!
//!     cargo run --release -p ferrolm-core --example greedy -- MODEL_DIR [TOKEN_ID ...]

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::{generate, SamplingConfig, Transformer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: greedy MODEL_DIR [TOKEN_ID ...]")?;
    let mut prompt: Vec<u32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if prompt.is_empty() {
        prompt = vec![1];
    }

    let model = Transformer::<Cpu>::from_pretrained(&dir, None)?;
    let c = &model.config;
    println!(
        "{}: {} layers, hidden {}, vocab {}, {} parameters",
        c.family.architecture(),
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        ferrolm_core::model::parameter_count(c)
    );

    let out = generate(&std::sync::Arc::new(model), &[prompt.clone()], &SamplingConfig::greedy(16), false)?;
    println!("prompt {prompt:?} -> greedy {:?}", out[0].tokens);
    Ok(())
}
