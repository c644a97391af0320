"""The session API's ``device`` as an integer: ``device=0`` is the first GPU at every
entry point. Without a usable GPU each one says so, naming ``cuda:0``."""

import subprocess
import sys

import pytest

import ferrolm
from conftest import MODELS
from ferrolm import LLM, InferenceSession, Llama, Transformer, generate_text, perplexity
from ferrolm.mili import KVCacheAllocator, Qwen3Config, Qwen3Model, RadixAttentionCache, WeightLoader

pytestmark = pytest.mark.skipif(ferrolm.cuda_available(0), reason="a GPU would load the model instead")

PATH = MODELS / "qwen3_f32"


@pytest.mark.parametrize("entry", [
    lambda d: Transformer.from_pretrained(PATH, device=d),
    lambda d: Llama.build(PATH, tokenizer_path=None, device=d),
    lambda d: LLM(PATH, device=d),
    lambda d: perplexity(PATH, tokens=[1, 2, 3, 4], device=d),
    lambda d: Qwen3Model(Qwen3Config.from_pretrained(PATH), WeightLoader(PATH, Qwen3Config.from_pretrained(PATH),
                                                                        device=d)),
    lambda d: KVCacheAllocator(Qwen3Config.from_pretrained(PATH), dtype="float32", device=d, num_pages=4),
    lambda d: RadixAttentionCache(Qwen3Config.from_pretrained(PATH), dtype="float32", device=d, num_pages=4),
])
@pytest.mark.parametrize("device", [0, "0", "cuda:0"])
def test_a_gpu_index_names_the_first_gpu(entry, device):
    with pytest.raises(RuntimeError, match="cuda:0"):
        entry(device)


def test_sessions_and_the_command_line_take_an_index(chat_model):
    for entry in (lambda: InferenceSession(chat_model, device=0), lambda: generate_text(chat_model, "hi", device=0)):
        with pytest.raises(RuntimeError, match="cuda:0"):
            entry()
    out = subprocess.run([sys.executable, "-m", "ferrolm.cli", "generate", "hi", "--model", str(chat_model),
                          "--device", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "cuda:0" in out.stderr, out.stderr
