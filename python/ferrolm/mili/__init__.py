"""The MILI design's Python names, as thin views over ferrolm's Rust core.

Code written against MILI's ``python_layer`` runs on ferrolm with only its
import lines changed: every name below is the core's own object (config,
weights, page pool, prefix cache, scheduler, sampler, tokenizer, model) seen
through MILI's signatures.
"""

from ferrolm.kv import PagedKVCache
from ferrolm.mili.config import Qwen3Config
from ferrolm.mili.kv_cache import KVCacheAllocator
from ferrolm.mili.model import Qwen3Model
from ferrolm.mili.radix import RadixAttentionCache
from ferrolm.mili.sampler import Sampler
from ferrolm.mili.scheduler import ContinuousBatchScheduler, RequestMetadata, RequestPhase
from ferrolm.mili.tokenizer import QwenTokenizer, get_tokenizer
from ferrolm.mili.weights import Fp8Weight, WeightLoader

__all__ = [
    "ContinuousBatchScheduler",
    "Fp8Weight",
    "KVCacheAllocator",
    "PagedKVCache",
    "Qwen3Config",
    "Qwen3Model",
    "QwenTokenizer",
    "RadixAttentionCache",
    "RequestMetadata",
    "RequestPhase",
    "Sampler",
    "WeightLoader",
    "get_tokenizer",
]
