"""Answers that do not depend on the load: on the CPU's default path a
request's tokens and log-probabilities are bitwise the same whether it runs
alone or among any number of others, however its prompt is chunked, whether
part of it comes from the prefix cache, and however many threads there are.

The cases cover the weight formats of the default path on a tiny random
Llama with SmolLM2's tokenizer: f16 as stored (the half kernels), Q8_0
and Q4_K (the interleaved integer kernels, 32- and 256-value blocks) quantized
at load; and the real SmolLM2 Q4_1 GGUF. Each case sends 16 requests (8
greedy, 8 seeded at temperature 0.8, with top-2 log-probabilities) alone,
then mixed into batches of 1 to 64 with other traffic of every length, with
small prefill chunks and with prompts that share cached prefixes, and with
one thread instead of two. (f32 weights, the exact path, multiply through
the `gemm` crate, whose sums depend on the matrix sizes: not covered.)
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferrolm import AsyncEngine, SamplingConfig
from ferrolm.engine import RequestOutput

CASES = ["f16", "q8_0", "q4_k"]
MAX_TOKENS = 12


def requests(vocab: int) -> tuple[list[list[int]], list[SamplingConfig]]:
    """The 16 requests: prompts of 3 to 90 tokens (past a page, past a
    64-position softmax chunk), half greedy, half seeded."""
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, vocab, int(n)).tolist() for n in rng.integers(3, 91, 16)]
    configs = [SamplingConfig(temperature=0.0 if i < 8 else 0.8, top_k=0, top_p=1.0 if i < 12 else 0.9, min_p=0.0,
                              repetition_penalty=1.0, seed=i, max_tokens=MAX_TOKENS, logprobs=2)
               for i in range(16)]
    return prompts, configs


def traffic(vocab: int, n: int, seed: int) -> tuple[list[list[int]], list[SamplingConfig]]:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, vocab, int(k)).tolist() for k in rng.integers(1, 200, n)]
    configs = [SamplingConfig(temperature=float(rng.choice([0.0, 1.0])), seed=int(rng.integers(1 << 30)),
                              max_tokens=int(rng.integers(1, 20))) for _ in range(n)]
    return prompts, configs


def run(engine: AsyncEngine, prompts, configs) -> list[tuple]:
    """Submits every request at once (each on random stream 0, as the server
    sends them: a seeded request alone and in a batch draws the same
    numbers) and returns each one's tokens, log-probabilities, top-2
    alternatives and finish reason."""
    inbox: queue.Queue = queue.Queue()
    results = [RequestOutput(request_id=-1, prompt_token_ids=p) for p in prompts]
    for i, (prompt, config) in enumerate(zip(prompts, configs)):
        engine.submit(prompt, config, lambda out, i=i: inbox.put((i, out)))
    pending = len(prompts)
    while pending:
        i, out = inbox.get(timeout=120)
        results[i].add(out)
        pending -= out.kind != "token"
    return [(r.token_ids, r.logprobs, r.top_logprobs, r.finish_reason) for r in results]


@pytest.fixture(scope="module")
def f16_model(chat_model, tmp_path_factory) -> Path:
    """chat_model with its weights stored as f16."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path_factory.mktemp("chat_model_f16")
    shutil.copytree(chat_model, d, dirs_exist_ok=True)
    tensors = load_file(str(chat_model / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(d / "model.safetensors"))
    config = json.loads((chat_model / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))
    return d


@pytest.fixture(scope="module", params=CASES)
def model(request, chat_model, f16_model) -> tuple[Path, dict]:
    """A model path and the engine settings that give the case's weight format."""
    if request.param == "f16":
        return f16_model, {}
    return chat_model, {"quantize": request.param}


def load(model: tuple[Path, dict], **settings) -> AsyncEngine:
    path, extra = model
    return AsyncEngine(path, max_seq_len=512, **extra, **settings)


@pytest.fixture(scope="module")
def alone(model) -> list[tuple]:
    # Each request by itself, in an engine without a prefix cache.
    llm = load(model, prefix_caching=False)
    try:
        prompts, configs = requests(llm.tokenizer.vocab_size)
        return [run(llm, [p], [c])[0] for p, c in zip(prompts, configs)]
    finally:
        llm.close()


@pytest.mark.parametrize("batch", [1, 7, 33, 64])
def test_mixed_into_batches_with_other_traffic(model, alone, batch):
    llm = load(model, max_num_seqs=64, max_batch_tokens=48)
    try:
        vocab = llm.tokenizer.vocab_size
        prompts, configs = requests(vocab)
        for start in range(0, 16, max(batch // 4, 1)):
            mine = list(range(start, min(start + max(batch // 4, 1), 16)))
            other_p, other_c = traffic(vocab, batch - len(mine), seed=batch * 100 + start) if batch > len(mine) \
                else ([], [])
            # The requests sit among the others, in the middle of the batch.
            half = len(other_p) // 2
            ps = other_p[:half] + [prompts[i] for i in mine] + other_p[half:]
            cs = other_c[:half] + [configs[i] for i in mine] + other_c[half:]
            got = run(llm, ps, cs)[half:half + len(mine)]
            assert got == [alone[i] for i in mine], f"batch {batch}, requests {mine}"
    finally:
        llm.close()


def test_prefix_cache_hits_and_chunked_prefill_change_nothing(model, alone):
    llm = load(model, max_batch_tokens=16)
    try:
        prompts, configs = requests(llm.tokenizer.vocab_size)
        # Warm the cache with each prompt's first pages (and a different tail),
        # so the requests find part of their prompt cached.
        run(llm, [[*p[: len(p) * 2 // 3], 5, 6, 7] for p in prompts], [SamplingConfig(max_tokens=1)] * 16)
        cached = llm.stats()["cached_prompt_tokens"]
        assert run(llm, prompts, configs) == alone
        assert llm.stats()["cached_prompt_tokens"] > cached + 16 * 8  # whole pages of most prompts came cached
    finally:
        llm.close()


def test_one_thread_gives_what_two_give(model, alone):
    script = (
        "import json, sys\n"
        "from ferrolm import AsyncEngine\n"
        "from test_batch_invariance import requests, run\n"
        "llm = AsyncEngine(sys.argv[1], max_seq_len=512, prefix_caching=False, **json.loads(sys.argv[2]))\n"
        "prompts, configs = requests(llm.tokenizer.vocab_size)\n"
        "print(json.dumps(run(llm, prompts, configs)))\n"
    )
    env = {**os.environ, "FERROLM_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    args = [sys.executable, "-c", script, str(model[0]), json.dumps(model[1])]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=True)
    one_thread = json.loads(done.stdout)
    assert one_thread == json.loads(json.dumps(alone))
