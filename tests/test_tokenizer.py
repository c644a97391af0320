"""ferrolm.Tokenizer against HF on the committed corpus (tests/fixtures/tokenizers).

Expected ids and decodes come from HF's ``tokenizers``/``transformers``
(``tests/fixtures/make_tokenizer_fixtures.py``); nothing here imports them.
The real SmolLM2 GGUF (98 MB) is checked only when ``FERROLM_SMOLLM2_GGUF``
points to it.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ferrolm import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizers"
SMOLLM2 = FIXTURES / "smollm2"
GGUF = FIXTURES / "gguf"
GGUF_NAMES = ["bpe-gpt2", "bpe-smollm", "bpe-llama-bpe", "bpe-qwen2", "bpe-nopre", "llama-sp", "llama-sp-noprefix"]
CORPUS = json.loads((FIXTURES / "corpus.json").read_text(encoding="utf-8"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def check_expected(tok: Tokenizer, expected: dict) -> None:
    assert len(tok) == tok.vocab_size == expected["vocab_size"]
    for case in expected["cases"]:
        text = case["text"]
        assert tok.encode(text) == case["ids"], text
        assert tok.encode(text, add_special_tokens=False) == case["ids_no_special"], text
        assert tok.decode(case["ids"]) == case["decode"], text
        assert tok.decode(case["ids"], skip_special_tokens=False) == case["decode_keep_special"], text
    for case in expected["decodes"]:
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["decode"], case["ids"]
        assert tok.decode(case["ids"], skip_special_tokens=False) == case["decode_keep_special"], case["ids"]


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return Tokenizer.from_pretrained(SMOLLM2)


def test_tokenizer_json_matches_hf():
    check_expected(Tokenizer.from_file(SMOLLM2 / "tokenizer.json"), load(SMOLLM2 / "expected.json"))


@pytest.mark.parametrize("name", GGUF_NAMES)
def test_gguf_vocabulary_matches_hf(name):
    expected = load(GGUF / f"{name}.expected.json")
    check_expected(Tokenizer.from_gguf(GGUF / f"{name}.gguf"), expected)
    check_expected(Tokenizer.from_pretrained(GGUF / f"{name}.gguf"), expected)
    # HF's conversion of the same file, saved as tokenizer.json, agrees too.
    check_expected(Tokenizer.from_file(GGUF / f"{name}.tokenizer.json"), expected)


@pytest.mark.skipif(not os.environ.get("FERROLM_SMOLLM2_GGUF"), reason="set FERROLM_SMOLLM2_GGUF to the SmolLM2 GGUF")
def test_smollm2_gguf_matches_hf():
    tok = Tokenizer.from_gguf(os.environ["FERROLM_SMOLLM2_GGUF"])
    check_expected(tok, load(SMOLLM2 / "expected.json"))
    assert (tok.bos_token_id, tok.eos_token_id, tok.eos_token_ids, tok.pad_token_id) == (1, 2, [2, 0], 2)
    assert tok.chat_template == (SMOLLM2 / "chat_template.jinja").read_text(encoding="utf-8")
    hf = load(SMOLLM2 / "expected.json")["special_tokens"]  # {name: [token, id]} from HF
    assert tok.special_tokens_map == {name: token for name, (token, _) in hf.items()}


def test_special_tokens(smollm2):
    assert (smollm2.bos_token_id, smollm2.eos_token_id, smollm2.pad_token_id) == (1, 2, 2)
    assert smollm2.eos_token_ids == [2, 0]  # <|im_end|>, then <|endoftext|>
    assert (smollm2.bos_token, smollm2.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert smollm2.token_to_id("<|im_end|>") == 2 and smollm2.id_to_token(2) == "<|im_end|>"
    assert smollm2.token_to_id("not a token at all") is None and smollm2.id_to_token(10**9) is None
    assert "Tokenizer(vocab_size=49152" in repr(smollm2)
    plain = Tokenizer.from_file(SMOLLM2 / "tokenizer.json")
    assert (plain.bos_token_id, plain.eos_token_ids, plain.chat_template) == (None, [2, 0], None)

    sp = Tokenizer.from_gguf(GGUF / "llama-sp.gguf")
    assert (sp.bos_token_id, sp.eos_token_id, sp.pad_token_id) == (1, 2, 2)
    assert sp.encode("hi")[0] == 1 and sp.encode("hi", add_special_tokens=False)[0] != 1


def test_mili_tokenizer_signatures(smollm2):
    texts = ["Hello, world!", "日本語 🦀"]
    assert smollm2.encode(texts) == [smollm2.encode(t) for t in texts]
    ids = smollm2.encode(texts[1])
    assert smollm2.decode(np.array(ids)) == texts[1]
    assert smollm2.decode(np.array(ids, dtype=np.int32), skip_special_tokens=False) == texts[1]
    assert smollm2.batch_decode([ids, ids]) == [texts[1]] * 2
    assert smollm2.batch_decode(np.array([ids, ids])) == [texts[1]] * 2
    # MILI's positional order (QwenTokenizer.batch_encode): texts, max_length, padding, return_tensors.
    batch = smollm2.batch_encode(texts, 3, True, True)
    assert batch["input_ids"].shape == (2, 3) and batch["input_ids"].dtype == np.int64


def test_batch_encode_padding(smollm2):
    texts = ["Hello, world! How are you?", "Hi"]
    ids = [smollm2.encode(t) for t in texts]
    n = max(map(len, ids))
    batch = smollm2.batch_encode(texts)
    assert batch["input_ids"] == [ids[0], ids[1] + [2] * (n - len(ids[1]))]
    assert batch["attention_mask"] == [[1] * n, [1] * len(ids[1]) + [0] * (n - len(ids[1]))]

    arrays = smollm2.batch_encode(texts, return_tensors="np")
    assert arrays["input_ids"].dtype == np.int64 and arrays["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(arrays["input_ids"], np.array(batch["input_ids"]))
    np.testing.assert_array_equal(arrays["attention_mask"], np.array(batch["attention_mask"]))

    left = smollm2.batch_encode(texts, padding_side="left")
    assert left["input_ids"][1] == [2] * (n - len(ids[1])) + ids[1]
    assert left["attention_mask"][1][0] == 0

    ragged = smollm2.batch_encode(texts, padding=False)
    assert ragged["input_ids"] == ids and ragged["attention_mask"] == [[1] * len(i) for i in ids]
    with pytest.raises(ValueError, match="different lengths"):
        smollm2.batch_encode(texts, padding=False, return_tensors="np")

    fixed = smollm2.batch_encode(texts, max_length=12, padding="max_length", return_tensors="np")
    assert fixed["input_ids"].shape == (2, 12)
    cut = smollm2.batch_encode(texts, max_length=3)
    assert cut["input_ids"] == [ids[0][:3], ids[1] + [2] * (3 - len(ids[1]))]
    assert smollm2.batch_encode(texts, max_length=3, truncation=False)["input_ids"][0] == ids[0]
    assert smollm2(texts[1])["input_ids"] == [ids[1]]
    assert smollm2.batch_encode([], return_tensors="np")["input_ids"].shape == (0, 0)


def test_batch_encode_truncation_keeps_bos():
    sp = Tokenizer.from_gguf(GGUF / "llama-sp.gguf")
    text = "Hello world, hello there! The quick brown fox."
    full = sp.encode(text)
    assert full[0] == 1 and len(full) > 5
    assert sp.batch_encode([text], max_length=5)["input_ids"] == [full[:5]]
    assert sp.batch_encode([text], max_length=5, add_special_tokens=False)["input_ids"] == [
        sp.encode(text, add_special_tokens=False)[:5]
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"padding": "maximum"}, "padding"),
        ({"padding": "max_length"}, "max_length"),
        ({"truncation": True}, "max_length"),
        ({"max_length": 0}, "at least 1"),
        ({"max_length": 2.5}, "max_length"),
        ({"return_tensors": "pt"}, "np"),
        ({"padding_side": "middle"}, "padding_side"),
        ({"truncation": "sideways", "max_length": 2}, "truncation"),
    ],
)
def test_batch_encode_rejects_bad_arguments(smollm2, kwargs, match):
    with pytest.raises(ValueError, match=match):
        smollm2.batch_encode(["a", "bb"], **kwargs)


def test_bad_input_raises_value_error(smollm2, tmp_path):
    with pytest.raises(ValueError, match="49152"):
        smollm2.decode([1, 49152])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        smollm2.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        smollm2.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        smollm2.decode(np.array([1.5]))
    with pytest.raises(ValueError, match="string"):
        smollm2.decode("abc")
    with pytest.raises(ValueError, match="integer"):
        smollm2.decode([1, "x"])
    with pytest.raises(ValueError, match="strings"):
        smollm2.encode(["a", 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        smollm2.stream_decoder().push(10**6)
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(ValueError, match="tokenizer"):
        Tokenizer.from_file(bad)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"GGUF but not really")
    with pytest.raises(ValueError):
        Tokenizer.from_gguf(not_gguf)
    with pytest.raises(TypeError):
        Tokenizer("tokenizer.json")


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_gguf(tmp_path / "model.gguf")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_pretrained(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_pretrained(tmp_path)  # a directory without tokenizer.json or .gguf


def stream(tok: Tokenizer, ids: list[int], skip: bool) -> list[str]:
    decoder = tok.stream_decoder(skip_special_tokens=skip)
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    return pieces


@pytest.mark.parametrize("source", ["smollm2", "llama-sp", "bpe-llama-bpe"])
def test_stream_decoder_matches_decode(source):
    tok = Tokenizer.from_file(SMOLLM2 / "tokenizer.json") if source == "smollm2" else Tokenizer.from_gguf(
        GGUF / f"{source}.gguf"
    )
    split = 0
    for text in CORPUS:
        ids = tok.encode(text)
        split += any("\ufffd" in tok.decode([i], skip_special_tokens=False) for i in ids)
        for skip in (True, False):
            pieces = stream(tok, ids, skip)
            full = tok.decode(ids, skip_special_tokens=skip)
            assert "".join(pieces) == full, (text, pieces)
            if "\ufffd" not in full:
                assert not any("\ufffd" in p for p in pieces), (text, pieces)
    assert split > 0, "the corpus must split characters across tokens"


def test_stream_decoder_holds_partial_characters(smollm2):
    ids = smollm2.encode("🦀!", add_special_tokens=False)
    assert len(ids) > 2  # four UTF-8 bytes over several byte-level tokens, then "!"
    decoder = smollm2.stream_decoder()
    assert decoder.skip_special_tokens
    pieces = [decoder.push(i) for i in ids]
    assert pieces[: len(ids) - 2] == [""] * (len(ids) - 2)
    assert "".join(pieces) == "🦀!" and decoder.flush() == ""
    # An id sequence cut inside a character flushes as U+FFFD, as decode renders it.
    decoder.push(ids[0])
    assert decoder.flush() == smollm2.decode(ids[:1]) == "\ufffd"

    sp = Tokenizer.from_gguf(GGUF / "llama-sp.gguf")
    ids = sp.encode("a 日本", add_special_tokens=False)  # CJK via <0xNN> byte fallback
    pieces = stream(sp, ids, True)
    assert pieces == ["a", " 日", "本", ""] and "".join(pieces) == sp.decode(ids)
