"""ferrolm: an LLM inference engine with a Rust core and a PyTorch-flavoured API.

>>> from ferrolm import InferenceSession
>>> with InferenceSession("smollm2") as s:                    # doctest: +SKIP
...     print(s.generate("What is the capital of France?"))
"""

from ferrolm._core import __version__
from ferrolm.generation import Llama
from ferrolm.model import ModelArgs, Transformer, create_transformer_from_config
from ferrolm.sampling import SamplingConfig
from ferrolm.session import InferenceSession, QwenInferenceSession, generate_text
from ferrolm.tokenizer import Tokenizer

__all__ = [
    "InferenceSession",
    "Llama",
    "ModelArgs",
    "QwenInferenceSession",
    "SamplingConfig",
    "Tokenizer",
    "Transformer",
    "__version__",
    "create_transformer_from_config",
    "generate_text",
]
