"""ferrolm: an LLM inference engine with a Rust core and a PyTorch-flavoured API.

>>> from ferrolm import Transformer
>>> model = Transformer.from_pretrained("path/to/model")      # doctest: +SKIP
>>> logits = model.forward([[1, 15043, 29892]])                # doctest: +SKIP
"""

from ferrolm._core import __version__
from ferrolm.model import ModelArgs, Transformer, create_transformer_from_config
from ferrolm.tokenizer import Tokenizer

__all__ = ["ModelArgs", "Tokenizer", "Transformer", "__version__", "create_transformer_from_config"]
