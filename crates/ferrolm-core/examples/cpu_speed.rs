//! Prefill and decode speed of one model on the CPU backend, for profiling
//! the kernels without Python in the way:
//!
//!     cargo run --release --example cpu_speed -- MODEL.gguf [prompt_tokens] [gen_tokens]
//!
//! (`ferrolm bench` and `benchmarks/cpu_bench.py` are the user-facing tools.)

use std::time::Instant;

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::{Logits, SeqInput, Transformer};

fn main() -> ferrolm_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: cpu_speed MODEL [prompt_tokens] [gen_tokens]");
    let prompt_len: usize = args.get(2).map_or(128, |s| s.parse().expect("prompt tokens"));
    let gen: usize = args.get(3).map_or(128, |s| s.parse().expect("generated tokens"));
    let model = Transformer::<Cpu>::from_pretrained(path, Some(prompt_len + gen + 8))?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: ?");
    println!("loaded; peak memory so far {}", peak.trim_start_matches("VmHWM:").trim());
    println!("{} threads, {:?} kernels", model.backend.threads(), model.backend.isa());
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 7919) % 20000 + 100).collect();
    for _ in 0..3 {
        let mut cache = model.new_cache(1)?;
        let t = Instant::now();
        let logits =
            model.forward(&mut cache, &[SeqInput { seq: 0, start_pos: 0, tokens: &prompt }], Logits::Last)?;
        let prefill = t.elapsed().as_secs_f64();
        let argmax = |l: &[f32]| {
            l.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0
        };
        let mut tok = argmax(&logits) as u32;
        let t = Instant::now();
        for i in 0..gen {
            let input = [SeqInput { seq: 0, start_pos: prompt_len + i, tokens: &[tok] }];
            tok = argmax(&model.forward(&mut cache, &input, Logits::Last)?) as u32;
        }
        let decode = t.elapsed().as_secs_f64();
        println!("prefill {:.1} tok/s, decode {:.1} tok/s", prompt_len as f64 / prefill, gen as f64 / decode);
    }
    Ok(())
}
