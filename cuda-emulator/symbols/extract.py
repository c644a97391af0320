"""Writes the symbol lists of the CUDA emulator's stand-in libraries.

cudarc (dynamic-loading) resolves every function of its bindings when it
opens a library, and panics on a missing one, so each stand-in exports all of
them: the ones the emulator implements, and a stub for every other that
returns "not supported". Run after a cudarc upgrade:

    python3 cuda-emulator/symbols/extract.py ~/.cargo/registry/src/*/cudarc-<version>
"""

import re
import sys
from pathlib import Path

LIBS = {"cuda": "driver", "nvrtc": "nvrtc", "cublas": "cublas"}

root = Path(sys.argv[1])
for lib, module in LIBS.items():
    source = (root / "src" / module / "sys" / "mod.rs").read_text()
    names = sorted(set(re.findall(r'\.get\(b"(\w+)\\0"\)', source)))
    out = Path(__file__).with_name(f"{lib}.txt")
    out.write_text("".join(f"{n}\n" for n in names))
    print(f"{out.name}: {len(names)} symbols")
