"""MILI's ``QwenTokenizer`` / ``get_tokenizer`` over the core's tokenizer,
checked against HF's encodings (tests/fixtures/tokenizers/smollm2)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ferrolm.mili import QwenTokenizer, get_tokenizer

DIR = Path(__file__).parent / "fixtures" / "tokenizers" / "smollm2"
EXPECTED = json.loads((DIR / "expected.json").read_text())


@pytest.fixture(scope="module")
def tokenizer() -> QwenTokenizer:
    return QwenTokenizer(DIR)


def test_encode_and_decode_match_hf(tokenizer):
    for case in EXPECTED["cases"]:
        assert tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert tokenizer.encode(case["text"], add_special_tokens=False) == case["ids_no_special"]
        assert tokenizer.decode(case["ids"]) == case["decode"]
        assert tokenizer.decode(np.array(case["ids"])) == case["decode"], "numpy ids too"
        assert tokenizer.decode(case["ids"], skip_special_tokens=False) == case["decode_keep_special"]
    texts = [c["text"] for c in EXPECTED["cases"]]
    assert tokenizer.encode(texts) == [c["ids"] for c in EXPECTED["cases"]], "a list encodes each text"


def test_batch_encode_pads_to_max_length_as_the_seed(tokenizer):
    hello, world = (tokenizer.encode(t) for t in ("Hello", "World"))
    batch = tokenizer.batch_encode(["Hello", "World"], max_length=8)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    assert batch["input_ids"] == [hello + [pad] * (8 - len(hello)), world + [pad] * (8 - len(world))]
    assert batch["attention_mask"] == [[1] * len(hello) + [0] * (8 - len(hello)),
                                       [1] * len(world) + [0] * (8 - len(world))]
    arrays = tokenizer.batch_encode(["Hello", "World"], max_length=512, return_tensors=True)
    assert arrays["input_ids"].shape == arrays["attention_mask"].shape == (2, 512)
    assert arrays["input_ids"].dtype == np.int64
    long = "The quick brown fox jumps over the lazy dog."
    assert tokenizer.batch_encode([long], max_length=4)["input_ids"] == [tokenizer.encode(long)[:4]]
    assert tokenizer.batch_encode(["Hello", "World"], padding="longest")["input_ids"] == [hello, world]


def test_get_tokenizer_is_one_instance_per_model():
    a = get_tokenizer(DIR)
    assert get_tokenizer(DIR) is a and get_tokenizer(str(DIR) + "/") is a
    assert isinstance(a, QwenTokenizer)


def test_bad_input(tokenizer):
    with pytest.raises(FileNotFoundError, match="Hub ids cannot be downloaded"):
        QwenTokenizer("Qwen/Qwen3-0.6B")
    with pytest.raises(ValueError):
        tokenizer.decode([-1])
    with pytest.raises(ValueError, match="padding"):
        tokenizer.batch_encode(["a"], padding="sideways")


@pytest.mark.skipif(not os.environ.get("FERROLM_SMOLLM2_GGUF"), reason="set FERROLM_SMOLLM2_GGUF")
def test_the_mili_example_runs_as_written():
    tokenizer = QwenTokenizer()  # the default model's tokenizer
    tokens = tokenizer.encode("Hello, world!")
    text = tokenizer.decode(tokens)
    assert text == "Hello, world!" and tokens == EXPECTED["cases"][0]["ids"]
    batch = tokenizer.batch_encode(["Hello", "World"], max_length=512, return_tensors=True)
    assert batch["input_ids"].shape == (2, 512)
    tokenizer = get_tokenizer()
    assert tokenizer is get_tokenizer()
