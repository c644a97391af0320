"""Finding the CUDA libraries NVIDIA ships on PyPI.

The core loads libnvrtc and libcublas by name at run time. When they come
from pip wheels (``pip install 'ferrolm[cuda]'``, or the copies torch
brings) they are not on the loader's path, so they are loaded here first,
globally: the core's later ``dlopen`` by name then finds them. The driver
(libcuda) always comes from the system.
"""

from __future__ import annotations

import ctypes
import importlib
from pathlib import Path

# (package, library files in load order: dependencies first)
_WHEELS = [
    ("nvidia.cuda_nvrtc", ["libnvrtc.so.12"]),
    ("nvidia.cublas", ["libcublasLt.so.12", "libcublas.so.12"]),
]
_loaded = False


def preload() -> None:
    """Loads the wheel copies of NVRTC and cuBLAS if they are installed (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package, files in _WHEELS:
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        for folder in getattr(module, "__path__", []):
            for name in files:
                lib = Path(folder) / "lib" / name
                if lib.exists():
                    try:
                        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                    except OSError:
                        pass  # the probe will say what is missing
