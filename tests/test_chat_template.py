"""Tokenizer.apply_chat_template against HF's apply_chat_template(..., tokenize=False).

The renderings in tests/fixtures/tokenizers/chat/cases.json were made by
transformers with the SmolLM2, Llama 3.1/3.2/3.3 and Qwen3 templates of
chat/*.jinja (tests/fixtures/make_tokenizer_fixtures.py).
"""

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from ferrolm import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizers"
CASES = json.loads((FIXTURES / "chat" / "cases.json").read_text(encoding="utf-8"))
TEMPLATES = json.loads((FIXTURES / "chat" / "templates.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return Tokenizer.from_pretrained(FIXTURES / "smollm2")


def case_id(case: dict) -> str:
    gen = int(case["add_generation_prompt"])
    return f"{case['template']}-{case['conversation']}-gen{gen}-{case['kwargs_json'][:40]}"


def matches(ours: str, hf: str) -> bool:
    """Equal, with `{{TODAY}}` standing for strftime_now("%d %b %Y") (UTC here, local time in HF)."""
    if "{{TODAY}}" not in hf:
        return ours == hf
    before, after = hf.split("{{TODAY}}")
    if not (ours.startswith(before) and ours.endswith(after)):
        return False
    today = ours[len(before) : len(ours) - len(after)]
    now = datetime.now(timezone.utc)
    return today in {(now + timedelta(days=d)).strftime("%d %b %Y") for d in (-1, 0, 1)}


@pytest.fixture(scope="module")
def by_template() -> dict[str, Tokenizer]:
    """The SmolLM2 tokenizer, with each fixture template."""
    out = {}
    for name, template in TEMPLATES.items():
        out[name] = Tokenizer.from_pretrained(FIXTURES / "smollm2")
        if name != "smollm2":
            out[name].chat_template = template["source"]
    return out


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_hf_apply_chat_template(by_template, case):
    tok = by_template[case["template"]]
    kwargs = dict(case["kwargs"])
    if case["template"] != "smollm2":
        # The special tokens of the tokenizer HF rendered with (kwargs override the tokenizer's, as in HF).
        kwargs = {**case["special_tokens"], **kwargs}
    if "error" in case:
        with pytest.raises(ValueError, match=re.escape(case["error"])):
            tok.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"], **kwargs)
        return
    ours = tok.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"], **kwargs)
    assert matches(ours, case["expected"]), f"\n--- ours\n{ours}\n--- HF\n{case['expected']}"


def test_smollm2_template_and_defaults(smollm2):
    messages = [{"role": "user", "content": "Hi"}]
    assert smollm2.chat_template == (FIXTURES / "smollm2" / "chat_template.jinja").read_text(encoding="utf-8")
    with_prompt = smollm2.apply_chat_template(messages)  # add_generation_prompt defaults to True
    assert with_prompt.endswith("<|im_start|>assistant\n")
    assert smollm2.apply_chat_template(messages, add_generation_prompt=False) + "<|im_start|>assistant\n" == with_prompt
    ids = smollm2.encode(with_prompt)
    assert ids[0] == smollm2.bos_token_id and smollm2.decode(ids, skip_special_tokens=False) == with_prompt


def test_qwen3_enable_thinking(by_template):
    tok = by_template["qwen3"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    on = tok.apply_chat_template(messages, enable_thinking=True)
    off = tok.apply_chat_template(messages, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n")
    assert off == on + "<think>\n\n</think>\n\n"
    assert tok.apply_chat_template(messages) == on


def test_tools_keep_key_order_and_python_json(smollm2):
    tok = Tokenizer.from_pretrained(FIXTURES / "smollm2")
    tok.chat_template = "{% for t in tools %}{{ t | tojson }}|{{ t | tojson(indent=2) }}{% endfor %}"
    tool = {"z": 1.0, "a": [np.int64(3), 1e-7, None, True, "é\n"], "m": {}}
    out = tok.apply_chat_template([], tools=[tool])
    assert out == (
        json.dumps({**tool, "a": [3, 1e-7, None, True, "é\n"]}, ensure_ascii=False)
        + "|"
        + json.dumps({**tool, "a": [3, 1e-7, None, True, "é\n"]}, ensure_ascii=False, indent=2)
    )


def test_gguf_chat_template():
    tok = Tokenizer.from_gguf(FIXTURES / "gguf" / "bpe-qwen2.gguf")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == (
        "<|im_start|>user\nhi<|im_end|>\n"
    )


def test_errors(smollm2):
    tok = Tokenizer.from_file(FIXTURES / "smollm2" / "tokenizer.json")
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="compile"):
        tok.chat_template = "{% if %}"
    tok.chat_template = "{{ raise_exception('Only user and assistant roles are supported!') }}"
    with pytest.raises(ValueError, match="Only user and assistant roles are supported!"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="list"):
        smollm2.apply_chat_template({"role": "user", "content": "x"})
    with pytest.raises(ValueError, match="objects"):
        smollm2.apply_chat_template(["hello"])
    with pytest.raises(ValueError, match="JSON"):
        smollm2.apply_chat_template([{"role": "user", "content": object()}])
    with pytest.raises(ValueError, match="JSON"):
        smollm2.apply_chat_template([{"role": "user", "content": "x"}], value=float("nan"))
