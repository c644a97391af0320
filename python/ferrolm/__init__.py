"""ferrolm: an LLM inference engine with a Rust core and a PyTorch-flavoured API.

>>> from ferrolm import InferenceSession
>>> with InferenceSession("smollm2") as s:                    # doctest: +SKIP
...     print(s.generate("What is the capital of France?"))
"""

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
    ``cuda_unavailable_reason()`` says what is missing otherwise."""
    from ferrolm import _cuda

    _cuda.preload()
    return cuda_unavailable_reason(device) is None


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
    "cuda_unavailable_reason",
    "generate_text",
    "perplexity",
]
