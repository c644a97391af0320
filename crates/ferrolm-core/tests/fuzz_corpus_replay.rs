//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! fuzz targets' bodies (`ferrolm_core::fuzzing`), on stable Rust, in
//! seconds: every input the fuzzer kept, the crashes it found among them,
//! must still come back without a panic. `fuzz/README.md` says how to fuzz.

use std::path::PathBuf;

use ferrolm_core::fuzzing;

/// Runs every file of `fuzz/corpus/<target>/` through `body`, naming the
/// file if it panics. An empty or missing corpus fails: a renamed directory
/// must not turn the replay into a test of nothing.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus files", dir.display());
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| body(&bytes)).is_err() {
            panic!("fuzz target `{target}` panics on {}", path.display());
        }
    }
}

#[test]
fn gguf() {
    replay("gguf", fuzzing::gguf);
}

#[test]
fn safetensors() {
    replay("safetensors", fuzzing::safetensors);
}

#[test]
fn config_json() {
    replay("config_json", fuzzing::config_json);
}

#[test]
fn tokenizer_json() {
    replay("tokenizer_json", fuzzing::tokenizer_json);
}

#[test]
fn gguf_vocab() {
    replay("gguf_vocab", fuzzing::gguf_vocab);
}

#[test]
fn chat_template() {
    replay("chat_template", fuzzing::chat_template);
}
