"""Perplexity (``ferrolm.perplexity``, ``ferrolm perplexity``) and ``ferrolm bench``.

The SmolLM2 checks (the accuracy bound of the quantized CPU path: the default
CPU path within 1% of the dequantized float32 path on the committed sample text) run when
``FERROLM_SMOLLM2_GGUF`` names the GGUF, as ``scripts/test`` sets it; they
score the first 1,024 tokens of the text to stay quick on two cores.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, Reference
from ferrolm import PerplexityResult, Tokenizer, Transformer, perplexity

SAMPLE = Path(__file__).parent / "fixtures" / "text" / "sample.txt"
SMOLLM2 = os.environ.get("FERROLM_SMOLLM2_GGUF")
needs_smollm2 = pytest.mark.skipif(not SMOLLM2 or not Path(SMOLLM2).is_file(),
                                   reason="set FERROLM_SMOLLM2_GGUF to the SmolLM2 GGUF")
MAX_TOKENS = 1024


def ferrolm(*args):
    """The ``ferrolm`` command as a user runs it (no terminal)."""
    return subprocess.run([sys.executable, "-m", "ferrolm.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def by_hand(logits: np.ndarray, tokens: list[int]) -> float:
    """exp(mean NLL) of tokens[1:] under logits[:-1] (one window), in float64."""
    x = logits[:-1].astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    log_p = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return float(np.exp(-log_p[np.arange(len(tokens) - 1), tokens[1:]].mean()))


# -- a committed fixture model: the definition, HF's logits, bad input ---------------


def test_equals_the_definition_on_hf_logits():
    """One window over a fixture sequence: ours equals the perplexity of HF's logits."""
    tokens, hf_logits = max(Reference("llama_f32").sequences(), key=lambda s: len(s[0]))
    r = perplexity(MODELS / "llama_f32", tokens=tokens, context=len(tokens))
    assert isinstance(r, PerplexityResult)
    assert (r.windows, r.tokens) == (1, len(tokens) - 1)
    assert r.perplexity == pytest.approx(by_hand(hf_logits, tokens), rel=1e-4)
    assert r.mean_nll == pytest.approx(math.log(r.perplexity))
    assert r.seconds > 0


def test_windows_start_afresh_and_a_loaded_model_works():
    model = Transformer.from_pretrained(MODELS / "llama_f32")
    tokens = [(i * 37 + 5) % 256 for i in range(100)]
    windows = [tokens[:40], tokens[40:80], tokens[80:]]
    nll = [math.log(by_hand(model.forward([w])[0], w)) * (len(w) - 1) for w in windows]
    r = perplexity(model, tokens=tokens, context=40)
    assert (r.windows, r.tokens) == (3, 97)
    assert r.perplexity == pytest.approx(math.exp(sum(nll) / 97), rel=1e-5)
    assert perplexity(model, tokens=tokens, context=40, max_tokens=41).tokens == 39  # 40 + a lone token


