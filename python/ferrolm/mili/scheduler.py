"""``ContinuousBatchScheduler``: MILI's request scheduler, a thin view over the
engine's own scheduler (the core's ``SteppedScheduler``) driven step by step
by a caller that runs the model itself.

It batches exactly as ``ferrolm``'s engine does: running requests first (one
decode token each, or the next chunk of their prompt), then waiting requests
under a token budget (``max_batch_tokens``; long prompts are chunked), full
prompt pages shared between requests with the same prefix, and, when the
page pool runs short, the newest request preempted and later recomputed.

Each batch item is a :class:`RequestMetadata` that says what to run now:
``input_tokens`` at positions ``start_pos...`` through the block table
``kv_cache_pages``. The batch counts as run once handed out, so run it before
asking for the next. For each item with ``wants_token``, pick a token from
the logits of its last position and report it with ``update_request``;
``get_next_batch`` raises ValueError while such a token is still owed.

>>> scheduler = ContinuousBatchScheduler(max_batch_size=64)
>>> req_id = scheduler.add_request(prompt_tokens=[1, 2, 3], max_tokens=100, temperature=0.7)
>>> batch, batch_type = scheduler.get_next_batch()
>>> batch_type, batch[0].input_tokens, batch[0].wants_token
('prefill', [1, 2, 3], True)
>>> scheduler.update_request(req_id, new_token=5)
>>> scheduler.get_request_status(req_id)["tokens_generated"]
1
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from ferrolm import _core
from ferrolm._validate import TOKEN_ID_MAX, integer, integers, non_negative, positive

__all__ = ["ContinuousBatchScheduler", "RequestMetadata", "RequestPhase"]


class RequestPhase(Enum):
    """What a batch item computes."""

    PREFILL = 1  # prompt positions (or a recompute after preemption)
    DECODE = 2  # the last generated token, everything before it cached


@dataclass
class RequestMetadata:
    """One request's share of a batch (a snapshot; the scheduler owns the state).

    The fields of MILI's ``RequestMetadata``, plus what the caller needs to run the step:
    ``input_tokens`` (the tokens to run now), ``start_pos`` (the position of
    the first; earlier positions are cached in ``kv_cache_pages``, the
    block table: page ``i`` holds positions ``i * page_size`` onwards) and
    ``wants_token`` (report a token for it with ``update_request``).
    """

    request_id: str
    prompt_tokens: list[int]
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    phase: RequestPhase = RequestPhase.PREFILL
    generated_tokens: list[int] = field(default_factory=list)
    kv_cache_pages: list[int] = field(default_factory=list)
    seq_length: int = 0
    created_at: float = field(default_factory=time.time)
    input_tokens: list[int] = field(default_factory=list)
    start_pos: int = 0
    wants_token: bool = False

    def is_complete(self) -> bool:
        """Whether ``max_tokens`` tokens are generated, as MILI defines it.

        Items from ``get_next_batch`` are still due a token, so this is False
        for them; a request that ended on an end-of-sequence or stop token is
        ``"completed"`` in ``get_request_status`` without reaching ``max_tokens``.
        """
        return len(self.generated_tokens) >= self.max_tokens

    def tokens_remaining(self) -> int:
        """Tokens the request may still generate."""
        return self.max_tokens - len(self.generated_tokens)


@dataclass
class _Request:
    """What ``add_request`` was given, kept to fill in RequestMetadata."""

    core_id: int
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    created_at: float


_SAMPLING_KWARGS = ("temperature", "top_p", "top_k", "stop_token_ids")


class ContinuousBatchScheduler:
    """Scheduler with continuous batching: the engine's, stepped by hand.

    Args:
        max_batch_size: most requests in a batch (and running at once).
        prefill_batch_size: most new requests admitted per batch.
        decode_batch_size: most requests decoding together; requests running
            at once are capped at ``min(max_batch_size, decode_batch_size)``.
        max_seq_length: most positions (prompt plus output) of a request.
        page_size: positions per KV page.
        num_pages: pages in the pool; ``None`` gives every running request
            room for ``max_seq_length`` positions (no preemption).
        max_batch_tokens: most tokens in one batch (longer prompts are chunked).
        eos_token_ids: tokens that end every request (the model's end-of-sequence tokens).
    """

    def __init__(
        self,
        max_batch_size: int = 64,
        prefill_batch_size: int = 32,
        decode_batch_size: int = 256,
        max_seq_length: int = 32768,
        *,
        page_size: int = 16,
        num_pages: int | None = None,
        max_batch_tokens: int = 2048,
        eos_token_ids: Iterable[int] = (),
    ):
        self.max_batch_size = positive(max_batch_size, "max_batch_size")
        self.prefill_batch_size = positive(prefill_batch_size, "prefill_batch_size")
        self.decode_batch_size = positive(decode_batch_size, "decode_batch_size")
        self.max_seq_length = positive(max_seq_length, "max_seq_length")
        self.page_size = positive(page_size, "page_size")
        self.max_batch_tokens = positive(max_batch_tokens, "max_batch_tokens")
        running = min(self.max_batch_size, self.decode_batch_size)
        if num_pages is None:
            num_pages = running * -(-self.max_seq_length // self.page_size)
        self.num_pages = positive(num_pages, "num_pages")
        self.eos_token_ids = integers(eos_token_ids, "eos_token_ids", minimum=0, maximum=TOKEN_ID_MAX)
        self._core = _core.SteppedScheduler(
            running,
            self.max_batch_tokens,
            min(self.prefill_batch_size, self.max_batch_size),
            self.page_size,
            self.num_pages,
            self.max_seq_length,
            self.eos_token_ids,
        )
        self._requests: dict[str, _Request] = {}
        self._ids: dict[int, str] = {}

    def add_request(self, prompt_tokens: list[int], max_tokens: int = 128, **kwargs) -> str:
        """Add a new inference request.

        Args:
            prompt_tokens: the tokenized prompt (at least one token).
            max_tokens: most tokens to generate.
            **kwargs: ``temperature`` (1.0), ``top_p`` (0.95), ``top_k`` (50),
                kept for the caller's sampler, and ``stop_token_ids`` (tokens
                that end this request besides ``eos_token_ids``).

        Returns:
            The request id (a UUID string).
        """
        unknown = sorted(set(kwargs) - set(_SAMPLING_KWARGS))
        if unknown:
            raise TypeError(
                f"add_request() got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(_SAMPLING_KWARGS)}"
            )
        prompt = integers(prompt_tokens, "prompt_tokens", minimum=0, maximum=TOKEN_ID_MAX)
        max_tokens = positive(max_tokens, "max_tokens")
        temperature = float(kwargs.get("temperature", 1.0))
        top_p = float(kwargs.get("top_p", 0.95))
        top_k = non_negative(kwargs.get("top_k", 50), "top_k")  # 0 disables it
        stop = integers(kwargs.get("stop_token_ids", ()), "stop_token_ids", minimum=0, maximum=TOKEN_ID_MAX)
        core_id = self._core.add_request(prompt, max_tokens, temperature, top_p, top_k, stop)
        request_id = str(uuid.uuid4())
        self._requests[request_id] = _Request(core_id, prompt, max_tokens, temperature, top_p, top_k, time.time())
        self._ids[core_id] = request_id
        return request_id

    def get_next_batch(self) -> tuple[list[RequestMetadata], str]:
        """Get the next batch of requests to run.

        Returns:
            ``(batch, batch_type)``: ``batch_type`` is ``"prefill"`` when any
            item runs prompt positions (each item's ``phase`` says which it
            is), else ``"decode"``; an empty batch when there is nothing to do.

        Raises:
            ValueError: a token of the previous batch was not reported yet.
        """
        batch = []
        for core_id, start_pos, tokens, pages, phase, wants_token in self._core.next_batch():
            request_id = self._ids[core_id]
            r = self._requests[request_id]
            sequence, prompt_len = self._core.tokens(core_id)
            batch.append(
                RequestMetadata(
                    request_id=request_id,
                    prompt_tokens=list(r.prompt_tokens),
                    max_tokens=r.max_tokens,
                    temperature=r.temperature,
                    top_p=r.top_p,
                    top_k=r.top_k,
                    phase=RequestPhase.PREFILL if phase == "prefill" else RequestPhase.DECODE,
                    generated_tokens=sequence[prompt_len:],
                    kv_cache_pages=pages,
                    seq_length=len(sequence),
                    created_at=r.created_at,
                    input_tokens=tokens,
                    start_pos=start_pos,
                    wants_token=wants_token,
                )
            )
        prefill = any(m.phase is RequestPhase.PREFILL for m in batch)
        return batch, "prefill" if prefill else "decode"

    def update_request(self, request_id: str, new_token: int, kv_cache_page: int | None = None):
        """Report the token picked for a batch item with ``wants_token``.

        The token is appended, or ends the request: ``max_tokens`` reached,
        or an end-of-sequence or stop token id (not kept in its output).
        Unlike MILI's scheduler, which ignores unknown ids, an unknown id raises.

        Args:
            request_id: an id from ``add_request``.
            new_token: the token id picked.
            kv_cache_page: accepted for MILI's signature; pages belong to the
                scheduler's pool, so if given it must be one of the request's
                pages (``kv_cache_pages``).

        Raises:
            KeyError: unknown ``request_id``.
            ValueError: a bad token id or page, or the request is not due a
                token (finished, or its last item ran only part of its prompt).
        """
        core_id = self._core_id(request_id)
        token = integer(new_token, "new_token", minimum=0, maximum=TOKEN_ID_MAX)
        if kv_cache_page is not None and kv_cache_page not in (self._core.pages(core_id) or []):
            raise ValueError(
                f"kv_cache_page={kv_cache_page!r} is not a page of request {request_id}; "
                "pages are allocated by the scheduler (see RequestMetadata.kv_cache_pages)"
            )
        self._core.update(core_id, token)

    def get_request_status(self, request_id: str) -> dict:
        """``{"status": "processing", "phase", "tokens_generated", "tokens_remaining", "waiting"}``,
        ``{"status": "completed", "tokens_generated", "finish_reason"}`` or ``{"status": "not_found"}``.
        """
        r = self._requests.get(request_id)
        status = self._core.status(r.core_id) if r is not None else None
        if status is None:
            return {"status": "not_found"}
        if status["state"] == "finished":
            return {
                "status": "completed",
                "tokens_generated": status["generated"],
                "finish_reason": status["finish_reason"],
            }
        return {
            "status": "processing",
            "phase": status["phase"].upper(),
            "tokens_generated": status["generated"],
            "tokens_remaining": status["remaining"],
            "waiting": status["state"] == "waiting",
        }

    def get_completed_result(self, request_id: str) -> dict | None:
        """A finished request's ``{"request_id", "generated_tokens",
        "total_tokens", "generation_time", "finish_reason"}`` (seconds from
        ``add_request`` to its end; ``finish_reason`` is "stop", "length" or
        "abort"), or None while it runs or for an unknown id. The result is
        kept; ``pop_completed_result`` also forgets it.
        """
        return self._completed(request_id, take=False)

    def pop_completed_result(self, request_id: str) -> dict | None:
        """``get_completed_result``, then forgets the request (its status becomes "not_found")."""
        result = self._completed(request_id, take=True)
        if result is not None:
            r = self._requests.pop(request_id)
            del self._ids[r.core_id]
        return result

    def abort_request(self, request_id: str) -> bool:
        """Cancel a waiting or running request (its pages are freed at once; it
        completes with finish_reason "abort"). False if it had already finished.
        """
        return self._core.abort(self._core_id(request_id))

    def stats(self) -> dict:
        """``{"waiting", "running", "preemptions", "total_pages", "used_pages", "cached_pages",
        "free_pages", "available_pages"}``: the page counts as ``PagedKVCache.stats`` defines them."""
        return self._core.stats()

    def _completed(self, request_id: str, take: bool) -> dict | None:
        r = self._requests.get(request_id)
        done = self._core.completed(r.core_id, take) if r is not None else None
        if done is None:
            return None
        return {
            "request_id": request_id,
            "generated_tokens": done["generated"],
            "total_tokens": len(done["prompt"]) + len(done["generated"]),
            "generation_time": done["elapsed"],
            "finish_reason": done["finish_reason"],
        }

    def _core_id(self, request_id: str) -> int:
        r = self._requests.get(request_id)
        if r is None:
            raise KeyError(f"unknown request_id {request_id!r}: use an id returned by add_request")
        return r.core_id
