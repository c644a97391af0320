//! GGUF files: metadata, tensors (dequantized at read), config.
