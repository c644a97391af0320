"""The OpenAI-compatible HTTP server (``ferrolm serve``); needs ``pip install 'ferrolm[server]'``.

>>> from ferrolm import AsyncEngine                                    # doctest: +SKIP
>>> from ferrolm.server import create_app                              # doctest: +SKIP
>>> app = create_app(AsyncEngine("smollm2"), "smollm2")                # doctest: +SKIP
"""

from ferrolm.server.app import create_app

__all__ = ["create_app"]
