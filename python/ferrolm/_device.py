"""The ``device`` argument every loader takes, as the string the core parses.

``"cpu"``, ``"cuda"``, ``"cuda:N"``, or a GPU index: ``0`` (or ``"0"`` from a
command line) is the first GPU, as in the session API's ``device=0``.
"""

from __future__ import annotations

import numpy as np


def core_device(device: str | int) -> str:
    """``device`` as the core's device string; strings other than a bare index
    pass through (the core rejects unknown ones). For a GPU, NVIDIA's
    pip-installed libraries are made findable first."""
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        device = f"cuda:{int(device)}"
    device = str(device)
    if device.strip().isdigit():  # "0" from a command line
        device = f"cuda:{int(device)}"
    if device.strip().lower().startswith(("cuda", "gpu")):
        from ferrolm import _cuda

        _cuda.preload()
    return device
