"""MILI's ``Qwen3Config``: its defaults over the core's typed config."""

import dataclasses
import json

import pytest

from conftest import MODELS
from ferrolm import ModelArgs, Transformer, _core
from ferrolm.mili import Qwen3Config


def test_the_mili_example_runs_as_written():
    config = Qwen3Config(hidden_size=4096, num_hidden_layers=32)
    config_dict = config.to_dict()
    assert config_dict["hidden_size"] == 4096 and config_dict["num_hidden_layers"] == 32
    assert config.head_dim == 4096 // 32, "head_dim is hidden_size // num_attention_heads"
    # Hub ids cannot be fetched here: the error says so.
    with pytest.raises(FileNotFoundError, match="Hub ids cannot be downloaded"):
        Qwen3Config.from_pretrained("Qwen/Qwen3-7B")


def test_defaults_are_mili_defaults():
    c = Qwen3Config()
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads) == (4096, 11008, 32, 32)
    assert (c.num_key_value_heads, c.vocab_size, c.max_position_embeddings) == (8, 150000, 32768)
    assert (c.hidden_act, c.rms_norm_eps, c.attention_dropout, c.rope_theta, c.rope_scaling) == \
        ("silu", 1e-6, 0.0, 10000.0, None)
    assert c.architecture == "Qwen3ForCausalLM" and c.max_seq_len == 32768 and c.head_dim == 128


def test_it_is_the_cores_config():
    c = Qwen3Config(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                    vocab_size=1000, intermediate_size=512)
    assert isinstance(c, ModelArgs)
    core = _core.canonical_config(c.to_dict())
    for key, value in core.items():
        ours = getattr(c, key)
        assert (ours if ours is not None or key != "eos_token_id" else []) == value, key
    assert dataclasses.replace(c, head_dim=32).head_dim == 32, "head_dim given explicitly wins"


def test_round_trips_through_dicts():
    c = Qwen3Config(hidden_size=512, num_attention_heads=8, num_hidden_layers=3, attention_dropout=0.1,
                    quantization_config={"quant_method": "fp8"})
    assert Qwen3Config.from_dict(c.to_dict()) == c
    assert c.quantize == "fp8"


def test_from_dict_keeps_mili_defaults_and_reads_hf_dicts():
    c = Qwen3Config.from_dict({"hidden_size": 1024, "num_attention_heads": 16, "unused_key": 3})
    assert (c.hidden_size, c.vocab_size, c.num_key_value_heads, c.head_dim) == (1024, 150000, 8, 64)
    hf = json.loads((MODELS / "qwen3_f32" / "config.json").read_text())
    c = Qwen3Config.from_dict(hf)
    assert (c.architecture, c.hidden_size, c.head_dim, c.rope_theta, c.vocab_size) == \
        ("Qwen3ForCausalLM", 64, 32, 1e6, 256)


def test_from_pretrained_reads_directories_and_gguf():
    c = Qwen3Config.from_pretrained(MODELS / "qwen3_f32")
    assert (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads, c.head_dim) == (64, 2, 2, 32)
    assert c == Qwen3Config.from_dict(json.loads((MODELS / "qwen3_f32" / "config.json").read_text()))
    gguf = MODELS.parent / "gguf" / "qwen3_f16.gguf"
    from_gguf = Qwen3Config.from_pretrained(gguf)
    loaded = Transformer.from_pretrained(gguf).params
    assert from_gguf.architecture == "Qwen3ForCausalLM"
    for field in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size", "rope_theta"):
        assert getattr(from_gguf, field) == getattr(loaded, field), field
    with pytest.raises(FileNotFoundError):
        Qwen3Config.from_pretrained(MODELS / "missing")


@pytest.mark.parametrize("kwargs, field", [
    ({"hidden_size": 100, "num_attention_heads": 3}, "hidden_size"),
    ({"num_attention_heads": 32, "num_key_value_heads": 5}, "num_key_value_heads"),
    ({"hidden_act": "gelu"}, "gelu"),
    ({"attention_dropout": 1.5}, "attention_dropout"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"rope_scaling": {"rope_type": "linear"}}, "factor"),
])
def test_bad_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Qwen3Config(**kwargs)
