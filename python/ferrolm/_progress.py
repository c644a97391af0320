"""Progress bars on a terminal, silence elsewhere (tqdm writes to stderr)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(total: int, desc: str, *, disable: bool = False, unit: str = "B") -> tqdm:
    """A byte-counting bar on stderr, shown only when stderr is a terminal."""
    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024, leave=False,
        disable=disable or not sys.stderr.isatty(), file=sys.stderr,
    )
