"""``Tokenizer``: HF-compatible tokenization, streaming decode and chat templates.

Everything runs in the Rust core (``ferrolm._core``, the HF ``tokenizers``
crate and minijinja); this module documents and normalises arguments.

>>> from ferrolm import Tokenizer
>>> tok = Tokenizer.from_pretrained("path/to/model")                     # doctest: +SKIP
>>> ids = tok.encode("Hello, world!")                                    # doctest: +SKIP
>>> tok.decode(ids)                                                      # doctest: +SKIP
'Hello, world!'
>>> prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np

from ferrolm import _core, hub
from ferrolm._validate import at_least, integer, integers, of_type

TokenIds = Union[Sequence[int], np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]

_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length",
            False: "none", "do_not_pad": "none", None: "none"}


class StreamDecoder:
    """Turns token ids arriving one at a time into text, never splitting a character.

    Byte-level BPE and SentencePiece byte fallback spell one character over
    several tokens; ``push`` returns ``""`` until a character is complete.
    The pieces of ``push`` and ``flush`` concatenate to ``decode`` of all ids.
    """

    def __init__(self, core: _core.StreamDecoder) -> None:
        self._core = core

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text it completes (possibly ``""``)."""
        return self._core.push(integer(token_id, "token id"))

    def flush(self) -> str:
        """Returns the text still held back (an incomplete character as U+FFFD) and starts over."""
        return self._core.flush()

    @property
    def skip_special_tokens(self) -> bool:
        return self._core.skip_special_tokens


