"""The bounded record of recent requests behind ``GET /status/{request_id}``.

Every generation request (``/generate`` and the OpenAI endpoints, under the
id its response carries) is recorded. Only the newest ``capacity`` are kept,
oldest dropped first, so a long-running server's memory stays flat; an id
that fell off reads as ``not_found``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Record:
    max_tokens: int  # over all of the request's choices
    tokens_generated: int = 0
    finished: bool = False
    finish_reason: str | None = None

    def status(self) -> dict[str, object]:
        return {
            "status": "completed" if self.finished else "processing",
            "tokens_generated": self.tokens_generated,
            # A finished request has nothing left, whether it stopped early or not.
            "tokens_remaining": 0 if self.finished else max(self.max_tokens - self.tokens_generated, 0),
            "finish_reason": self.finish_reason,
        }


class Tracker:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, Record] = OrderedDict()
        # Handlers run on the event loop, but /status may be served from a
        # threadpool by a sync route later; the lock keeps that safe.
        self._lock = threading.Lock()

    def start(self, request_id: str, max_tokens: int) -> Record:
        record = Record(max_tokens=max_tokens)
        with self._lock:
            self._records[request_id] = record
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)
        return record

    def get(self, request_id: str) -> dict[str, object]:
        with self._lock:
            record = self._records.get(request_id)
        if record is None:
            return {"status": "not_found", "tokens_generated": 0, "tokens_remaining": 0, "finish_reason": None}
        return record.status()
