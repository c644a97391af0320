//! Helpers shared by the integration tests: reading HF reference outputs
//! (safetensors files written by tests/fixtures/make_*.py) and comparing logits.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;

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
