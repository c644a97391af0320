"""``quantize="fp8"`` on the GPU: the linear weights are rounded to FP8 E4M3
at upload (a scale per 32 weights of a row, as on the CPU), so in float32 the GPU must compute
what the CPU's FP8 path computes with an f32 KV cache."""

import numpy as np
import pytest
from gpu_support import DEVICE, require_cuda

from conftest import FIXTURES, HF_TOLERANCE, Reference, max_rel_error
from ferrolm import Transformer
from ferrolm.mili import Qwen3Config, Qwen3Model, WeightLoader

require_cuda()

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", FIXTURES)
def test_float32_fp8_matches_the_cpus_fp8_path(name):
    ref = Reference(name)
    gpu = Transformer.from_pretrained(ref.path, device=DEVICE, dtype="float32", quantize="fp8")
    cpu = Transformer.from_pretrained(ref.path, quantize="fp8", kv_dtype="f32")
    for tokens, _ in ref.sequences():
        ours, theirs = gpu.forward([tokens])[0], cpu.forward([tokens])[0]
        assert np.isfinite(ours).all()
        assert max_rel_error(ours, theirs) < HF_TOLERANCE, name


def test_mili_model_on_the_gpu_equals_the_native_transformer():
    path = Reference("qwen3_f32").path
    config = Qwen3Config.from_pretrained(path)
    model = Qwen3Model(config, WeightLoader(path, config, device=0))
    native = Transformer.from_pretrained(path, device=DEVICE, dtype="float32")
    tokens, expected = next(Reference("qwen3_f32").sequences())
    logits, _ = model.forward(np.array([tokens]))
    assert max_rel_error(logits[0], native.forward([tokens])[0]) < 1e-5
    assert max_rel_error(logits[0], expected) < HF_TOLERANCE
