"""The inference config file: checked by the core, taken by ``LLM``,
``InferenceSession`` and ``ferrolm serve --config``."""

import json
import subprocess
import sys

import httpx
import pytest
from server_helpers import running_server

from ferrolm import LLM, InferenceSession, SamplingConfig
from ferrolm._device import core_device
from ferrolm.engine import AsyncEngine
from ferrolm.inference_config import InferenceConfig
from ferrolm.server import create_app

# The example file of MILI's API reference.
MILI_EXAMPLE = {"inference": {"device": "cuda", "dtype": "float16", "max_batch_size": 64},
        "kv_cache": {"page_size": 16, "num_pages": 1024},
        "sampling": {"temperature": 1.0, "top_p": 0.95, "top_k": 50}}


def test_the_mili_example_file(tmp_path):
    path = tmp_path / "inference.json"
    path.write_text(json.dumps(MILI_EXAMPLE))
    config = InferenceConfig.load(path)
    assert config.engine_args == {"device": "cuda:0", "dtype": "float16", "max_num_seqs": 64,
                                  "page_size": 16, "num_pages": 1024}
    assert config.sampling == SamplingConfig(temperature=1.0, top_p=0.95, top_k=50)
    assert config.sampling_keys == {"temperature", "top_p", "top_k"}
    assert InferenceConfig.load(MILI_EXAMPLE) == config, "a dict works as the file"


def test_integer_devices_mean_gpus():
    assert InferenceConfig.load({"inference": {"device": 0}}).engine_args["device"] == "cuda:0"
    assert InferenceConfig.load({"inference": {"device": 1}}).engine_args["device"] == "cuda:1"
    assert core_device(0) == "cuda:0" and core_device(1) == "cuda:1" and core_device("cpu") == "cpu"


@pytest.mark.parametrize("config, key", [
    ({"inference": {"devise": "cpu"}}, "inference.devise"),
    ({"kv_cache": {"page_sze": 16}}, "kv_cache.page_sze"),
    ({"sampling": {"temprature": 0.5}}, "sampling.temprature"),
    ({"extra": {}}, "extra"),
    ({"kv_cache": {"page_size": 0}}, "kv_cache.page_size"),
    ({"kv_cache": {"num_pages": "many"}}, "kv_cache.num_pages"),
    ({"inference": {"max_batch_size": -1}}, "inference.max_batch_size"),
    ({"inference": {"max_waiting": 0}}, "inference.max_waiting"),
    ({"inference": {"device": "tpu"}}, "inference.device"),
    ({"inference": {"dtype": "int3"}}, "inference.dtype"),
    ({"sampling": {"top_p": 2.0}}, "sampling.top_p"),
])
def test_unknown_keys_and_bad_values_name_the_key(config, key):
    with pytest.raises(ValueError, match=f"`{key}`"):
        InferenceConfig.load(config)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="inference config"):
        InferenceConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        InferenceConfig.load(bad)


def test_llm_takes_engine_settings_and_sampling_defaults(chat_model):
    config = {"inference": {"device": "cpu", "max_batch_size": 3},
              "kv_cache": {"page_size": 8, "num_pages": 40},
              "sampling": {"temperature": 0.0, "max_tokens": 5}}
    llm = LLM(chat_model, config=config)
    try:
        stats = llm.engine.stats()
        assert (stats["page_size"], stats["total_pages"]) == (8, 40)
        [out] = llm.generate("Hello")
        [expected] = llm.generate("Hello", SamplingConfig(temperature=0.0, max_tokens=5))
        assert len(out.token_ids) == 5 and out.token_ids == expected.token_ids
    finally:
        llm.engine.close()
    with pytest.raises(ValueError, match="page_size set both"):
        LLM(chat_model, config=config, page_size=16)


def test_session_takes_the_config(chat_model):
    config = {"kv_cache": {"page_size": 8}, "sampling": {"temperature": 0.0, "max_tokens": 4}}
    with InferenceSession(chat_model, config=config) as session:
        text = session.generate("Hi")
    with InferenceSession(chat_model) as plain:
        assert text == plain.generate("Hi", SamplingConfig(temperature=0.0, max_tokens=4))
    with pytest.raises(ValueError, match="device set both"):
        InferenceSession(chat_model, device="cpu", config={"inference": {"device": "cpu"}})
    with pytest.raises(ValueError, match=r"kv_cache\.num_pages"):
        InferenceSession(chat_model, config={"kv_cache": {"num_pages": 0}})


def test_server_requests_take_the_configs_sampling_defaults(chat_model):
    engine = AsyncEngine(chat_model)
    defaults = {"temperature": 0.0, "max_tokens": 3}
    try:
        with running_server(create_app(engine, "m", sampling_defaults=defaults)) as url:
            first = httpx.post(f"{url}/generate", json={"prompt": "Hello"}, timeout=60).json()
            assert len(first["tokens"]) == 3 and first["total_tokens"] == first["prompt_tokens"] + 3
            again = httpx.post(f"{url}/generate", json={"prompt": "Hello"}, timeout=60).json()
            assert again["generated_text"] == first["generated_text"], "temperature 0 from the config: greedy"
            cmpl = httpx.post(f"{url}/v1/completions", json={"prompt": "Hello"}, timeout=60).json()
            assert cmpl["usage"]["completion_tokens"] == 3 and cmpl["choices"][0]["text"] == first["generated_text"]
    finally:
        engine.close()


def test_serve_reports_a_bad_config_naming_the_key(tmp_path, chat_model):
    bad = tmp_path / "inference.json"
    bad.write_text(json.dumps({"kv_cache": {"page_size": 16, "num_pagez": 4}}))
    out = subprocess.run([sys.executable, "-m", "ferrolm.cli", "serve", str(chat_model), "--config", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "kv_cache.num_pagez" in out.stderr, out.stderr
    assert "--config" in subprocess.run([sys.executable, "-m", "ferrolm.cli", "serve", "--help"],
                                        capture_output=True, text=True, timeout=60).stdout


def test_max_waiting_from_the_config_bounds_the_queue(chat_model):
    from ferrolm.engine import EngineOverloadedError

    config = InferenceConfig.load({"inference": {"max_waiting": 1}})
    assert config.engine_args == {"max_waiting": 1}
    llm = LLM(chat_model, config=config, max_seq_len=64)
    engine = llm.engine
    engine.pause()  # held: nothing is admitted, so the first request keeps its place
    try:
        engine.submit([5, 6, 7], SamplingConfig(temperature=0.0, max_tokens=1), lambda out: None)
        with pytest.raises(EngineOverloadedError):
            engine.submit([5, 6, 7], SamplingConfig(temperature=0.0, max_tokens=1), lambda out: None)
    finally:
        engine.resume()
        engine.close()
    with InferenceSession(chat_model, config=config) as session:  # one conversation: no queue to bound
        assert session.generate("Hi", SamplingConfig(temperature=0.0, max_tokens=1))
