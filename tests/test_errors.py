"""Bad input raises a clear Python exception; nothing crashes or hangs."""

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import MODELS
from ferrolm import ModelArgs, Transformer, _core

LLAMA = MODELS / "llama_f32"


@pytest.fixture(scope="module")
def model():
    return Transformer.from_pretrained(LLAMA, max_seq_len=64, max_batch_size=2)


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Transformer.from_pretrained("/tmp/no-such-model")


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        Transformer.from_pretrained(tmp_path)
    shutil.copy(LLAMA / "config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        Transformer.from_pretrained(tmp_path)


def test_corrupt_weights(tmp_path):
    shutil.copy(LLAMA / "config.json", tmp_path)
    data = (LLAMA / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="invalid weights"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="invalid weights"):
        Transformer.from_pretrained(tmp_path)


def test_unsupported_architecture_in_config(tmp_path):
    shutil.copy(LLAMA / "model.safetensors", tmp_path)
    text = (LLAMA / "config.json").read_text().replace("LlamaForCausalLM", "BertModel")
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="Qwen2ForCausalLM"):
        Transformer.from_pretrained(tmp_path)


def test_an_unusable_gpu_is_refused_clearly():
    import ferrolm

    if ferrolm.cuda_available():
        pytest.skip("this machine has a usable GPU")
    with pytest.raises(RuntimeError, match=r"cuda:0.* not available: .*(not found|GPU)"):
        Transformer.from_pretrained(LLAMA, device="cuda")
    with pytest.raises(RuntimeError, match="cuda:3"):
        Transformer.from_pretrained(LLAMA, device=3)
    assert "not available" in ferrolm.cuda_unavailable_reason()
    with pytest.raises(ValueError, match="float32"):
        Transformer.from_pretrained(LLAMA, dtype="bfloat16")
    with pytest.raises(ValueError, match="device"):
        Transformer.from_pretrained(LLAMA, device="tpu")


@pytest.mark.parametrize(
    ("tokens", "start_pos", "match"),
    [
        ([[1, 256]], 0, "vocabulary"),
        ([[1, -1]], 0, "vocabulary"),
        ([[1, 2, 3], [1, 2]], 0, "ragged"),
        ([[]], 0, "empty"),
        ([], 0, "empty"),
        ([[1] * 65], 0, "max_seq_len"),
        ([[1, 2]], 63, "start_pos"),
        ([[1, 2], [3, 4], [5, 6]], 0, "max_batch_size"),
        ([[1.5, 2]], 0, "integer"),
        ("hello", 0, "token"),
        (np.zeros((2, 2), dtype=np.float32), 0, "integer"),
    ],
)
def test_bad_forward_input(model, tokens, start_pos, match):
    with pytest.raises(ValueError, match=match):
        model.forward(tokens, start_pos=start_pos)


def test_context_overflow_after_cached_prefix(model):
    model.forward([[1] * 60])
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward([[1] * 5], start_pos=60)
    # The cache still holds the 60 positions: continuing within bounds works.
    assert model.forward([[1] * 4], start_pos=60).shape == (1, 4, 256)


def test_bad_generate_input(model):
    with pytest.raises(ValueError, match="temperature"):
        model.generate([[1, 2]], max_gen_len=4, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate([[1, 2]], max_gen_len=4, top_p=0)
    with pytest.raises(ValueError, match="max_gen_len"):
        model.generate([[1, 2]], max_gen_len=-3)
    with pytest.raises(ValueError, match="max_batch_size"):
        model.generate([[1], [2], [3]], max_gen_len=2)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate([[1] * 65], max_gen_len=2)


def _state():
    return load_file(str(LLAMA / "model.safetensors"))


def test_load_state_dict_names_the_bad_tensor():
    args = ModelArgs.from_config_file(LLAMA / "config.json")
    state = _state()
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        Transformer(args).load_state_dict(state)

    state = _state()
    state["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"q_proj\.weight.*\[3, 3\]"):
        Transformer(args).load_state_dict(state)

    state = _state()
    state["model.layers.0.self_attn.bogus.weight"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="bogus"):
        Transformer(args).load_state_dict(state, strict=False)


def test_failed_load_leaves_the_model_unchanged():
    model = Transformer.from_pretrained(LLAMA)
    before = model.forward([[5, 6, 7]])
    state = _state()
    state["model.norm.weight"] = np.zeros(64, np.float32)
    state["lm_head.weight"] = np.zeros((1, 1), np.float32)  # bad: the whole load must fail
    with pytest.raises(ValueError, match="lm_head"):
        model.load_state_dict(state)
    np.testing.assert_array_equal(model.forward([[5, 6, 7]]), before)


def test_partial_load_with_strict_false_replaces_only_given_tensors():
    model = Transformer.from_pretrained(LLAMA)
    before = model.forward([[5, 6, 7]])
    model.load_state_dict({"model.norm.weight": np.full(64, 2.0)}, strict=False)
    after = model.forward([[5, 6, 7]])
    assert not np.allclose(before, after)
    with pytest.raises(ValueError, match="missing tensor"):
        model.load_state_dict({"model.norm.weight": np.ones(64)}, strict=True)


def test_rust_panic_becomes_runtime_error():
    with pytest.raises(RuntimeError, match="internal error"):
        _core._panic_for_tests("boom")
    # The interpreter and the engine carry on.
    assert Transformer.from_pretrained(LLAMA).forward([[1]]).shape == (1, 1, 256)
