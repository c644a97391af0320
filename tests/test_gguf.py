"""GGUF files through the public API: ``Transformer.from_pretrained("model.gguf")``.

The fixtures (tests/fixtures/gguf, made by tests/fixtures/make_gguf_fixtures.py)
are tiny models written as GGUF in several tensor types with HF transformers'
logits for them; crates/ferrolm-core/tests/gguf.rs checks the same in Rust,
plus every dequantizer against gguf-py.
"""

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import HF_TOLERANCE as TOLERANCE
from conftest import max_rel_error
from ferrolm import Transformer

GGUF = Path(__file__).parent / "fixtures" / "gguf"
MODELS = sorted(p.name[: -len(".reference.safetensors")] for p in GGUF.glob("*.reference.safetensors"))


@pytest.mark.parametrize("stem", MODELS)
def test_logits_match_hf(stem):
    model = Transformer.from_pretrained(GGUF / f"{stem}.gguf", dtype="float32")  # the exact path
    ref = load_file(str(GGUF / f"{stem}.reference.safetensors"))
    k = 0
    while f"tokens_{k}" in ref:
        tokens = ref[f"tokens_{k}"].tolist()
        logits = model.forward([tokens], start_pos=0)[0]
        err = max_rel_error(logits, ref[f"logits_{k}"])
        assert err < TOLERANCE, (stem, k, err)
        k += 1
    assert k >= 2


def test_config_comes_from_metadata():
    model = Transformer.from_pretrained(GGUF / "qwen2_q8_0.gguf", max_seq_len=32)
    p = model.params
    assert (p.vocab_size, p.hidden_size, p.num_hidden_layers, p.max_seq_len) == (256, 64, 2, 32)
    assert p.tie_word_embeddings
    model = Transformer.from_pretrained(str(GGUF / "llama3_rope_bf16.gguf"))
    assert model.params.rope_scaling["rope_type"] == "llama3"
    assert model.params.rope_scaling["original_max_position_embeddings"] == 64


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Transformer.from_pretrained(tmp_path / "absent.gguf")


@pytest.fixture(scope="module")
def original() -> bytes:
    return (GGUF / "llama_q4_0.gguf").read_bytes()


def test_truncated_files_raise_value_error(tmp_path, original):
    path = tmp_path / "truncated.gguf"
    rng = np.random.default_rng(0)
    lengths = list(range(0, 64)) + sorted(rng.choice(np.arange(64, len(original) - 64), size=120, replace=False))
    for n in lengths:
        path.write_bytes(original[: int(n)])
        with pytest.raises(ValueError, match="invalid weights"):
            Transformer.from_pretrained(path)


def test_corrupted_headers_raise_value_error(tmp_path, original):
    path = tmp_path / "corrupted.gguf"
    for pos in range(24):
        for mask in (0x80, 0xFF):
            data = bytearray(original)
            data[pos] ^= mask
            path.write_bytes(bytes(data))
            with pytest.raises(ValueError):
                Transformer.from_pretrained(path)
    # Anywhere in the metadata and tensor table: an error or a working model, never a crash.
    rng = np.random.default_rng(1)
    for pos in rng.choice(np.arange(24, 4096), size=200, replace=False):
        data = bytearray(original)
        data[int(pos)] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            Transformer.from_pretrained(path, max_seq_len=8)
        except ValueError:
            pass


def test_unsupported_tensor_type_is_named(tmp_path, original):
    data = bytearray(original)
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8  # n_dims, two dims, then the type
    assert int.from_bytes(data[at : at + 4], "little") == 2  # Q4_0
    data[at : at + 4] = (99).to_bytes(4, "little")
    path = tmp_path / "odd_type.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight.*unknown ggml type 99"):
        Transformer.from_pretrained(path)


@pytest.mark.parametrize("stem", ["llama_q8_0", "llama_q4_0", "llama_q4_1", "llama_q5_0", "llama_q5_1"])
def test_the_default_path_follows_the_exact_path_on_quantized_files(stem):
    """Every quantized GGUF fixture, the five-bit ones included (Q5_0 / Q5_1
    blocks are the bulk of llama.cpp's Q4_K_M / Q5_K_M files when rows are
    not whole super-blocks; these hold llama_f32's weights): the default
    path (interleaved integer kernels against 8-bit activations) picks the
    exact path's next token almost everywhere (the bar of
    tests/test_cpu_options.py; measured 92.6-96.7% on this tiny random model,
    whose 4- and 5-bit weights alone move even the exact path off HF's
    f32 tokens), and gives a prompt's logits bit for bit whether it runs in
    one pass or token by token."""
    ref = load_file(str(Path(__file__).parent / "fixtures" / "models" / "llama_f32" / "reference.safetensors"))
    default = Transformer.from_pretrained(GGUF / f"{stem}.gguf")
    exact = Transformer.from_pretrained(GGUF / f"{stem}.gguf", dtype="float32")
    same = total = k = 0
    while f"tokens_{k}" in ref:
        tokens = ref[f"tokens_{k}"].tolist()
        logits = default.forward([tokens])[0]
        one_by_one = np.concatenate([default.forward([[t]], start_pos=i)[0] for i, t in enumerate(tokens)])
        np.testing.assert_array_equal(logits, one_by_one)
        same += int(np.sum(logits.argmax(-1) == exact.forward([tokens])[0].argmax(-1)))
        total += len(tokens)
        k += 1
    assert k >= 2 and same / total >= 0.9, (stem, same, total)
