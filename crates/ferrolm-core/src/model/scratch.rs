//! The activation buffers of a forward pass, kept between passes so that
//! decode steps of one batch size allocate nothing.

use std::sync::Mutex;

use crate::backend::Backend;
use crate::config::Config;
use crate::error::Result;

/// The activations of one decoder block for a batch of `rows`, written by
/// every layer in turn (each op overwrites its output whole).
pub(super) struct Scratch<B: Backend> {
    rows: usize,
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    pub attn: B::Buf,
    /// o_proj's and then down_proj's output (`[rows, hidden]`).
    pub hidden: B::Buf,
    pub normed: B::Buf,
    pub act: B::Buf,
}

impl<B: Backend> Scratch<B> {
    fn new(b: &B, c: &Config, rows: usize) -> Result<Self> {
        Ok(Scratch {
            rows,
            q: b.zeros(rows * c.q_dim())?,
            k: b.zeros(rows * c.kv_dim())?,
            v: b.zeros(rows * c.kv_dim())?,
            attn: b.zeros(rows * c.q_dim())?,
            hidden: b.zeros(rows * c.hidden_size)?,
            normed: b.zeros(rows * c.hidden_size)?,
            act: b.zeros(rows * c.intermediate_size)?,
        })
    }
}

/// The buffers of the last forward pass, waiting for the next.
pub(super) struct ScratchSlot<B: Backend>(Mutex<Option<Scratch<B>>>);

impl<B: Backend> Default for ScratchSlot<B> {
    fn default() -> Self {
        ScratchSlot(Mutex::new(None))
    }
}

impl<B: Backend> ScratchSlot<B> {
    /// Buffers for a batch of `rows`: last pass's when it had as many rows,
    /// else new ones.
    pub fn take(&self, b: &B, c: &Config, rows: usize) -> Result<Scratch<B>> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match kept {
            Some(s) if s.rows == rows => Ok(s),
            _ => Scratch::new(b, c, rows),
        }
    }

    pub fn keep(&self, s: Scratch<B>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }
}
