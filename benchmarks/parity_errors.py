"""The largest error of every HF parity check, measured: what the gates in
tests/ (and crates/ferrolm-core/tests) are set from.

For each committed fixture it runs the computations those tests run and
prints the worst ``max |ours - HF| / max |HF|`` per position (the tests'
``max_rel_error``) over all of the fixture's sequences:

* HF safetensors fixtures (tests/fixtures/models), on the CPU's exact path
  (``dtype="float32"``) and its default path (weights as stored, f32 KV
  cache): one pass, token by token, chunked prefill, two sequences in one
  batch, ``load_state_dict``; and ``quantize="fp8"`` against the exact path
  run on the FP8-rounded weights;
* GGUF fixtures (tests/fixtures/gguf), exact path, one pass and token by token;
* SmolLM2 (``FERROLM_SMOLLM2_GGUF`` or the ferrolm cache), exact path;
* with ``--device cuda`` (a GPU, or the emulator: ``FERROLM_CUDA_EMULATOR=1``),
  the CUDA backend in float32 on the HF fixtures (one pass, chunked prefill
  then decode, batch rows), its FP8 path against the CPU's, and bfloat16 /
  float16 (one pass with the KV pool half or f32, chunked prefill then decode).

    python benchmarks/parity_errors.py [--device cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import FIXTURES, Reference, chunked_logits, chunked_then_decoded, load_state, max_rel_error  # noqa: E402
from ferrolm import Transformer, _core, hub  # noqa: E402

GGUF = ROOT / "tests" / "fixtures" / "gguf"


def worst(errors) -> float:
    return float(max(errors))


def hf_checks(ref: Reference, **load) -> dict[str, float]:
    """The checks of tests/test_parity.py and hf_parity.rs, as errors."""
    model = Transformer.from_pretrained(ref.path, **load)
    seqs = list(ref.sequences())
    out = {"one pass": worst(max_rel_error(model.forward([t])[0], e) for t, e in seqs)}
    out["token by token"] = worst(
        max_rel_error(np.stack([model.forward([[x]], start_pos=p)[0, 0] for p, x in enumerate(t)]), e)
        for t, e in seqs
    )
    tokens, expected = seqs[-1]
    out["chunked prefill"] = max_rel_error(chunked_logits(model, tokens), expected)
    pair = Transformer.from_pretrained(ref.path, max_batch_size=2, **load)
    long = [(t, e) for t, e in seqs if len(t) >= 37]
    (a, ea), (b, eb) = long[0], long[1]
    rows = pair.forward([a[:37], b[:37]])
    out["batch rows"] = max(max_rel_error(rows[0], ea[:37]), max_rel_error(rows[1], eb[:37]))
    return out


def state_dict_check(ref: Reference) -> float:
    from ferrolm import ModelArgs

    model = Transformer(ModelArgs.from_config_file(ref.path / "config.json"))
    model.load_state_dict(load_state(ref.path))
    tokens, expected = list(ref.sequences())[2]
    return max_rel_error(model.forward([tokens])[0], expected)


def fp8_check(ref: Reference) -> float:
    """quantize="fp8" against the exact path on FP8-rounded weights (tests/test_fp8.py)."""
    fp8 = Transformer.from_pretrained(ref.path, quantize="fp8", kv_dtype="f32")
    group = _core.FP8_GROUP_SIZE
    rounded = {n: _core.dequantize_fp8(*_core.quantize_fp8(w, group_size=group), group_size=group)
               for n, w in load_state(ref.path).items()
               if n.startswith("model.layers.") and n.endswith("_proj.weight")}
    exact = Transformer.from_pretrained(ref.path, dtype="float32")
    exact.load_state_dict(rounded, strict=False)
    return worst(max_rel_error(fp8.forward([t])[0], exact.forward([t])[0]) for t, _ in ref.sequences())


def gguf_checks() -> dict[str, dict[str, float]]:
    out = {}
    for f in sorted(GGUF.glob("*.reference.safetensors")):
        stem = f.name[: -len(".reference.safetensors")]
        model = Transformer.from_pretrained(GGUF / f"{stem}.gguf", dtype="float32")
        ref = load_file(str(f))
        full, steps = [], []
        k = 0
        while f"tokens_{k}" in ref:
            tokens, expected = ref[f"tokens_{k}"].tolist(), ref[f"logits_{k}"]
            full.append(max_rel_error(model.forward([tokens])[0], expected))
            step = [model.forward([[x]], start_pos=p)[0, 0] for p, x in enumerate(tokens)]
            steps.append(max_rel_error(np.stack(step), expected))
            k += 1
        out[stem] = {"one pass": worst(full), "token by token": worst(steps)}
    return out


def smollm2_checks() -> dict[str, float] | None:
    path = os.environ.get("FERROLM_SMOLLM2_GGUF")
    try:
        path = Path(path) if path else hub.resolve("smollm2")
    except Exception as e:  # no cache and no network: skip it
        print(f"SmolLM2 skipped: {e}", file=sys.stderr)
        return None
    ref = load_file(str(GGUF / "smollm2_reference.safetensors"))
    tokens, expected = ref["tokens"].tolist(), ref["logits"]
    exact = Transformer.from_pretrained(path, max_seq_len=64, dtype="float32")
    steps = [exact.forward([[x]], start_pos=p)[0, 0] for p, x in enumerate(tokens)]
    return {"one pass": max_rel_error(exact.forward([tokens])[0], expected),
            "token by token": max_rel_error(np.stack(steps), expected)}


def cuda_checks(ref: Reference, device: str) -> dict[str, float]:
    """The float32 checks of tests/gpu/test_cuda_parity.py."""
    model = Transformer.from_pretrained(ref.path, device=device, dtype="float32")
    seqs = list(ref.sequences())
    out = {"one pass": worst(max_rel_error(model.forward([t])[0], e) for t, e in seqs)}
    tokens, expected = seqs[-1]
    out["chunked prefill + decode"] = max_rel_error(chunked_then_decoded(model, tokens), expected)
    pair = Transformer.from_pretrained(ref.path, device=device, dtype="float32", max_batch_size=2)
    long = [(t, e) for t, e in seqs if len(t) >= 37]
    (a, ea), (b, eb) = long[0], long[1]
    both = pair.forward([a[:37], b[:37]])
    out["batch rows"] = max(max_rel_error(both[0], ea[:37]), max_rel_error(both[1], eb[:37]))
    return out


def cuda_half_checks(ref: Reference, device: str) -> dict[str, float]:
    """bfloat16 and float16 against HF (tests/gpu/test_cuda_parity.py): one pass with the KV pool
    in the weights' precision and in f32, and chunked prefill then decode."""
    out = {}
    seqs = list(ref.sequences())
    for dtype in ("bfloat16", "float16"):
        for kv in (None, "f32"):
            model = Transformer.from_pretrained(ref.path, device=device, dtype=dtype, kv_dtype=kv)
            out[f"{dtype} kv {kv or dtype} one pass"] = worst(
                max_rel_error(model.forward([t])[0], e) for t, e in seqs)
        model = Transformer.from_pretrained(ref.path, device=device, dtype=dtype,
                                            kv_dtype="f16" if dtype == "float16" else None)
        tokens, expected = seqs[-1]
        out[f"{dtype} chunked prefill + decode"] = max_rel_error(chunked_then_decoded(model, tokens), expected)
    return out


