"""ModelArgs: the Llama API's defaults, config.json parsing, round trips, validation."""

import json

import pytest

from conftest import MODELS
from ferrolm import ModelArgs, create_transformer_from_config


def test_llama_api_defaults():
    a = ModelArgs()
    assert (a.hidden_size, a.vocab_size, a.num_hidden_layers, a.num_attention_heads) == (
        4096, 32000, 32, 32,
    )
    assert a.num_key_value_heads is None and a.max_seq_len == 2048 and a.rms_norm_eps == 1e-6


def test_from_config_file_reads_each_family():
    q3 = ModelArgs.from_config_file(MODELS / "qwen3_f32" / "config.json")
    assert q3.architecture == "Qwen3ForCausalLM"
    assert (q3.head_dim, q3.num_key_value_heads, q3.rope_theta) == (32, 2, 1e6)
    assert q3.max_seq_len == q3.max_position_embeddings == 512

    llama3 = ModelArgs.from_config_file(MODELS / "llama3_rope_bf16" / "config.json")
    assert llama3.rope_scaling["rope_type"] == "llama3"
    assert llama3.rope_scaling["original_max_position_embeddings"] == 64
    assert llama3.eos_token_id == [2, 3] and llama3.tie_word_embeddings
    assert llama3.dtype == "bfloat16"

    legacy = ModelArgs.from_config_file(MODELS / "llama_legacy_config_f32" / "config.json")
    assert legacy.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert legacy.head_dim == 16  # derived: hidden 64 / 4 heads

    mistral = ModelArgs.from_config_file(MODELS / "mistral_f32" / "config.json")
    assert mistral.sliding_window == 16


def test_dict_round_trip():
    a = ModelArgs.from_config_file(MODELS / "qwen2_bf16" / "config.json")
    assert ModelArgs.from_dict(a.to_dict()) == a
    assert json.loads(json.dumps(a.to_dict())) == a.to_dict()


def test_from_dict_accepts_hf_dicts():
    hf = json.loads((MODELS / "qwen3_f32" / "config.json").read_text())
    a = ModelArgs.from_dict(hf)
    assert a.architecture == "Qwen3ForCausalLM" and a.head_dim == 32


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", 0),
        ("hidden_size", -5),
        ("hidden_size", 64.5),
        ("num_attention_heads", 0),
        ("num_key_value_heads", 3),
        ("rms_norm_eps", 0.0),
        ("rope_theta", -1.0),
        ("vocab_size", "many"),
        ("max_seq_len", 0),
        ("max_batch_size", 0),
        ("eos_token_id", 40000),
        ("dtype", "float8"),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelArgs(**{field: value})


def test_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(ValueError) as e:
        ModelArgs(architecture="GPT2LMHeadModel")
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert name in str(e.value)


def test_unsupported_rope_scaling_is_refused():
    with pytest.raises(ValueError, match="yarn"):
        ModelArgs(rope_scaling={"rope_type": "yarn", "factor": 4.0})


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        ModelArgs.from_config_file("/nonexistent/nope.json")


def test_create_transformer_from_config_overrides_max_seq_len():
    model = create_transformer_from_config(MODELS / "llama_f32" / "config.json", max_seq_len=8)
    assert model.params.max_seq_len == 8
    assert model.forward([[1, 2, 3]]).shape == (1, 3, 256)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward([[1] * 9])
