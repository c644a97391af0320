//! `_core.Tokenizer` and `_core.StreamDecoder`, for Python's `ferrolm.Tokenizer`.

use std::path::PathBuf;

use ferrolm_core::tokenizer::{
    BatchOptions, Padding, StreamDecoder as CoreStreamDecoder, Tokenizer as CoreTokenizer,
};
use ferrolm_core::Error;
use pyo3::prelude::*;

use crate::errors::{run, to_py};
use crate::tokens::token_ids;

/// Registers the classes of this module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add_class::<StreamDecoder>()?;
    Ok(())
}

/// One row of token ids (or mask values) per sequence.
type IdRows = Vec<Vec<u32>>;

#[pyclass(module = "ferrolm._core")]
pub struct Tokenizer {
    inner: CoreTokenizer,
}

#[pymethods]
impl Tokenizer {
    /// Loads a `tokenizer.json`.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Tokenizer> {
        run(py, || Ok(Tokenizer { inner: CoreTokenizer::from_file(&path)? }))
    }

    /// The tokenizer embedded in a GGUF file.
    #[staticmethod]
    fn from_gguf(py: Python<'_>, path: PathBuf) -> PyResult<Tokenizer> {
        run(py, || Ok(Tokenizer { inner: CoreTokenizer::from_gguf(&path)? }))
    }

    /// A model directory, a `tokenizer.json` or a `.gguf` file.
    #[staticmethod]
    fn from_pretrained(py: Python<'_>, path: PathBuf) -> PyResult<Tokenizer> {
        run(py, || Ok(Tokenizer { inner: CoreTokenizer::from_pretrained(&path)? }))
    }

    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        run(py, || self.inner.encode(text, add_special_tokens))
    }

    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        run(py, || self.inner.encode_batch(&texts, add_special_tokens))
    }

    /// `(input_ids, attention_mask)`; `padding` is "none", "longest" or "max_length".
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (texts, add_special_tokens, padding, max_length, truncation, pad_left))]
    fn encode_batch_padded(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
        padding: &str,
        max_length: Option<usize>,
        truncation: bool,
        pad_left: bool,
    ) -> PyResult<(IdRows, IdRows)> {
        let padding = match padding {
            "none" => Padding::None,
            "longest" => Padding::Longest,
            "max_length" => Padding::MaxLength,
            other => {
                return Err(to_py(Error::InvalidInput(format!(
                    "padding must be \"none\", \"longest\" or \"max_length\", not {other:?}"
                ))))
            }
        };
        let opts = BatchOptions { add_special_tokens, padding, max_length, truncate: truncation, pad_left };
        let batch = run(py, || self.inner.encode_batch_padded(&texts, &opts))?;
        Ok((batch.input_ids, batch.attention_mask))
    }

    fn decode(&self, py: Python<'_>, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        run(py, || self.inner.decode(&token_ids(ids)?, skip_special_tokens))
    }

    fn decode_batch(
        &self,
        py: Python<'_>,
        sequences: Vec<Vec<i64>>,
        skip_special_tokens: bool,
    ) -> PyResult<Vec<String>> {
        run(py, || {
            let sequences = sequences.into_iter().map(token_ids).collect::<ferrolm_core::Result<Vec<_>>>()?;
            self.inner.decode_batch(&sequences, skip_special_tokens)
        })
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id).ok().and_then(|id| self.inner.id_to_token(id))
    }

    /// Renders the chat template; `messages_json` is a JSON list of messages,
    /// `kwargs_json` a JSON object of template variables.
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages_json: &str,
        add_generation_prompt: bool,
        kwargs_json: &str,
    ) -> PyResult<String> {
        run(py, || {
            self.inner.apply_chat_template_json(messages_json, add_generation_prompt, Some(kwargs_json))
        })
    }

    /// Replaces the chat template (ValueError if it does not compile).
    fn set_chat_template(&mut self, py: Python<'_>, source: &str) -> PyResult<()> {
        run(py, || self.inner.set_chat_template(source))
    }

    fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder { inner: self.inner.stream_decoder(skip_special_tokens) }
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_id()
    }

    #[getter]
    fn eos_token_id(&self) -> Option<u32> {
        self.inner.eos_id()
    }

    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_ids().to_vec()
    }

    #[getter]
    fn pad_token_id(&self) -> Option<u32> {
        self.inner.pad_id()
    }

    /// `[(name, token), ...]`: `("bos_token", "<s>")`, ...
    #[getter]
    fn special_tokens(&self) -> Vec<(String, String)> {
        self.inner.special_tokens().to_vec()
    }

    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.inner.chat_template().map(|t| t.source().to_string())
    }
}

#[pyclass(module = "ferrolm._core")]
pub struct StreamDecoder {
    inner: CoreStreamDecoder,
}

#[pymethods]
impl StreamDecoder {
    /// Adds a token; returns the text it completes (possibly "").
    fn push(&mut self, py: Python<'_>, token_id: i64) -> PyResult<String> {
        run(py, || self.inner.push(crate::tokens::token_id(token_id)?))
    }

    /// Returns what is still held back and starts over.
    fn flush(&mut self, py: Python<'_>) -> PyResult<String> {
        run(py, || self.inner.flush())
    }

    #[getter]
    fn skip_special_tokens(&self) -> bool {
        self.inner.skip_special_tokens()
    }
}