def cuda_fp8_check(ref: Reference, device: str) -> float:
    """quantize="fp8" in float32 on the GPU against the CPU's FP8 path (tests/gpu/test_cuda_fp8.py)."""
    gpu = Transformer.from_pretrained(ref.path, device=device, dtype="float32", quantize="fp8")
    cpu = Transformer.from_pretrained(ref.path, quantize="fp8", kv_dtype="f32")
    return worst(max_rel_error(gpu.forward([t])[0], cpu.forward([t])[0]) for t, _ in ref.sequences())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default), or cuda for the CUDA backend's checks")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    report: dict = {}
    if args.device == "cpu":
        for name in FIXTURES:
            ref = Reference(name)
            report[name] = {
                "exact": hf_checks(ref, dtype="float32"),
                "default": hf_checks(ref),
                "load_state_dict": state_dict_check(ref),
                "fp8 vs exact on fp8 weights": fp8_check(ref),
            }
        report["gguf"] = gguf_checks()
        report["smollm2 exact"] = smollm2_checks()
    else:
        for name in FIXTURES:
            ref = Reference(name)
            report[name] = {"cuda float32": cuda_checks(ref, args.device),
                            "cuda fp8 float32 vs the CPU's fp8": cuda_fp8_check(ref, args.device),
                            "cuda half": cuda_half_checks(ref, args.device)}
    flat = []

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else k, v)
        elif node is not None:
            flat.append((prefix, node))

    walk("", report)
    for key, value in flat:
        print(f"{value:9.2e}  {key}")
    for kind in ("bfloat16", "float16"):
        if any(kind in k for k, _ in flat):
            print(f"{max(v for k, v in flat if kind in k):9.2e}  largest {kind}")
    print(f"{max(v for k, v in flat if 'half' not in k):9.2e}  largest float32")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
