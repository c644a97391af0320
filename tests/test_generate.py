"""Transformer.generate: sampling, seeds, stopping, batching, and the GIL."""

import sys
import threading
import time

from conftest import MODELS
from ferrolm import ModelArgs, Transformer

QWEN3 = MODELS / "qwen3_f32"


def test_seeded_sampling_reproduces_and_seeds_differ():
    model = Transformer.from_pretrained(QWEN3)
    run = lambda seed: model.generate([[1, 5, 9]], 20, temperature=1.0, top_p=1.0, seed=seed)  # noqa: E731
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_tiny_top_p_is_greedy():
    model = Transformer.from_pretrained(QWEN3)
    greedy = model.generate([[1, 5, 9]], 16, temperature=0)
    assert model.generate([[1, 5, 9]], 16, temperature=1.0, top_p=1e-6, seed=0) == greedy


def test_max_gen_len_and_cache_capacity_bound_the_output():
    model = Transformer.from_pretrained(QWEN3, max_seq_len=10)
    assert len(model.generate([[1, 5, 9]], 4, temperature=0)[0]) == 4
    # 3 prompt tokens + at most 7 new ones fit in 10 positions.
    assert len(model.generate([[1, 5, 9]], 50, temperature=0)[0]) <= 7
    assert model.generate([[1, 5, 9]], 0) == [[]]
    assert model.generate([[1] * 10], 5) == [[]]


def test_stops_at_eos_without_emitting_it():
    model = Transformer.from_pretrained(MODELS / "llama_f32")
    out = model.generate([[1, 5, 9, 11]], 200, temperature=1.5, top_p=1.0, seed=1)[0]
    assert 2 not in out  # eos_token_id = 2


def test_ragged_batch_generation_equals_single_prompts():
    prompts = [[1, 5, 9, 14, 2, 7, 7], [1, 8], [3, 3, 3, 3]]
    model = Transformer.from_pretrained(QWEN3, max_batch_size=3)
    batched = model.generate(prompts, 12, temperature=0)
    single = Transformer.from_pretrained(QWEN3)
    assert batched == [single.generate([p], 12, temperature=0)[0] for p in prompts]


def test_random_init_is_reproducible():
    args = ModelArgs(hidden_size=64, intermediate_size=96, vocab_size=100, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_seq_len=32)
    a = Transformer(args, seed=1).forward([[1, 2, 3]])
    assert (a == Transformer(args, seed=1).forward([[1, 2, 3]])).all()
    assert not (a == Transformer(args, seed=2).forward([[1, 2, 3]])).all()


def test_forward_releases_the_gil():
    """Another thread runs Python while one is inside ``forward``.

    With the switch interval made huge, a thread that holds the GIL keeps it
    until it blocks, so the main thread's counter can move across a forward
    call only if the call let go of the GIL. The call is repeated until the
    main thread got in once; how long a forward takes decides nothing (the
    deadline is a hang guard, and a GIL held throughout never passes).
    """
    args = ModelArgs(hidden_size=256, intermediate_size=768, vocab_size=512, num_hidden_layers=4,
                     num_attention_heads=4, max_seq_len=512)
    model = Transformer(args)
    model.forward([[1]])  # initialise the weights first
    tokens = [[t % 500 for t in range(256)]]
    ticks = [0]
    result = {}

    def work():
        for attempt in range(1, 501):
            before = ticks[0]
            model.forward(tokens)
            if ticks[0] != before:
                result["attempts"] = attempt
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        t = threading.Thread(target=work, daemon=True)
        t.start()
        deadline = time.monotonic() + 300
        while t.is_alive() and time.monotonic() < deadline:
            ticks[0] += 1
            time.sleep(0.0001)  # lets the worker take the GIL between its forward calls
    finally:
        sys.setswitchinterval(old)
    t.join(timeout=60)
    assert "attempts" in result, "the main thread never ran while a forward pass was in progress"