def test_text_goes_through_the_models_tokenizer(chat_model):
    text = SAMPLE.read_text()[:2000]
    tok = Tokenizer.from_pretrained(chat_model)
    r = perplexity(chat_model, text, context=64, max_tokens=200)
    assert r.perplexity == perplexity(chat_model, tokens=tok.encode(text)[:200], context=64).perplexity
    assert r.perplexity == perplexity(chat_model, file=SAMPLE, context=64, max_tokens=200).perplexity
    loaded = Transformer.from_pretrained(chat_model)
    assert r.perplexity == perplexity(loaded, text, tokenizer=tok, context=64, max_tokens=200).perplexity


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(text=""), ValueError, "empty"),
    (dict(text=" \n"), ValueError, "empty"),
    (dict(text="hi", file=SAMPLE), ValueError, "exactly one"),
    (dict(), ValueError, "exactly one"),
    (dict(file="/no/such/file.txt"), FileNotFoundError, "/no/such/file.txt"),
    (dict(text="Hello there", context=1), ValueError, "context"),
    (dict(text="Hello there, how are you today?", context=4096), ValueError, "max_seq_len"),
    (dict(tokens=[5]), ValueError, "at least 2 tokens"),
    (dict(tokens=[5, 49152]), ValueError, "outside the vocabulary"),
    (dict(tokens=[5, -1]), ValueError, "outside the vocabulary"),
    (dict(text="Hello there", device="cpu", dtype="int3"), ValueError, "int3"),
])
def test_bad_input_says_what_is_wrong(chat_model, kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        perplexity(chat_model, **kwargs)


def test_a_loaded_model_needs_a_tokenizer_for_text():
    model = Transformer.from_pretrained(MODELS / "llama_f32")
    with pytest.raises(ValueError, match="tokenizer="):
        perplexity(model, "some text")
    with pytest.raises(ValueError, match="already loaded"):
        perplexity(model, tokens=[1, 2, 3], dtype="float32")
    with pytest.raises(FileNotFoundError, match="tokens="):  # a directory without tokenizer files
        perplexity(MODELS / "llama_f32", "some text")


def test_cli_perplexity_and_bench_on_a_tiny_model(chat_model):
    out = ferrolm("perplexity", chat_model, SAMPLE, "--context", "64", "--max-tokens", "200")
    assert out.returncode == 0, out.stderr
    expected = perplexity(chat_model, file=SAMPLE, context=64, max_tokens=200)
    assert f"perplexity:    {expected.perplexity:.4f}\n" in out.stdout
    assert f"tokens scored: {expected.tokens}\n" in out.stdout and "tokens/s:" in out.stdout
    assert out.stderr == ""  # no progress bar without a terminal

    out = ferrolm("bench", chat_model, "--prompt-tokens", "8", "--gen-tokens", "4", "--runs", "2")
    assert out.returncode == 0, out.stderr
    assert re.search(r"prefill: +[\d.]+ tokens/s \(8-token prompt, median of 2\)", out.stdout), out.stdout
    assert re.search(r"decode: +[\d.]+ tokens/s \(4 tokens, median of 2\)", out.stdout), out.stdout
    assert re.search(r"peak RSS: +\d+ MiB", out.stdout), out.stdout


@pytest.mark.parametrize("args, words", [
    (["perplexity", "{model}", "/no/such/file.txt"], "text file not found"),
    (["perplexity", "{model}", "{empty}"], "empty"),
    (["perplexity", "{model}", str(SAMPLE), "--context", "1"], "context"),
    (["perplexity", "/no/such/model", str(SAMPLE)], "not found"),
    (["bench", "{model}", "--runs", "0"], "runs"),
    (["bench", "{model}", "--gen-tokens", "0"], "gen_tokens"),
])
def test_cli_bad_input_exits_2_with_one_line(chat_model, tmp_path, args, words):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    out = ferrolm(*(a.format(model=chat_model, empty=empty) for a in args))
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stderr.startswith("ferrolm: error:") and words in out.stderr and "Traceback" not in out.stderr


def test_help_describes_the_commands():
    assert "perplexity" in ferrolm("--help").stdout and "bench" in ferrolm("--help").stdout
    text = ferrolm("perplexity", "--help").stdout
    assert "--context" in text and "--max-tokens" in text and "windows" in text
    text = ferrolm("bench", "--help").stdout
    assert "--prompt-tokens" in text and "--gen-tokens" in text and "peak" in text


# -- the real default model ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_path():
    return perplexity(SMOLLM2, file=SAMPLE, context=512, max_tokens=MAX_TOKENS)


@needs_smollm2
def test_smollm2_perplexity_is_plausible_and_float32_agrees(default_path):
    f32 = perplexity(SMOLLM2, file=SAMPLE, context=512, max_tokens=MAX_TOKENS, dtype="float32")
    print(f"SmolLM2 perplexity on {default_path.tokens} tokens of sample.txt (context 512): "
          f"default {default_path.perplexity:.4f}, float32 {f32.perplexity:.4f}, "
          f"{default_path.tokens_per_second:.0f} / {f32.tokens_per_second:.0f} tokens/s")
    assert (default_path.windows, default_path.tokens) == (2, MAX_TOKENS - 2)
    assert 3 < default_path.perplexity < 60
    assert abs(default_path.perplexity - f32.perplexity) / f32.perplexity < 0.01


@needs_smollm2
def test_smollm2_cli_prints_the_functions_number(default_path):
    out = ferrolm("perplexity", SMOLLM2, SAMPLE, "--max-tokens", MAX_TOKENS)
    assert out.returncode == 0, out.stderr
    printed = float(re.search(r"perplexity: +([\d.]+)", out.stdout).group(1))
    assert printed == pytest.approx(default_path.perplexity, abs=1e-4)
    assert f"tokens scored: {default_path.tokens}\n" in out.stdout
    assert "windows:       2 (context 512)" in out.stdout


@needs_smollm2
def test_smollm2_bench():
    out = ferrolm("bench", SMOLLM2, "--prompt-tokens", "16", "--gen-tokens", "8", "--runs", "1")
    assert out.returncode == 0, out.stderr
    figures = dict(re.findall(r"^(prefill|decode|peak RSS): +([\d.]+)", out.stdout, re.M))
    assert set(figures) == {"prefill", "decode", "peak RSS"}, out.stdout
    assert float(figures["prefill"]) > 0 and float(figures["decode"]) > 0
    assert 50 < float(figures["peak RSS"]) < 4096  # MiB
