"""Objects shared between Python threads: `Transformer` and `InferenceSession`
calls take turns (they used to fail with "Already borrowed" in most threads),
and every thread gets the answer it would get alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ferrolm import InferenceSession, SamplingConfig, Transformer

THREADS = 8
GREEDY = SamplingConfig(temperature=0.0, max_tokens=6)


def test_threads_sharing_a_transformer_get_the_logits_they_would_get_alone(chat_model):
    model = Transformer.from_pretrained(chat_model, dtype="float32", max_seq_len=64)
    prompts = [[3 + i, 7, 11 + i] for i in range(THREADS)]
    alone = [model.forward([p]) for p in prompts]
    with ThreadPoolExecutor(THREADS) as pool:
        shared = list(pool.map(lambda p: model.forward([p]), prompts * 4))
    for i, logits in enumerate(shared):
        np.testing.assert_array_equal(logits, alone[i % THREADS])


def test_threads_sharing_a_session_take_whole_turns(chat_model):
    with InferenceSession(chat_model) as s:
        expected = {}
        for i in range(THREADS):
            s.reset_conversation()
            expected[i] = s.complete(f"{i} apples and", GREEDY)

        def turn(i: int) -> tuple[int, str, str]:
            whole = s.complete(f"{i} apples and", GREEDY)
            streamed = "".join(s.complete(f"{i} apples and", GREEDY, stream=True))
            return i, whole, streamed

        with ThreadPoolExecutor(THREADS) as pool:
            for i, whole, streamed in pool.map(turn, range(THREADS)):
                assert whole == streamed == expected[i], i
