"""The optional API key: ``Authorization: Bearer <key>`` on the generation endpoints.

``/health``, ``/`` and ``/metrics`` stay open: probes and Prometheus
scrapers usually carry no credentials, and none of them runs the model or
shows request content. Everything under ``/v1`` plus ``/generate`` and
``/status`` needs the key when one is set.
"""

from __future__ import annotations

import secrets

from fastapi import Request

from ferrolm.server.errors import APIError


async def require_key(request: Request) -> None:
    expected = request.app.state.ferrolm.api_key
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the comparison takes as long for a near miss as for a wild guess.
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError("Incorrect or missing API key: send `Authorization: Bearer <key>`.", status=401,
                       code="invalid_api_key")
