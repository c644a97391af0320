"""The serving engine on the GPU: batched greedy equals one request at a time,
and every KV page is free once the requests are done."""

import shutil

import numpy as np
import pytest
from gpu_support import DEVICE, greedy, require_cuda, write_tokenizer

from conftest import MODELS
from ferrolm import LLM, Transformer

require_cuda()

pytestmark = pytest.mark.gpu

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The qwen3_f32 fixture (GQA, q/k norm) with a word-level tokenizer added."""
    d = tmp_path_factory.mktemp("qwen3_f32") / "model"
    shutil.copytree(MODELS / "qwen3_f32", d)
    write_tokenizer(d, 256)
    return d


def mixed_prompts(n: int = 32, seed: int = 0) -> list[list[int]]:
    """Token prompts from 1 to ~300 tokens: decode-only, short and chunked prefills in one batch."""
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 7, 16, 17, 33, 64, 200, 300, *rng.integers(1, 300, n).tolist()]
    return [rng.integers(3, 256, int(k)).tolist() for k in lengths[:n]]


def forward_greedy(model: Transformer, prompt: list[int], n: int, eos: set[int]) -> list[int]:
    """Greedy continuation from plain ``Transformer.forward`` logits (no engine)."""
    logits = model.forward([prompt], start_pos=0)[0, -1]
    out: list[int] = []
    while len(out) < n:
        out.append(int(np.argmax(logits)))
        if out[-1] in eos:
            return out[:-1]  # the engine reports the stop by its reason, not a token
        logits = model.forward([[out[-1]]], start_pos=len(prompt) + len(out) - 1)[0, -1]
    return out


@pytest.mark.parametrize("dtype, min_equal", [("float32", 1.0), ("bfloat16", 0.9)])
def test_batched_greedy_equals_single_requests(model_dir, dtype, min_equal):
    """32 mixed-length prompts at once against the same prompts one by one.

    float32 must agree exactly. In bfloat16 a batch may round differently
    from a single row (other GEMM shapes), which can flip a near-tie, so a
    few divergent requests are tolerated there; a batching bug (wrong rows,
    wrong pages) changes nearly all of them.
    """
    prompts = mixed_prompts()
    config = greedy(NEW_TOKENS)
    with LLM(model_dir, device=DEVICE, dtype=dtype, max_seq_len=512, max_num_seqs=32,
             max_batch_tokens=512, prefix_caching=False) as llm:
        batched = llm.generate(prompts, config, use_tqdm=False)
        assert llm.stats()["used_pages"] == 0
        single = [llm.generate([p], config, use_tqdm=False)[0] for p in prompts]
        assert llm.stats()["used_pages"] == 0
    for b, s in zip(batched, single):
        assert b.finish_reason in ("length", "stop")
        assert b.prompt_token_ids == s.prompt_token_ids
    equal = [b.token_ids == s.token_ids for b, s in zip(batched, single)]
    differ = [i for i, e in enumerate(equal) if not e]
    assert sum(equal) >= min_equal * len(prompts), f"{dtype}: requests {differ} differ between batched and single"


def test_engine_greedy_equals_forward_greedy(model_dir):
    """The engine's single-request greedy on the GPU equals argmax over the
    GPU model's own forward logits (float32)."""
    prompts = mixed_prompts(6, seed=1)
    model = Transformer.from_pretrained(model_dir, device=DEVICE, dtype="float32", max_seq_len=512)
    eos = set(model.params.eos_token_id if isinstance(model.params.eos_token_id, list)
              else [model.params.eos_token_id])
    expected = [forward_greedy(model, p, NEW_TOKENS, eos) for p in prompts]
    del model
    with LLM(model_dir, device=DEVICE, dtype="float32", max_seq_len=512) as llm:
        outs = llm.generate(prompts, greedy(NEW_TOKENS), use_tqdm=False)
        assert [o.token_ids for o in outs] == expected
        assert llm.stats()["used_pages"] == 0


def test_prefix_cache_hits_give_the_same_tokens(model_dir):
    """Prompts that share a long prefix reuse its pages on the GPU and still
    continue exactly as without the cache (float32)."""
    rng = np.random.default_rng(2)
    shared = rng.integers(3, 256, 100).tolist()
    prompts = [shared + rng.integers(3, 256, int(k)).tolist() for k in (1, 5, 20, 40)]
    outs = {}
    for caching in (False, True):
        with LLM(model_dir, device=DEVICE, dtype="float32", max_seq_len=512, prefix_caching=caching) as llm:
            llm.generate([shared], greedy(1), use_tqdm=False)  # fills the cache when caching
            outs[caching] = [o.token_ids for o in llm.generate(prompts, greedy(NEW_TOKENS), use_tqdm=False)]
            if caching:
                assert llm.stats()["prefix_hits"] > 0
            assert llm.stats()["used_pages"] == 0
    assert outs[True] == outs[False]


@pytest.mark.parametrize("dtype, kv_dtype, pages", [
    ("bfloat16", None, 10),  # the pool in the weights' precision: 2 bytes a value
    ("float16", None, 10),
    ("bfloat16", "f32", 5),
    ("float32", None, 5),
])
def test_kv_cache_bytes_buys_pages_in_the_pools_precision(model_dir, dtype, kv_dtype, pages):
    # qwen3_f32: 2 layers x (K, V) x 16 positions x 2 KV heads x head_dim 32 = 4,096 values a page.
    budget = 10 * 4096 * 2
    with LLM(model_dir, device=DEVICE, dtype=dtype, kv_dtype=kv_dtype, max_seq_len=256,
             kv_cache_bytes=budget) as llm:
        assert llm.stats()["total_pages"] == pages
