"""Every CUDA kernel in kernels/ compiles for sm_80 and sm_90, through the
same NVRTC path the GPU backend uses at run time, with no GPU present.

NVRTC comes from NVIDIA's PyPI wheel (``nvidia-cuda-nvrtc-cu12``, installed
by scripts/dev-env); it is loaded here so the core's loader finds it.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from ferrolm import _core

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


@pytest.fixture(scope="module")
def nvrtc():
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        pytest.fail("NVRTC is needed to check the kernels: pip install nvidia-cuda-nvrtc-cu12 (scripts/dev-env does)")
    lib = Path(next(iter(nvidia.cuda_nvrtc.__path__))) / "lib" / "libnvrtc.so.12"
    # Loaded globally, the core's dlopen("libnvrtc.so.12") finds this copy.
    return ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


def entry_points(source: str) -> set[str]:
    return set(re.findall(r'extern "C" __global__ void (\w+)\(', source))


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_every_kernel_compiles(nvrtc, arch):
    compiled = dict(_core.compile_cuda_kernels(arch))
    files = {p.stem for p in KERNELS.glob("*.cu")}
    assert set(compiled) == files, "every kernels/*.cu file is compiled and loaded by the backend"
    for name, ptx in compiled.items():
        assert f".target sm_{arch[-2:]}" in ptx
        entries = set(re.findall(r"\.entry (\w+)\(", ptx))
        assert entries == entry_points((KERNELS / f"{name}.cu").read_text()), name


def test_entry_points_are_named_op_dtype():
    for path in KERNELS.glob("*.cu"):
        for entry in entry_points(path.read_text()):
            assert re.fullmatch(r"[a-z_0-9]+_(f32|bf16|f16)", entry), f"{path.name}: {entry}"

