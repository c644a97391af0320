"""The user-facing entry points on "cuda": a chat session, the inference
config file, and the OpenAI server, each against the same model on the CPU's
exact path (float32 weights and KV on both)."""

import json

import openai
import pytest
from gpu_support import DEVICE, greedy, require_cuda
from server_helpers import running_server

from ferrolm import AsyncEngine, InferenceSession
from ferrolm.server.app import create_app

require_cuda()

pytestmark = pytest.mark.gpu

QUESTION = "What is the capital of France?"


def answer(device: str, **kw) -> str:
    with InferenceSession(kw.pop("path"), device=device, dtype="float32", max_seq_len=256, **kw) as s:
        return s.generate(QUESTION, greedy(12))


def test_a_chat_session_on_cuda_answers_as_on_the_cpu(chat_model):
    assert answer(DEVICE, path=chat_model) == answer("cpu", path=chat_model, kv_dtype="f32")


def test_the_inference_config_file_picks_cuda(chat_model, tmp_path):
    config = tmp_path / "inference.json"
    config.write_text(json.dumps({"inference": {"device": DEVICE, "dtype": "float32", "max_seq_len": 256}}))
    with InferenceSession(chat_model, config=config) as s:
        on_cuda = s.generate(QUESTION, greedy(12))
    assert on_cuda == answer("cpu", path=chat_model, kv_dtype="f32")


def test_the_openai_server_serves_from_cuda(chat_model):
    with AsyncEngine(chat_model, device=DEVICE, dtype="float32", max_seq_len=256) as engine:
        with running_server(create_app(engine, "m")) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == answer("cpu", path=chat_model, kv_dtype="f32")
    assert reply.usage.completion_tokens == 12 or reply.choices[0].finish_reason == "stop"


def test_a_cuda_float16_inference_config_runs(chat_model, tmp_path):
    """MILI's example inference config asks for float16 on cuda: it loads and generates."""
    config = tmp_path / "inference.json"
    config.write_text(json.dumps({"inference": {"device": DEVICE, "dtype": "float16", "max_seq_len": 256}}))
    with InferenceSession(chat_model, config=config) as s:
        assert s.generate(QUESTION, greedy(4))