class Tokenizer:
    """A tokenizer identical to HF's on ``tokenizer.json`` files and GGUF vocabularies.

    Build one with :meth:`from_pretrained` (model directory, ``tokenizer.json``
    or ``.gguf``), :meth:`from_file` or :meth:`from_gguf`. Bad input (ids
    outside the vocabulary, malformed files) raises ``ValueError``; missing
    files ``FileNotFoundError``.
    """

    def __init__(self, core: _core.Tokenizer) -> None:
        if not isinstance(core, _core.Tokenizer):
            raise TypeError("use Tokenizer.from_pretrained, from_file or from_gguf to create a Tokenizer")
        self._core = core

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_file(cls, path: PathLike) -> Tokenizer:
        """Loads a ``tokenizer.json`` alone (no bos/pad token or chat template:
        use :meth:`from_pretrained` on its directory for those)."""
        return cls(_core.Tokenizer.from_file(os.fspath(path)))

    @classmethod
    def from_gguf(cls, path: PathLike) -> Tokenizer:
        """The tokenizer and chat template stored in a GGUF file, converted as
        ``transformers.AutoTokenizer.from_pretrained(dir, gguf_file=...)`` does."""
        return cls(_core.Tokenizer.from_gguf(os.fspath(path)))

    @classmethod
    def from_pretrained(cls, path: PathLike) -> Tokenizer:
        """A model directory (``tokenizer.json`` with ``tokenizer_config.json``,
        ``chat_template.jinja``, ``generation_config.json``; or one ``.gguf``),
        a ``tokenizer.json``, a ``.gguf`` file, or a short name such as ``"smollm2"``."""
        if not os.path.exists(path) and str(path).lower() in hub.KNOWN_MODELS:
            path = hub.resolve(path)
        return cls(_core.Tokenizer.from_pretrained(os.fspath(path)))

    # -- encode / decode ----------------------------------------------------------

    def encode(self, text: str | Sequence[str], add_special_tokens: bool = True) -> list[int] | list[list[int]]:
        """Token ids of ``text`` (a list of texts gives a list of id lists).

        ``add_special_tokens`` adds what the model's post-processor adds (bos, ...).
        """
        if isinstance(text, str):
            return self._core.encode(text, bool(add_special_tokens))
        return self._core.encode_batch(_texts(text), bool(add_special_tokens))

    def decode(self, tokens: TokenIds, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of token ids (a list or a 1-D integer array)."""
        return self._core.decode(_id_list(tokens), bool(skip_special_tokens))

    def batch_decode(self, sequences: Iterable[TokenIds] | np.ndarray, skip_special_tokens: bool = True) -> list[str]:
        """:meth:`decode` of each sequence (a list of lists or a 2-D integer array)."""
        if isinstance(sequences, np.ndarray) and sequences.ndim != 2:
            raise ValueError(f"batch_decode expects a 2-D array, got shape {sequences.shape}")
        return self._core.decode_batch([_id_list(s) for s in sequences], bool(skip_special_tokens))

    def batch_encode(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        padding: bool | str = True,
        return_tensors: str | bool | None = None,
        truncation: bool | str | None = None,
        add_special_tokens: bool = True,
        padding_side: str = "right",
    ) -> dict[str, Any]:
        """Encodes several texts; returns ``{"input_ids", "attention_mask"}``.

        Args:
            texts: the texts.
            max_length: truncation length, and the padded length with ``padding="max_length"``.
            padding: ``True``/``"longest"`` pads to the longest sequence,
                ``"max_length"`` to ``max_length``, ``False`` not at all. The pad
                token is the tokenizer's pad token, else its eos token.
            return_tensors: ``None`` for lists, ``"np"`` (or ``True``) for
                int64 numpy arrays (sequences of different lengths cannot be one
                array: pad them).
            truncation: cut to ``max_length`` keeping special tokens; ``None``
                (default) truncates when ``max_length`` is given.
            add_special_tokens: as in :meth:`encode`.
            padding_side: ``"right"`` or ``"left"`` (for batched generation).
        """
        texts = _texts([texts] if isinstance(texts, str) else texts)
        if isinstance(padding, str) or isinstance(padding, bool) or padding is None:
            mode = _PADDING.get(padding)
        else:
            mode = None
        if mode is None:
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', not {padding!r}")
        if max_length is not None:
            max_length = at_least(integer(max_length, "max_length"), "max_length", 1)
        if truncation is None:
            truncate = max_length is not None
        elif truncation in (True, "longest_first", "only_first"):
            truncate = True
        elif truncation in (False, "do_not_truncate"):
            truncate = False
        else:
            raise ValueError(f"truncation must be True, False or None, not {truncation!r}")
        if (truncate or mode == "max_length") and max_length is None:
            raise ValueError("truncation and padding='max_length' need max_length")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
        if return_tensors is True:
            return_tensors = "np"
        elif return_tensors is False:
            return_tensors = None
        if return_tensors not in (None, "np"):
            raise ValueError(
                f"return_tensors={return_tensors!r} is not supported: use 'np' (and torch.from_numpy if needed)"
            )
        input_ids, attention_mask = self._core.encode_batch_padded(
            texts, bool(add_special_tokens), mode, max_length, truncate, padding_side == "left"
        )
        if return_tensors == "np":
            lengths = sorted({len(ids) for ids in input_ids})
            if len(lengths) > 1:
                raise ValueError(
                    f"the sequences have different lengths {lengths}; pass padding=True to get arrays"
                )
            width = lengths[0] if lengths else 0
            return {
                "input_ids": np.asarray(input_ids, dtype=np.int64).reshape(len(input_ids), width),
                "attention_mask": np.asarray(attention_mask, dtype=np.int64).reshape(len(input_ids), width),
            }
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, text: str | Sequence[str], **kwargs: Any) -> dict[str, Any]:
        """``batch_encode`` of one text or several (HF-style ``tokenizer(texts)``)."""
        return self.batch_encode([text] if isinstance(text, str) else text, **kwargs)

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        """A :class:`StreamDecoder` for ids produced one at a time."""
        return StreamDecoder(self._core.stream_decoder(bool(skip_special_tokens)))

    # -- chat ------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Renders the model's chat template, as HF ``apply_chat_template(..., tokenize=False)``.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]``; other keys
                (``tool_calls``, ``reasoning_content``, ...) reach the template.
            add_generation_prompt: end with the assistant header, ready to generate.
            tools: JSON tool schemas for templates that support tools.
            documents: retrieval documents for templates that support them.
            **kwargs: extra template variables, e.g. ``enable_thinking=False``
                (Qwen3) or ``date_string="26 Jul 2024"`` (Llama 3).
        """
        if isinstance(messages, Mapping) or isinstance(messages, str):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        extra = dict(kwargs)
        for name, value in (("tools", tools), ("documents", documents)):
            if value is not None:
                if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) \
                        or not all(isinstance(v, Mapping) for v in value):
                    raise ValueError(f"{name} must be a list of dicts, got {type(value).__name__}")
                extra[name] = list(value)
        return self._core.apply_chat_template(
            _to_json(list(messages), "messages"), bool(add_generation_prompt), _to_json(extra, "template arguments")
        )

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template source, or ``None``."""
        return self._core.chat_template

    @chat_template.setter
    def chat_template(self, source: str) -> None:
        self._core.set_chat_template(str(source))

    # -- vocabulary -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added tokens included (HF's ``len(tokenizer)``)."""
        return self._core.vocab_size

    def __len__(self) -> int:
        return self._core.vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self._core.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        """The declared end-of-sequence token."""
        return self._core.eos_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        """Every token that ends generation: the declared eos first, then the
        end-of-turn tokens the vocabulary has (``<|im_end|>``, ``<|eot_id|>``, ...)."""
        return self._core.eos_token_ids

    @property
    def pad_token_id(self) -> int | None:
        """The padding token, falling back to the eos token."""
        return self._core.pad_token_id

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens, e.g. ``{"bos_token": "<s>", "eos_token": "</s>"}``."""
        return dict(self._core.special_tokens)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens_map.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens_map.get("eos_token")

    def token_to_id(self, token: str) -> int | None:
        return self._core.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._core.id_to_token(integer(token_id, "token id"))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, eos={self.eos_token_ids})"


def _id_list(tokens: TokenIds) -> list[int]:
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1:
            raise ValueError(f"token ids must be 1-D, got an array of shape {tokens.shape}")
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
        return tokens.astype(np.int64).tolist()
    return integers(tokens, "tokens")


def _texts(texts: Iterable[str]) -> list[str]:
    return [of_type(t, "texts", str, "strings") for t in texts]


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_plain)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} are not JSON-serializable: {e}") from None


def _plain(value: Any) -> Any:
    """numpy scalars/arrays, tuples and sets as the plain JSON values a template sees."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
