"""README's Exactness section states the gates the tests hold, and only those."""

import re
from pathlib import Path

from conftest import HF_TOLERANCE

ROOT = Path(__file__).parent.parent


def exactness_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Exactness") :]
    return " ".join(section[: section.index("\n## ")].split())


def constant(path: str, pattern: str) -> float:
    m = re.search(pattern, (ROOT / path).read_text(encoding="utf-8"))
    assert m, f"{path}: no match for {pattern}"
    return float(m.group(1))


def test_the_f32_gate_is_the_one_the_tests_hold():
    m = re.search(r"`max \|ours - HF\| / max \|HF\| < ([0-9.e-]+)` at every position", exactness_section())
    assert m, "README's Exactness section does not state the f32 gate"
    assert float(m.group(1)) == HF_TOLERANCE
    rust = constant("crates/ferrolm-core/tests/common/mod.rs", r"pub const HF_TOLERANCE: f32 = ([0-9.e-]+);")
    assert rust == HF_TOLERANCE
    for path in ("tests/test_parity.py", "tests/test_gguf.py", "tests/test_fp8.py", "tests/gpu/test_cuda_parity.py"):
        assert "HF_TOLERANCE" in (ROOT / path).read_text(encoding="utf-8"), path


def test_the_gpu_half_precision_gates_are_the_ones_the_tests_hold():
    m = re.search(r"bfloat16 stays within (\d+)% and float16 within (\d+)%", exactness_section())
    assert m, "README's Exactness section does not state the half-precision gates"
    gpu = "tests/gpu/test_cuda_parity.py"
    assert float(m.group(1)) / 100 == constant(gpu, r"\nBF16_TOLERANCE = ([0-9.]+)\n")
    assert float(m.group(2)) / 100 == constant(gpu, r"\nFP16_TOLERANCE = ([0-9.]+)\n")
