"""InferenceSession, SamplingConfig and generate_text: the session API."""

import pytest

from ferrolm import InferenceSession, QwenInferenceSession, SamplingConfig, generate_text

GREEDY = SamplingConfig(temperature=0, max_tokens=24, repetition_penalty=1.0)


def test_sampling_config_defaults_are_the_session_api_defaults():
    c = SamplingConfig()
    assert (c.temperature, c.top_k, c.top_p, c.min_p, c.repetition_penalty) == (0.6, 20, 0.95, 0.05, 1.1)
    assert (c.frequency_penalty, c.presence_penalty, c.penalty_window, c.max_tokens) == (0.0, 0.0, 64, 512)
    assert c.seed is None and c.reasoning_mode == 0 and c.stop == [] and c.logprobs is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 2.0), ("top_k", -1),
     ("repetition_penalty", 0.0), ("frequency_penalty", 5.0), ("presence_penalty", -3.0),
     ("max_tokens", -1), ("reasoning_mode", 2), ("temperature", "hot"), ("seed", -4),
     ("stop", [""]), ("stop", [3]), ("logprobs", 99)],
)
def test_sampling_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**{field: value})


def test_generate_and_stream_agree(chat_model):
    with InferenceSession(chat_model) as s:
        text = s.generate("Hello!", GREEDY)
        s.reset_conversation()
        pieces = list(s.generate("Hello!", GREEDY, stream=True))
    assert isinstance(text, str) and text
    assert len(pieces) > 1 and "".join(pieces) == text


def test_multi_turn_reuses_the_cache(chat_model):
    s = InferenceSession(chat_model)
    s.set_system_prompt("You are terse.")
    s.generate("What is 2+2?", GREEDY)
    first = s.last_usage()
    s.generate("And 3+3?", GREEDY)
    second = s.last_usage()
    assert len(s.history) == 4 and s.history[0] == {"role": "user", "content": "What is 2+2?"}
    # The second turn's prompt repeats the first turn: only the new part is computed.
    assert second["prompt_tokens"] > first["prompt_tokens"]
    assert second["cached_tokens"] >= first["prompt_tokens"]

    s.reset_conversation()
    assert s.history == []
    s.generate("What is 2+2?", GREEDY)
    again = s.last_usage()
    # Same system prompt and question: every full KV page (16 tokens) of the
    # prompt comes from the cache; at least one token is always computed.
    assert again["cached_tokens"] == (again["prompt_tokens"] - 1) // 16 * 16 > 0


def test_system_prompt_for_one_turn(chat_model):
    s = InferenceSession(chat_model)
    s.generate("Hi", GREEDY, system_prompt="Answer in French, please.")
    with_system = s.last_usage()["prompt_tokens"]
    s.reset_conversation()
    s.generate("Hi", GREEDY, system_prompt="Be brief.")
    assert s.last_usage()["prompt_tokens"] < with_system
    assert s.history[0] == {"role": "user", "content": "Hi"}


def test_stop_strings_cut_the_output(chat_model):
    s = InferenceSession(chat_model)
    full = s.generate("Hello!", GREEDY)
    s.reset_conversation()
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = s.generate("Hello!", SamplingConfig(temperature=0, max_tokens=24, repetition_penalty=1.0, stop=[stop]))
    assert cut == full[: full.find(stop)]
    assert s.last_usage()["finish_reason"] == "stop"


def test_max_tokens_and_seeds(chat_model):
    s = InferenceSession(chat_model)
    s.generate("Hello!", SamplingConfig(max_tokens=5, seed=1))
    assert s.last_usage()["completion_tokens"] <= 5 and s.last_usage()["finish_reason"] == "length"
    cfg = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42, max_tokens=16)
    runs = []
    for _ in range(2):
        s.reset_conversation()
        runs.append(s.generate("Hello!", cfg))
    assert runs[0] == runs[1]
    s.reset_conversation()
    assert s.generate("Hello!", SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=43,
                                              max_tokens=16)) != runs[0]


def test_top_k_1_is_greedy(chat_model):
    s = InferenceSession(chat_model)
    greedy = s.generate("Hello!", GREEDY)
    s.reset_conversation()
    assert s.generate("Hello!", SamplingConfig(temperature=1.5, top_k=1, max_tokens=24,
                                               repetition_penalty=1.0, seed=5)) == greedy


def test_logprobs_with_top_alternatives(chat_model):
    s = InferenceSession(chat_model)
    s.generate("Hello!", SamplingConfig(temperature=0, max_tokens=6, repetition_penalty=1.0, logprobs=3))
    lp = s.last_logprobs()
    assert len(lp) == s.last_usage()["completion_tokens"]
    for entry in lp:
        top = entry["top_logprobs"]
        assert len(top) == 3 and entry["logprob"] <= 0
        assert top[0]["token_id"] == entry["token_id"]  # greedy: the chosen token is the most likely
        assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
    s.generate("Hi", GREEDY)
    assert s.last_logprobs() == []


def test_model_info(chat_model):
    with InferenceSession(chat_model) as s:
        info = s.get_model_info()
    assert info["vocab_size"] == 49152 and info["context_length"] == 2048
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] > 0
    assert info["has_chat_template"] and 2 in info["eos_token_ids"]


def test_errors(chat_model, tmp_path):
    with pytest.raises(FileNotFoundError):
        InferenceSession(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a known short name"):
        InferenceSession("no-such-model")
    s = InferenceSession(chat_model)
    with pytest.raises(ValueError):
        s.generate(42)
    with pytest.raises(ValueError, match="SamplingConfig"):
        s.generate("hi", {"temperature": 0})
    with pytest.raises(RuntimeError):
        InferenceSession(chat_model, device=0)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.generate("hi")


def test_context_overflow_is_a_clear_error(chat_model):
    s = InferenceSession(chat_model, max_seq_len=64)
    with pytest.raises(ValueError, match="max_seq_len"):
        s.generate("word " * 100, GREEDY)
    assert s.generate("hi", SamplingConfig(temperature=0, max_tokens=4)) is not None


def test_generate_text_and_alias(chat_model):
    assert QwenInferenceSession is InferenceSession
    assert generate_text(chat_model, "Hello!", GREEDY) == InferenceSession(chat_model).generate("Hello!", GREEDY)
