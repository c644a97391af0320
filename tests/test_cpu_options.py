"""The CPU's load options: quantize at load, KV cache precision, the exact path."""

import numpy as np
import pytest

from conftest import MODELS, Reference
from ferrolm import Transformer

LLAMA = MODELS / "llama_f32"


def next_token_agreement(model: Transformer, reference: Reference) -> float:
    same = total = 0
    for tokens, expected in reference.sequences():
        got = model.forward([tokens])[0]
        same += int(np.sum(got.argmax(-1) == expected.argmax(-1)))
        total += len(tokens)
    return same / total


def test_bad_options_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="q8_0"):
        Transformer.from_pretrained(LLAMA, quantize="q3_k")
    with pytest.raises(ValueError, match="f16"):
        Transformer.from_pretrained(LLAMA, kv_dtype="int8")
    with pytest.raises(ValueError, match="exclude"):
        Transformer.from_pretrained(LLAMA, quantize="q8_0", dtype="float32")


@pytest.mark.parametrize("options", [{"quantize": "q8_0"}, {"quantize": "q4_k"}, {"kv_dtype": "f16"}])
def test_faster_options_keep_hf_next_tokens(options):
    # Both trade exactness for speed (8-bit weights and activations, or an f16
    # KV cache); the exact path is checked to 1e-4 in test_parity.py. Here
    # they must still pick HF's next token almost everywhere.
    reference = Reference("llama_f32")
    assert next_token_agreement(Transformer.from_pretrained(LLAMA, **options), reference) >= 0.9
