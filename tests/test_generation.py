"""Meta's llama API: Llama.build, generate (logprobs, echo), text and chat completion."""

import numpy as np

from ferrolm import InferenceSession, Llama, SamplingConfig


def _log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_generate_returns_tokens_and_logprobs_like_meta(chat_model):
    llama = Llama.build(chat_model, max_seq_len=128, max_batch_size=2)
    prompts = [[1, 9690, 28, 422], [1, 504]]
    tokens, logprobs = llama.generate(prompts, max_gen_len=6, temperature=0)
    assert logprobs is None and all(len(t) <= 6 for t in tokens)

    tokens_lp, lp = llama.generate(prompts, max_gen_len=6, temperature=0, logprobs=True)
    assert tokens_lp == tokens and [len(x) for x in lp] == [len(t) for t in tokens]
    # The first new token's log-probability is the model's, from a plain forward pass.
    first = llama.model.forward([prompts[0]])[0, -1]
    assert abs(lp[0][0] - _log_softmax(first)[tokens[0][0]]) < 1e-4

    echoed, lp_echo = llama.generate(prompts[:1], max_gen_len=6, temperature=0, logprobs=True, echo=True)
    assert echoed[0] == prompts[0] + tokens[0]
    assert len(lp_echo[0]) == len(echoed[0]) and lp_echo[0][0] == 0.0
    logits = llama.model.forward([prompts[0]])[0]
    assert abs(lp_echo[0][1] - _log_softmax(logits[0])[prompts[0][1]]) < 1e-4


def test_text_completion(chat_model):
    llama = Llama.build(chat_model, max_seq_len=64)
    out = llama.text_completion(["The capital of France is"], temperature=0, max_gen_len=5, logprobs=True)
    assert isinstance(out[0]["generation"], str)
    assert len(out[0]["tokens"]) == len(out[0]["logprobs"]) <= 5


def test_chat_completion_equals_the_session_with_its_cached_turns(chat_model):
    """A session's second turn (prefix from the cache) equals a from-scratch chat completion."""
    greedy = SamplingConfig(temperature=0, max_tokens=12, repetition_penalty=1.0)
    s = InferenceSession(chat_model)
    first = s.generate("Hi", greedy)
    second = s.generate("Tell me more", greedy)
    assert s.last_usage()["cached_tokens"] > 0

    llama = Llama.build(chat_model, max_seq_len=256)
    dialog = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first},
              {"role": "user", "content": "Tell me more"}]
    out = llama.chat_completion([dialog], temperature=0, max_gen_len=12)
    assert out[0]["generation"] == {"role": "assistant", "content": second}
