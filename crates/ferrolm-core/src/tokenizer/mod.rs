//! Tokenizers and chat templates (HF `tokenizers`, GGUF vocabularies, minijinja).
