"""The CUDA backend against HF's reference logits on every committed fixture.

float32 (the exact mode) must match HF as closely as the CPU does; bfloat16
(the GPU default) must pick the same next token almost everywhere.
"""

import numpy as np
import pytest
from gpu_support import DEVICE, require_cuda

from conftest import FIXTURES, Reference, max_rel_error
from ferrolm import Transformer

require_cuda()

pytestmark = pytest.mark.gpu

TOLERANCE = 1e-3  # as tests/test_parity.py: max relative error per position
ARGMAX_AGREEMENT = 0.98


def load(ref: Reference, dtype: str, **kw) -> Transformer:
    return Transformer.from_pretrained(ref.path, device=DEVICE, dtype=dtype, **kw)


@pytest.mark.parametrize("name", FIXTURES)
def test_float32_full_pass_matches_hf(name):
    ref = Reference(name)
    model = load(ref, "float32")
    for tokens, expected in ref.sequences():
        logits = model.forward([tokens])
        assert logits.dtype == np.float32 and logits.shape == (1, *expected.shape)
        assert np.isfinite(logits).all(), f"{name}: non-finite logits for {len(tokens)} tokens"
        err = max_rel_error(logits[0], expected)
        assert err < TOLERANCE, f"{name}: {len(tokens)} tokens, max relative error {err:.2e}"


@pytest.mark.parametrize("name", FIXTURES)
def test_float32_chunked_prefill_then_decode_matches_hf(name):
    """Prefill in chunks at growing start positions, then decode the last 8
    tokens one at a time: the paged prefill and decode attention kernels."""
    ref = Reference(name)
    model = load(ref, "float32")
    tokens, expected = list(ref.sequences())[-1]
    rows, pos = [], 0
    for size in (1, 30, 64, len(tokens) - 8 - 95):
        rows.append(model.forward([tokens[pos : pos + size]], start_pos=pos)[0])
        pos += size
    while pos < len(tokens):
        rows.append(model.forward([[tokens[pos]]], start_pos=pos)[0])
        pos += 1
    err = max_rel_error(np.concatenate(rows), expected)
    assert err < TOLERANCE, f"{name}: max relative error {err:.2e}"


@pytest.mark.parametrize("name", FIXTURES)
def test_float32_batch_rows_match_hf(name):
    """Two sequences in one forward: each row against HF's logits of its sequence."""
    ref = Reference(name)
    seqs = [(t, e) for t, e in ref.sequences() if len(t) >= 37]
    (a, ea), (b, eb) = seqs[0], seqs[1]
    model = load(ref, "float32", max_batch_size=2)
    logits = model.forward([a[:37], b[:37]])
    for row, expected in zip(logits, (ea[:37], eb[:37])):
        err = max_rel_error(row, expected)
        assert err < TOLERANCE, f"{name}: max relative error {err:.2e}"


@pytest.mark.parametrize("name", FIXTURES)
def test_bfloat16_argmax_agrees_with_hf(name):
    ref = Reference(name)
    model = load(ref, "bfloat16")
    same = total = 0
    for tokens, expected in ref.sequences():
        logits = model.forward([tokens])
        assert logits.dtype == np.float32 and logits.shape == (1, *expected.shape)
        assert np.isfinite(logits).all(), f"{name}: non-finite logits for {len(tokens)} tokens"
        same += int((logits[0].argmax(-1) == expected.argmax(-1)).sum())
        total += len(tokens)
    assert same / total >= ARGMAX_AGREEMENT, f"{name}: argmax agrees at {same}/{total} positions"
