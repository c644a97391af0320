"""Sizes from untrusted input (a config, an argument) that no machine could
hold are refused with MemoryError or ValueError saying what to lower; none
aborts the interpreter, and a huge limit costs nothing until it is used."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import MODELS
from ferrolm import ModelArgs, Transformer
from ferrolm.engine import AsyncEngine

LLAMA = MODELS / "llama_f32"
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=100)


def with_config(tmp_path, **fields):
    """A copy of the llama fixture whose config.json claims ``fields``."""
    for f in LLAMA.iterdir():
        shutil.copy(f, tmp_path)
    config = json.loads((LLAMA / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **fields}))
    return tmp_path


@pytest.mark.parametrize("context", [10**9, 2**32 - 1])
def test_a_huge_context_in_the_config_is_refused_with_what_to_lower(tmp_path, context):
    path = with_config(tmp_path, max_position_embeddings=context)
    fit = r"KV cache .* needs .* available; about \d+ positions fit: lower max_seq_len"
    with pytest.raises(MemoryError, match=fit):
        Transformer.from_pretrained(path)
    logits = Transformer.from_pretrained(path, max_seq_len=64).forward([[1, 2, 3]])
    assert logits.shape == (1, 3, 256)


def test_huge_arguments_are_refused():
    with pytest.raises(MemoryError, match="max_seq_len"):
        Transformer.from_pretrained(LLAMA, max_seq_len=10**9)
    with pytest.raises(MemoryError, match="max_batch_size"):
        Transformer.from_pretrained(LLAMA, max_batch_size=10**6)
    with pytest.raises(ValueError, match="max_seq_len is too large"):
        Transformer.from_pretrained(LLAMA, max_seq_len=10**20)
    with pytest.raises(MemoryError, match="num_pages"):
        AsyncEngine(LLAMA, num_pages=10**9)
    with pytest.raises(MemoryError, match="max_seq_len"):
        Transformer(ModelArgs(**TINY, max_seq_len=10**10)).forward([[1, 2, 3]])
    with pytest.raises(MemoryError, match="max_batch_size"):
        Transformer(ModelArgs(**TINY, max_batch_size=10**6)).forward([[1, 2, 3]])


def test_a_huge_layer_count_is_refused_before_layers_are_made(tmp_path):
    claimed = r"missing tensor .*: the config has num_hidden_layers = 1000000000 but the checkpoint holds only"
    with pytest.raises(ValueError, match=claimed):
        Transformer.from_pretrained(with_config(tmp_path, num_hidden_layers=10**9))
    with pytest.raises(MemoryError, match="lower num_hidden_layers"):
        Transformer(ModelArgs(**{**TINY, "num_hidden_layers": 10**9})).forward([[1]])


def test_a_huge_context_costs_nothing_until_used(tmp_path):
    """A cache with room for 10**8 positions (1.6 GB when full) and an engine
    for a model claiming 10**9 serve short inputs in the memory short inputs
    need: the page pool's bookkeeping and storage grow with the pages used.
    Measured as peak RSS in a process of its own."""
    path = with_config(tmp_path, max_position_embeddings=10**9)
    script = textwrap.dedent(f"""
        import resource
        from ferrolm import ModelArgs, SamplingConfig, Transformer
        from ferrolm.engine import AsyncEngine
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        args = ModelArgs(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=1, vocab_size=100, max_seq_len=10**8)
        assert Transformer(args).forward([[1, 2, 3]]).shape == (1, 3, 100)
        engine = AsyncEngine({str(path)!r})
        assert engine.max_seq_len == 10**9
        outputs = list(engine.stream([1, 2, 3], SamplingConfig(max_tokens=4, temperature=0.0)))
        assert outputs[-1].kind == "finished", outputs[-1]
        engine.close()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    grown_kib = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                   text=True, timeout=120).stdout.split()[-1])
    assert grown_kib < 100 * 1024, f"peak RSS grew by {grown_kib} KiB"
