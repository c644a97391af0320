"""MILI's ``WeightLoader``: a checkpoint's tensors through the core's readers."""

import numpy as np
import pytest

from conftest import MODELS, load_state
from ferrolm.mili import Fp8Weight, Qwen3Config, WeightLoader


def loader_for(name: str, **kwargs) -> WeightLoader:
    return WeightLoader(MODELS / name, Qwen3Config.from_pretrained(MODELS / name), **kwargs)


def test_the_mili_example_runs_as_written():
    config = Qwen3Config.from_pretrained(MODELS / "qwen3_f32")
    loader = WeightLoader(MODELS / "qwen3_f32", config)
    with pytest.raises(FileNotFoundError, match="Hub ids cannot be downloaded"):
        loader.load_from_huggingface("Qwen/Qwen3-7B")
    weights = loader.load_from_huggingface(MODELS / "qwen3_f32")
    quantized = loader.quantize_to_fp8()
    assert set(quantized) == set(weights) == set(load_state(MODELS / "qwen3_f32"))
    assert isinstance(quantized["model.layers.0.mlp.up_proj.weight"], Fp8Weight)


@pytest.mark.parametrize("name", ["qwen3_f32", "qwen3_f16_sharded", "qwen2_bf16"])
def test_tensors_equal_the_checkpoint(name):
    loader = loader_for(name)
    weights = loader.load_from_safetensors()
    expected = load_state(MODELS / name)
    assert set(weights) == set(expected)
    for key, value in expected.items():
        got = loader.get_weight_as_numpy(key)
        assert got.shape == value.shape, key
        np.testing.assert_array_equal(got.astype(np.float32), value, err_msg=key)


def test_float32_and_float16_are_read_only_views_of_the_file():
    for name, dtype in (("qwen3_f32", np.float32), ("qwen3_f16_sharded", np.float16)):
        w = loader_for(name).load_from_safetensors()["model.layers.0.self_attn.q_proj.weight"]
        assert w.dtype == dtype and not w.flags.owndata and not w.flags.writeable
        assert type(w.base).__name__ == "MappedTensor", "the memory map is the array's base"
        with pytest.raises(ValueError, match="read-only"):
            w[0, 0] = 1.0
    # bfloat16 has no numpy dtype: converted to float32 by the core.
    w = loader_for("qwen2_bf16").load_from_safetensors()["model.layers.0.self_attn.q_proj.weight"]
    assert w.dtype == np.float32 and w.flags.writeable and type(w.base).__name__ != "MappedTensor"


def test_gguf_tensors_are_dequantized_by_the_core():
    path = MODELS.parent / "gguf" / "qwen3_f16.gguf"
    loader = WeightLoader(path, Qwen3Config.from_pretrained(path))
    with pytest.raises(FileNotFoundError, match="load_from_huggingface"):
        loader.load_from_safetensors()
    weights = loader.load_from_huggingface(path)
    # The GGUF holds the f32 fixture's matrices as f16 (vectors stay f32).
    expected = load_state(MODELS / "qwen3_f32")
    assert set(weights) == set(expected)
    for key, value in expected.items():
        stored = value.astype(np.float16).astype(np.float32) if value.ndim == 2 else value
        np.testing.assert_array_equal(weights[key], stored, err_msg=key)


def test_quantize_to_fp8_takes_the_layers_projections_and_bounds_the_error():
    loader = loader_for("qwen3_f32")
    original = {k: np.array(v) for k, v in loader.load_from_safetensors().items()}
    loader.quantize_to_fp8()
    assert loader.quantize == "fp8"
    for name, w in original.items():
        q = loader.get_weight(name)
        if not (name.startswith("model.layers.") and name.endswith("_proj.weight")):
            assert q is loader.weights[name] and isinstance(q, np.ndarray), name
            continue
        assert isinstance(q, Fp8Weight) and q.codes.dtype == np.uint8 and q.codes.shape == w.shape
        group = q.group_size
        assert q.scales.shape == (w.shape[0], -(-w.shape[1] // group))
        deq = loader.get_weight_as_numpy(name)
        # E4M3 keeps 3 mantissa bits: error <= 2^-4 of the value, or half the
        # smallest subnormal step (2^-10 x the group's scale) near zero.
        scale = np.repeat(q.scales, group, axis=1)[:, : w.shape[1]]
        bound = np.maximum(np.abs(w) * 2.0**-4, scale * 2.0**-10)
        assert (np.abs(deq - w) <= bound * (1 + 1e-6)).all(), name


def test_bad_input():
    config = Qwen3Config.from_pretrained(MODELS / "qwen3_f32")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        wrong = Qwen3Config.from_dict({**config.to_dict(), "num_hidden_layers": 3})
        WeightLoader(MODELS / "qwen3_f32", wrong).load_from_safetensors()
    with pytest.raises(ValueError, match="Qwen3Config"):
        WeightLoader(MODELS / "qwen3_f32", {"hidden_size": 64})
    with pytest.raises(ValueError, match="dtype"):
        WeightLoader(MODELS / "qwen3_f32", config, dtype="int4")
    loader = WeightLoader(MODELS / "qwen3_f32", config)
    with pytest.raises(KeyError, match="no weights loaded"):
        loader.get_weight("model.norm.weight")
    with pytest.raises(RuntimeError, match="no weights loaded"):
        loader.quantize_to_fp8()
    loader.load_from_safetensors()
    with pytest.raises(KeyError, match=r"model\.nope"):
        loader.get_weight("model.nope")
    with pytest.raises(FileNotFoundError):
        WeightLoader(MODELS / "missing", config).load_from_safetensors()
