//! Embedding the serving engine in a Rust program (no Python): the engine
//! runs on its own thread; worker threads submit prompts and stream text.
//!
//! ```text
//! cargo run --release -p ferrolm-core --example engine -- path/to/model.gguf "Hello" "The sky is"
//! ```

use std::io::Write;
use std::sync::Arc;

use ferrolm_core::engine::{Engine, EngineConfig, OutputKind};
use ferrolm_core::model::load_with_tokenizer;
use ferrolm_core::{on_device, LoadOptions, SamplingConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: engine MODEL [PROMPT ...]   (MODEL: an HF directory or a .gguf file)");
        std::process::exit(2);
    };
    let mut prompts: Vec<String> = args.collect();
    if prompts.is_empty() {
        prompts = vec!["The capital of France is".into(), "Once upon a time".into()];
    }

    // `device: Device::Cuda(0)` would load it onto a GPU; the rest is the same.
    let options = LoadOptions { max_seq_len: Some(1024), ..Default::default() };
    let (model, tokenizer) = load_with_tokenizer(&path, &options)?;
    let (client, engine_thread) =
        on_device!(model, |m| Engine::new(Arc::new(m), tokenizer, EngineConfig::default())?.spawn());

    // One thread per prompt, all served together by the engine thread.
    let workers: Vec<_> = prompts
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| {
            let client = client.clone();
            std::thread::spawn(move || -> ferrolm_core::Result<()> {
                let handle = client.add_text_request(&prompt, SamplingConfig::greedy(24))?;
                let mut text = prompt;
                for output in handle {
                    match output.kind {
                        OutputKind::Token { text: piece, .. } => text += &piece,
                        OutputKind::Finished { reason, text: tail, usage, .. } => {
                            text += &tail;
                            println!(
                                "[{i}] {text:?} ({}, {} tokens)",
                                reason.as_str(),
                                usage.completion_tokens
                            );
                        }
                        OutputKind::Failed(e) => return Err(e),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker thread")?;
    }
    let stats = client.stats();
    println!(
        "{} requests, {} tokens generated, {} KV pages in use",
        stats.requests_finished, stats.generation_tokens, stats.pool.used_pages
    );
    std::io::stdout().flush()?;
    client.shutdown();
    engine_thread.join().expect("engine thread");
    Ok(())
}
