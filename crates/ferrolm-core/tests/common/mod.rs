//! Helpers shared by the integration tests: reading HF reference outputs
//! (safetensors files written by tests/fixtures/make_*.py) and comparing logits.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::{Logits, SeqInput, Transformer};
use safetensors::{Dtype, SafeTensors};

/// A reference file: token ids (i64) and float tensors (f32) by name.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(path: &Path) -> Reference {
        Reference { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    pub fn tensor(&self, name: &str) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        st.tensor(name).ok().map(|t| (t.dtype(), t.shape().to_vec(), t.data().to_vec()))
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            SafeTensors::deserialize(&self.bytes).unwrap().names().into_iter().map(str::to_string).collect();
        names.sort();
        names
    }

    pub fn tokens(&self, name: &str) -> Option<Vec<u32>> {
        let (dtype, _, data) = self.tensor(name)?;
        assert_eq!(dtype, Dtype::I64);
        Some(data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect())
    }

    pub fn floats(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (dtype, shape, data) = self.tensor(name).unwrap();
        assert_eq!(dtype, Dtype::F32);
        (shape, data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    }
}

/// The bound on [`max_rel_error`] against HF's logits wherever the computation
/// is f32 end to end (the exact path, the default path over safetensors with
/// an f32 KV cache, GGUF on the exact path, FP8 against the f32 model on
/// FP8-rounded weights). Measured at most 9.6e-6 on every fixture
/// (benchmarks/parity_errors.py): a tenfold margin. The same bound as
/// `HF_TOLERANCE` in tests/conftest.py, stated in README's Exactness section.
pub const HF_TOLERANCE: f32 = 1e-4;

/// max |ours - ref| / max |ref| per row of width `vocab`, worst row.
pub fn max_rel_error(ours: &[f32], reference: &[f32], vocab: usize) -> f32 {
    assert_eq!(ours.len(), reference.len());
    ours.chunks(vocab)
        .zip(reference.chunks(vocab))
        .map(|(a, b)| {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            err / scale
        })
        .fold(0f32, f32::max)
}

/// The next token of every position of every sequence in a reference file,
/// as `model` predicts it and as HF did: (agreeing positions, positions, worst
/// max |ours - HF| of a position's logits).
pub fn agreement_with_reference(model: &Transformer<Cpu>, reference: &Path) -> (usize, usize, f32) {
    let reference = Reference::open(reference);
    let vocab = model.config.vocab_size;
    let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b });
    let (mut same, mut total, mut max_err) = (0, 0, 0f32);
    for k in 0.. {
        let Some(tokens) = reference.tokens(&format!("tokens_{k}")) else { break };
        let expected = reference.floats(&format!("logits_{k}")).1;
        let mut cache = model.new_cache(1).unwrap();
        let got = model
            .forward(&mut cache, &[SeqInput { seq: 0, start_pos: 0, tokens: &tokens }], Logits::All)
            .unwrap();
        for (g, e) in got.chunks(vocab).zip(expected.chunks(vocab)) {
            same += usize::from(argmax(g) == argmax(e));
            total += 1;
            max_err = g.iter().zip(e).fold(max_err, |m, (a, b)| m.max((a - b).abs()));
        }
    }
    (same, total, max_err)
}
