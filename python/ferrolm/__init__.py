"""ferrolm: an LLM inference engine with a Rust core and a PyTorch-flavoured API.

>>> from ferrolm import InferenceSession
>>> with InferenceSession("smollm2") as s:                    # doctest: +SKIP
...     print(s.generate("What is the capital of France?"))
"""

from ferrolm._core import __version__
from ferrolm.engine import AsyncEngine, RequestOutput
from ferrolm.generation import Llama
from ferrolm.kv import PagedKVCache
from ferrolm.llm import LLM
from ferrolm.model import ModelArgs, Transformer, create_transformer_from_config
from ferrolm.sampling import SamplingConfig
from ferrolm.session import InferenceSession, QwenInferenceSession, generate_text
from ferrolm.tokenizer import Tokenizer

__all__ = [
    "LLM",
    "AsyncEngine",
    "InferenceSession",
    "Llama",
    "ModelArgs",
    "PagedKVCache",
    "QwenInferenceSession",
    "RequestOutput",
    "SamplingConfig",
    "Tokenizer",
    "Transformer",
    "__version__",
    "create_transformer_from_config",
    "generate_text",
]
