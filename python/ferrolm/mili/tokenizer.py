"""``QwenTokenizer`` and ``get_tokenizer``: MILI's tokenizer names over
ferrolm's ``Tokenizer`` (HF ``tokenizers`` in the Rust core).

>>> tokenizer = get_tokenizer()                                     # doctest: +SKIP
>>> tokenizer.decode(tokenizer.encode("Hello, world!"))             # doctest: +SKIP
'Hello, world!'
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from ferrolm import _core, hub
from ferrolm.tokenizer import Tokenizer


class QwenTokenizer(Tokenizer):
    """The tokenizer of a model (MILI's ``QwenTokenizer``).

    Args:
        model_name: a model directory, ``tokenizer.json``, ``.gguf`` file or
            short name; the default is ferrolm's default model. There is no
            model hub here, so hub ids raise ``FileNotFoundError``.

    ``encode``, ``decode`` and everything else are ``Tokenizer``'s;
    ``batch_encode`` keeps MILI's defaults.
    """

    def __init__(self, model_name: str | os.PathLike[str] = hub.DEFAULT_MODEL) -> None:
        self.model_name = model_name
        super().__init__(_core.Tokenizer.from_pretrained(os.fspath(hub.resolve(model_name))))

    def batch_encode(self, texts: Sequence[str], max_length: int | None = 2048,  # type: ignore[override]
                     padding: bool | str = True, return_tensors: bool | str | None = False,
                     **kwargs: Any) -> dict[str, Any]:
        """``{"input_ids", "attention_mask"}`` of several texts, as MILI's:
        truncated to ``max_length`` and, with ``padding=True``, right-padded
        to ``max_length`` (``padding="longest"``: to the longest text).
        ``return_tensors=True`` gives int64 numpy arrays. Other keywords are
        ``Tokenizer.batch_encode``'s (``padding_side``, ``add_special_tokens``)."""
        if padding is True and max_length is not None:
            padding = "max_length"
        return super().batch_encode(texts, max_length=max_length, padding=padding,
                                    return_tensors=return_tensors, **kwargs)


_tokenizers: dict[str, QwenTokenizer] = {}
_lock = threading.Lock()


def get_tokenizer(model_name: str | os.PathLike[str] = hub.DEFAULT_MODEL) -> QwenTokenizer:
    """The one ``QwenTokenizer`` of ``model_name`` (made on first use; thread-safe)."""
    key = os.path.realpath(hub.resolve(model_name))
    with _lock:
        if key not in _tokenizers:
            _tokenizers[key] = QwenTokenizer(key)
        return _tokenizers[key]
