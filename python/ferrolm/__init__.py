"""ferrolm: an LLM inference engine with a Rust core and a PyTorch-flavoured API.

>>> from ferrolm import InferenceSession
>>> with InferenceSession("smollm2") as s:                    # doctest: +SKIP
...     print(s.generate("What is the capital of France?"))
"""

from __future__ import annotations

from ferrolm._core import __version__, cuda_unavailable_reason
from ferrolm.engine import AsyncEngine, RequestOutput
from ferrolm.evaluate import PerplexityResult, perplexity
from ferrolm.generation import Llama
from ferrolm.kv import PagedKVCache
from ferrolm.llm import LLM
from ferrolm.model import ModelArgs, Transformer, create_transformer_from_config
from ferrolm.sampling import SamplingConfig
from ferrolm.session import InferenceSession, QwenInferenceSession, generate_text
from ferrolm.tokenizer import Tokenizer


def cuda_available(device: int = 0) -> bool:
    """Whether GPU ``device`` can be used (driver, NVRTC and cuBLAS found);
    ``cuda_unavailable_reason()`` says what is missing otherwise.

    With ``FERROLM_CUDA_EMULATOR=1`` in the environment, "cuda" is ferrolm's
    CUDA backend running on the CPU (cuda-emulator/): then this is True and
    ``cuda_device_name()`` says "ferrolm CUDA emulator (CPU)"."""
    from ferrolm import _cuda

    _cuda.preload()
    return cuda_unavailable_reason(device) is None


def cuda_device_name(device: int = 0) -> str | None:
    """The name of GPU ``device`` (the emulator's when it is in use), or None
    when it cannot be used."""
    from ferrolm import _core, _cuda

    _cuda.preload()
    return _core.cuda_device_name(device)


def cuda_emulated(device: int = 0) -> bool:
    """Whether "cuda" runs on the CPU emulator (``FERROLM_CUDA_EMULATOR=1``)."""
    return cuda_device_name(device) == "ferrolm CUDA emulator (CPU)"


__all__ = [
    "LLM",
    "AsyncEngine",
    "InferenceSession",
    "Llama",
    "ModelArgs",
    "PagedKVCache",
    "PerplexityResult",
    "QwenInferenceSession",
    "RequestOutput",
    "SamplingConfig",
    "Tokenizer",
    "Transformer",
    "__version__",
    "create_transformer_from_config",
    "cuda_available",
    "cuda_device_name",
    "cuda_emulated",
    "cuda_unavailable_reason",
    "generate_text",
    "perplexity",
]
