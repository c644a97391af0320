"""GPU benchmark: ferrolm's CUDA backend against HF transformers (torch) on the same GPU.

For each model it measures, on ferrolm (``AsyncEngine``, bf16) and then on HF
(``AutoModelForCausalLM.generate``, bf16, eager decoding with its default
dynamic cache):

* decode tokens/s of one request (prefill excluded), and ms per token against
  the memory-bandwidth floor: weight bytes / measured device-to-device copy
  bandwidth (each decode step reads every weight once);
* generated tokens/s with 32, 64 and 256 requests at once (prefill included:
  all requests are submitted together; HF gets them as one left-padded batch).

Models:

* ``qwen3``: a Qwen3-0.6B-shaped model (28 layers, hidden 1024, vocab 151936,
  tied embeddings) with random bf16 weights, written as safetensors from its
  config with numpy alone (no download, no torch);
* ``smollm2``: the default model, SmolLM2-135M-Instruct, from ``--smollm2
  PATH`` (its ``.gguf`` or an HF directory) or the local ferrolm cache; without
  either (the GPU machine has no internet) a SmolLM2-135M-shaped model with
  random bf16 weights is measured instead, which on the GPU runs the same
  kernels on the same shapes (GGUF weights are dequantized to bf16 at load).

Prompts are token ids (random, lengths between half of and ``--prompt-len``),
the same on both sides; decoding is greedy. Random models have no
end-of-sequence token, so every request runs ``--max-tokens`` steps.

    python benchmarks/gpu_bench.py --json out.json
    python benchmarks/gpu_bench.py --models qwen3 --concurrency 32,64 --max-tokens 32 --no-hf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
    "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
    "attention_bias": False, "torch_dtype": "bfloat16",
}

SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "vocab_size": 49152, "max_position_embeddings": 8192, "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
}


# -- random bf16 models, numpy only ----------------------------------------------------


def parameter_shapes(config: dict) -> list[tuple[str, list[int]]]:
    """HF tensor names and shapes of a Llama/Qwen-family config (as the
    ferrolm core lists them, when ferrolm is importable)."""
    try:
        from ferrolm import _core

        return [(n, list(s)) for n, s in _core.parameter_shapes(config)]
    except ImportError:
        pass
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    qwen3 = config["architectures"][0] == "Qwen3ForCausalLM"
    shapes = [("model.embed_tokens.weight", [config["vocab_size"], h])]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", [h]), (p + "self_attn.q_proj.weight", [q, h]),
                   (p + "self_attn.k_proj.weight", [kv, h]), (p + "self_attn.v_proj.weight", [kv, h]),
                   (p + "self_attn.o_proj.weight", [h, q])]
        if qwen3:
            shapes += [(p + "self_attn.q_norm.weight", [hd]), (p + "self_attn.k_norm.weight", [hd])]
        shapes += [(p + "post_attention_layernorm.weight", [h]), (p + "mlp.gate_proj.weight", [inter, h]),
                   (p + "mlp.up_proj.weight", [inter, h]), (p + "mlp.down_proj.weight", [h, inter])]
    shapes.append(("model.norm.weight", [h]))
    if not config.get("tie_word_embeddings"):
        shapes.append(("lm_head.weight", [config["vocab_size"], h]))
    return shapes


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_bf16_safetensors(path: Path, config: dict, seed: int = 0, std: float = 0.02) -> int:
    """Random bf16 weights of ``config``'s shapes (norms 1, the rest N(0, std)),
    written tensor by tensor without holding the model in memory. Returns the
    number of parameters."""
    shapes = parameter_shapes(config)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes:
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    chunk = 1 << 24
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, shape in shapes:
            n = int(np.prod(shape))
            if name.endswith("norm.weight"):
                f.write(to_bf16_bits(np.ones(n, np.float32)).tobytes())
                continue
            for start in range(0, n, chunk):
                block = rng.standard_normal(min(chunk, n - start), dtype=np.float32) * np.float32(std)
                f.write(to_bf16_bits(block).tobytes())
    return sum(int(np.prod(s)) for _, s in shapes)


def write_wordlevel_tokenizer(model_dir: Path, vocab_size: int) -> None:
    """``tokenizer.json`` with token ``i`` = word ``t<i>``: the engine loads a
    tokenizer with every model, though the benchmark passes token ids."""
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    }
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))


def build_random_model(model_dir: Path, config: dict, seed: int = 0) -> Path:
    """A model directory (config.json, bf16 model.safetensors, tokenizer.json)
    loadable by ferrolm and by ``AutoModelForCausalLM.from_pretrained``;
    reused when one with the same config is already there."""
    stamp = model_dir / "config.json"
    if stamp.is_file() and (model_dir / "model.safetensors").is_file() and json.loads(stamp.read_text()) == config:
        return model_dir
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    start = time.perf_counter()
    params = write_bf16_safetensors(model_dir / "model.safetensors", config, seed)
    write_wordlevel_tokenizer(model_dir, config["vocab_size"])
    (model_dir / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    stamp.write_text(json.dumps(config))  # last: marks the directory complete
    print(f"  built {model_dir} ({params / 1e6:.0f}M parameters) in {time.perf_counter() - start:.1f} s", flush=True)
    return model_dir


def decode_weight_bytes(config: dict, bytes_per_param: int = 2) -> int:
    """Bytes of weights one decode step reads: every matrix once; the input
    embedding only if it doubles as the output head (tied), else the head."""
    total = 0
    for name, shape in parameter_shapes(config):
        if name == "model.embed_tokens.weight" and not config.get("tie_word_embeddings"):
            continue
        total += int(np.prod(shape))
    return total * bytes_per_param


def make_prompts(n: int, max_len: int, vocab: int, seed: int) -> list[list[int]]:
    """``n`` random token prompts with lengths in [max_len // 2, max_len]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, max_len // 2), max_len + 1, n)
    return [rng.integers(3, vocab, int(k)).tolist() for k in lengths]


# -- the GPU's memory bandwidth ----------------------------------------------------------


def copy_bandwidth(gib: float = 1.0, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written),
    timed with CUDA events over ``repeats`` copies of ``gib`` GiB of random data."""
    import torch

    n = int(gib * (1 << 30)) // 2
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 2 / statistics.median(times)


# -- ferrolm ---------------------------------------------------------------------------


def ferrolm_engine(model: str, args: argparse.Namespace, max_len: int):
    from ferrolm import AsyncEngine

    return AsyncEngine(model, device=args.device, dtype=args.dtype, max_seq_len=max_len,
                       kv_cache_bytes=int(args.kv_cache_gib * (1 << 30)), max_num_seqs=max(args.levels),
                       max_batch_tokens=args.max_batch_tokens, prefix_caching=False)


def ferrolm_run(engine, prompts: list[list[int]], max_tokens: int) -> dict:
    """Submits all prompts at once; returns wall time, generated tokens and
    each request's token timestamps (end-of-sequence tokens do not stop it)."""
    from ferrolm import SamplingConfig

    sampling = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                              max_tokens=max_tokens, ignore_eos=True)
    inbox: queue.Queue = queue.Queue()
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.submit(p, sampling, lambda out, i=i: inbox.put((i, time.perf_counter(), out)))
    stamps: list[list[float]] = [[] for _ in prompts]
    pending = len(prompts)
    while pending:
        i, t, out = inbox.get()
        if out.kind == "failed":
            raise out.error
        if out.kind == "token":
            stamps[i].append(t)
        else:
            pending -= 1
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": sum(map(len, stamps)), "stamps": stamps, "start": start}


# -- HF transformers -------------------------------------------------------------------


def hf_load(model: str):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    path = Path(model)
    kw: dict[str, Any] = {}
    if path.suffix == ".gguf":
        kw["gguf_file"] = path.name
        path = path.parent
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kw[dtype_kw] = torch.bfloat16
    hf = AutoModelForCausalLM.from_pretrained(str(path), **kw).to("cuda").eval()
    # As ferrolm's ignore_eos: every row runs max_new_tokens steps.
    hf.generation_config.eos_token_id = None
    return hf


def hf_generate(hf, prompts: list[list[int]], max_new_tokens: int) -> tuple[float, int]:
    """One left-padded batch through ``generate`` (greedy, on the GPU, no
    end-of-sequence stop); returns (wall s, generated tokens)."""
    import torch

    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    ids, mask = ids.cuda(), mask.cuda()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          pad_token_id=0, temperature=None, top_p=None, top_k=None)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return wall, len(prompts) * (out.shape[1] - width)


# -- the time plan -----------------------------------------------------------------------

# What each phase is expected to take at most on an H100/H200 machine, in seconds.
# GUESSES, pessimistic: no GPU round had run when they were written. Every phase's
# JSON entry holds its estimate next to its elapsed time: after a round, replace
# these with what it measured.
EST = {
    "bandwidth": 15.0,            # torch import, CUDA context, 23 copies of 1 GiB
    "build_fixed": 3.0,           # writing a random model: + build_s_per_gb
    "build_s_per_gb": 15.0,
    "ferrolm_load_fixed": 20.0,   # NVRTC compiles of the kernels, cuBLAS: + load_s_per_gb
    "hf_load_fixed": 10.0,
    "load_s_per_gb": 10.0,
    "warmup": 10.0,
    "ferrolm_step": 0.025,        # one decode step (a 30-layer model launches ~300 kernels)
    "ferrolm_row": 0.0001,        # + per request in the step
    "hf_layer": 0.0015,           # one decode step of HF's eager loop: per layer, + hf_step
    "hf_step": 0.005,
    "hf_row": 0.00015,            # + per row of the batch
    "prefill_tok_s": 20000.0,     # prompt tokens per second, both engines
    "level_fixed": 2.0,
}


@dataclass
class ModelSpec:
    """One model of the run: ``path`` None means a random model built from ``config``."""

    key: str
    name: str
    config: dict
    path: str | None = None
    random: bool = True

    @property
    def weight_gb(self) -> float:
        return decode_weight_bytes(self.config) / 1e9


def model_specs(args: argparse.Namespace, find: bool = True) -> list[ModelSpec]:
    specs = []
    for key in args.model_list:
        if key == "qwen3":
            config = dict(QWEN3_0_6B, num_hidden_layers=args.layers or QWEN3_0_6B["num_hidden_layers"])
            specs.append(ModelSpec("qwen3", "qwen3-0.6b (random bf16)", config))
        else:
            path = find_smollm2(args.smollm2) if find else None
            if path is not None:
                specs.append(ModelSpec("smollm2", "smollm2-135m", dict(SMOLLM2_135M), str(path), random=False))
            else:
                config = dict(SMOLLM2_135M, num_hidden_layers=args.layers or SMOLLM2_135M["num_hidden_layers"])
                specs.append(ModelSpec("smollm2", "smollm2-135m-shaped (random bf16)", config))
    return specs


def phase_plan(args: argparse.Namespace, specs: list[ModelSpec]) -> list[dict]:
    """The run's phases in order: name, estimated seconds, and the phases each needs."""
    e = EST
    fl_step = lambda c: e["ferrolm_step"] + c * e["ferrolm_row"]  # noqa: E731
    hf_step = lambda c, layers: layers * e["hf_layer"] + e["hf_step"] + c * e["hf_row"]  # noqa: E731
    prefill = lambda c: c * args.prompt_len / e["prefill_tok_s"]  # noqa: E731
    plan = [{"name": "bandwidth", "estimate_s": e["bandwidth"], "needs": []}]
    for m in specs:
        k, layers = m.key, m.config["num_hidden_layers"]
        built = [f"{k} build"] if m.random else []
        if m.random:
            plan.append({"name": f"{k} build", "estimate_s": e["build_fixed"] + e["build_s_per_gb"] * m.weight_gb,
                         "needs": []})
        load = f"{k} ferrolm load"
        plan.append({"name": load, "estimate_s": e["ferrolm_load_fixed"] + e["load_s_per_gb"] * m.weight_gb,
                     "needs": built})
        plan.append({"name": f"{k} ferrolm warm-up", "estimate_s": e["warmup"], "needs": [load]})
        warm = [load, f"{k} ferrolm warm-up"]
        plan.append({"name": f"{k} ferrolm batch 1", "needs": warm,
                     "estimate_s": args.repeats * (e["level_fixed"] + prefill(1) + args.batch1_tokens * fl_step(1))})
        for c in args.levels:
            plan.append({"name": f"{k} ferrolm {c} requests", "needs": warm,
                         "estimate_s": e["level_fixed"] + prefill(c) + args.max_tokens * fl_step(c)})
        load = f"{k} HF load"
        plan.append({"name": load, "estimate_s": e["hf_load_fixed"] + e["load_s_per_gb"] * m.weight_gb,
                     "needs": built, "hf": True})
        plan.append({"name": f"{k} HF warm-up", "estimate_s": e["warmup"], "needs": [load], "hf": True})
        warm = [load, f"{k} HF warm-up"]
        plan.append({"name": f"{k} HF batch 1", "needs": warm, "hf": True,
                     "estimate_s": args.repeats * (e["level_fixed"] + 2 * prefill(1)
                                                   + (args.batch1_tokens + 1) * hf_step(1, layers))})
        for c in args.levels:
            plan.append({"name": f"{k} HF {c} requests", "needs": warm, "hf": True,
                         "estimate_s": e["level_fixed"] + prefill(c) + args.max_tokens * hf_step(c, layers)})
    for p in plan:
        p["estimate_s"] = round(p["estimate_s"], 1)
        p.setdefault("hf", False)
    if args.no_hf:
        plan = [p for p in plan if not p["hf"]]
    return plan


def plan_total(plan: list[dict]) -> float:
    return round(sum(p["estimate_s"] for p in plan), 1)


def _set(args: argparse.Namespace, name: str, value: Any) -> bool:
    changed = getattr(args, name) != value
    setattr(args, name, value)
    return changed


# Applied in order until the plan fits the budget (each only where it changes
# something): fewer batch-1 repeats, the first model alone, shorter runs.
SHRINK: list[tuple[str, Callable[[argparse.Namespace], bool]]] = [
    ("repeats 1", lambda a: _set(a, "repeats", 1)),
    ("first model only", lambda a: _set(a, "model_list", a.model_list[:1])),
    ("batch-1 tokens 64", lambda a: _set(a, "batch1_tokens", min(a.batch1_tokens, 64))),
    ("max tokens 32", lambda a: _set(a, "max_tokens", min(a.max_tokens, 32))),
]


def size_to_budget(args: argparse.Namespace, find: bool = True) -> tuple[list[ModelSpec], list[dict], list[str]]:
    """Shrinks ``args`` (in place) until the estimated plan fits ``args.budget``;
    returns the models, the plan and the shrink steps applied. What still does
    not fit is cut when its turn comes."""
    applied: list[str] = []
    specs = model_specs(args, find)
    plan = phase_plan(args, specs)
    if args.budget is None:
        return specs, plan, applied
    for label, apply in SHRINK:
        if plan_total(plan) <= args.budget:
            break
        if apply(args):
            applied.append(label)
            specs = [s for s in specs if s.key in args.model_list]
            plan = phase_plan(args, specs)
    return specs, plan, applied


# -- running the phases ------------------------------------------------------------------


class Deadline(BaseException):
    """The run's time is up (its timer, SIGTERM or SIGINT): not an ``Exception``, so
    no phase's error handling swallows it."""


@dataclass
class Phases:
    """Runs the plan's phases in order, each timed and recorded, the JSON saved after each.

    A phase is cut (not started) when a phase it needs did not succeed, when
    the deadline has passed, or when its estimate exceeds the time left. A
    phase that raises is recorded as failed, one stopped by the deadline as
    timeout; the run goes on with what does not need it.
    """

    plan: list[dict]
    results: dict
    save: Callable[[], None]
    budget_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    start: float = 0.0
    ok: set = field(default_factory=set)
    expired: bool = False

    def __post_init__(self) -> None:
        self.start = self.clock()
        self.estimates = {p["name"]: p for p in self.plan}
        self.results["phases"] = []

    def left(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - (self.clock() - self.start)

    def record(self, name: str, status: str, **extra: Any) -> None:
        entry = {"name": name, "status": status, "estimate_s": self.estimates.get(name, {}).get("estimate_s")}
        entry.update(extra)
        self.results["phases"].append(entry)
        took = f"{entry['elapsed_s']:.1f} s" if "elapsed_s" in entry else "not run"
        why = f": {entry['reason']}" if "reason" in entry else ""
        print(f"  [{name}: {status}, {took}, estimate {entry['estimate_s']} s{why}]", flush=True)
        self.save()

    def skip(self, name: str, reason: str) -> None:
        self.record(name, "skipped", reason=reason)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        spec = self.estimates.get(name, {"estimate_s": 0.0, "needs": []})
        missing = [n for n in spec["needs"] if n not in self.ok]
        left = self.left()
        if missing:
            self.record(name, "cut", reason=f"needs {', '.join(missing)}")
            return None
        if self.expired or left <= 0:
            self.record(name, "cut", reason="past the deadline")
            return None
        if spec["estimate_s"] > left:
            self.record(name, "cut", reason=f"estimate {spec['estimate_s']} s > {left:.0f} s left")
            return None
        t = self.clock()
        try:
            value = fn()
        except Deadline as e:
            self.expired = True
            self.record(name, "timeout", elapsed_s=round(self.clock() - t, 2), reason=str(e) or "deadline")
            return None
        except Exception as e:  # one phase's failure must not lose the others' figures
            traceback.print_exc()
            self.record(name, "failed", elapsed_s=round(self.clock() - t, 2), reason=f"{type(e).__name__}: {e}")
            return None
        self.ok.add(name)
        self.record(name, "ok", elapsed_s=round(self.clock() - t, 2))
        return value

    def summary(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in self.results["phases"]:
            out.setdefault(p["status"], []).append(p["name"])
        return out


def arm_deadline(seconds: float | None) -> None:
    """From now, ``seconds`` later (and on SIGTERM or SIGINT: gpu_round.py stops
    a step with SIGINT), raise ``Deadline`` in the main thread."""

    def stop(signum, frame):
        why = "the bench's deadline" if signum == signal.SIGALRM else f"stopped by {signal.Signals(signum).name}"
        raise Deadline(why)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if seconds is not None:
        signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def disarm_deadline() -> None:
    """No more ``Deadline``: what is left (the report, the JSON) runs to its end."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


# -- one model -------------------------------------------------------------------------


def run_model(m: ModelSpec, args: argparse.Namespace, work: Path, bw: float | None, has_torch: bool,
              phases: Phases, results: dict) -> None:
    entry: dict[str, Any] = {"name": m.name, "path": m.path}
    results["models"][m.key] = entry
    k, vocab = m.key, m.config["vocab_size"]
    print(f"\n-- {m.name}", flush=True)
    if m.random:
        d = phases.run(f"{k} build", lambda: build_random_model(
            work / f"{k}-random-{m.config['num_hidden_layers']}l", m.config))
        m.path = entry["path"] = str(d) if d else None
    weight_bytes = decode_weight_bytes(m.config)
    entry["decode_weight_bytes"] = weight_bytes
    if bw:
        entry["bandwidth_floor_ms_per_token"] = 1e3 * weight_bytes / bw

    # ferrolm (AsyncEngine, bf16)
    fl: dict[str, Any] = {"levels": []}
    entry["ferrolm"] = fl
    state: dict[str, Any] = {}
    max_len = args.prompt_len + max(args.batch1_tokens, args.max_tokens) + 16

    def fl_load():
        t = time.perf_counter()
        state["engine"] = ferrolm_engine(m.path, args, max_len)
        fl["load_s"] = time.perf_counter() - t
        fl["model_info"] = state["engine"].model_info

    def fl_warmup():
        # Kernel compilation (NVRTC), cuBLAS handles, first-touch allocations.
        ferrolm_run(state["engine"], make_prompts(1, args.prompt_len, vocab, 99), 8)
        ferrolm_run(state["engine"], make_prompts(max(args.levels), args.prompt_len, vocab, 98), 4)

    def fl_batch1():
        runs = []
        for r in range(args.repeats):
            res = ferrolm_run(state["engine"], make_prompts(1, args.prompt_len, vocab, r), args.batch1_tokens)
            s = res["stamps"][0]
            runs.append({"ttft_s": s[0] - res["start"], "decode_s": s[-1] - s[0], "tokens": len(s),
                         "tokens_expected": args.batch1_tokens})
        best = min(runs, key=lambda x: x["decode_s"] / max(1, x["tokens"] - 1))
        fl["batch1"] = {**best, "decode_tok_s": (best["tokens"] - 1) / best["decode_s"],
                        "ms_per_token": 1e3 * best["decode_s"] / (best["tokens"] - 1)}

    def fl_level(c: int):
        res = ferrolm_run(state["engine"], make_prompts(c, args.prompt_len, vocab, 1000 + c), args.max_tokens)
        first_done = max(s[0] for s in res["stamps"] if s)
        late = sum(1 for s in res["stamps"] for x in s if x > first_done)
        end = max(s[-1] for s in res["stamps"] if s)
        fl["levels"].append({
            "concurrency": c, "wall_s": res["wall_s"], "tokens": res["tokens"],
            "tokens_expected": c * args.max_tokens, "tok_s": res["tokens"] / res["wall_s"],
            # after every request has its first token: pure decode steps of the whole batch
            "decode_tok_s": late / (end - first_done) if end > first_done else float("nan"),
        })

    try:
        phases.run(f"{k} ferrolm load", fl_load)
        phases.run(f"{k} ferrolm warm-up", fl_warmup)
        phases.run(f"{k} ferrolm batch 1", fl_batch1)
        for c in args.levels:
            phases.run(f"{k} ferrolm {c} requests", lambda c=c: fl_level(c))
        if "engine" in state:
            fl["stats"] = state["engine"].stats()
    finally:
        if "engine" in state:
            state.pop("engine").close()

    # HF transformers (generate, bf16, on the same GPU)
    if args.no_hf:
        return  # not in the plan
    if not has_torch:
        for p in phases.plan:
            if p["name"].startswith(f"{k} HF "):
                phases.skip(p["name"], "torch with CUDA is not available")
        return
    hf: dict[str, Any] = {"levels": []}
    entry["hf"] = hf

    def hf_load_phase():
        t = time.perf_counter()
        state["hf"] = hf_load(m.path)
        hf["load_s"] = time.perf_counter() - t

    def hf_warmup():
        hf_generate(state["hf"], make_prompts(1, args.prompt_len, vocab, 99), 8)
        hf_generate(state["hf"], make_prompts(max(args.levels), args.prompt_len, vocab, 98), 4)

    def hf_batch1():
        runs = []
        for r in range(args.repeats):
            p = make_prompts(1, args.prompt_len, vocab, r)  # the prompts ferrolm had
            t1, _ = hf_generate(state["hf"], p, 1)
            tn, n = hf_generate(state["hf"], p, args.batch1_tokens)
            runs.append({"ttft_s": t1, "decode_s": max(tn - t1, 1e-9), "tokens": n,
                         "tokens_expected": args.batch1_tokens})
        best = min(runs, key=lambda x: x["decode_s"] / max(1, x["tokens"] - 1))
        hf["batch1"] = {**best, "decode_tok_s": (best["tokens"] - 1) / best["decode_s"],
                        "ms_per_token": 1e3 * best["decode_s"] / max(1, best["tokens"] - 1)}

    def hf_level(c: int):
        wall, n = hf_generate(state["hf"], make_prompts(c, args.prompt_len, vocab, 1000 + c), args.max_tokens)
        hf["levels"].append({"concurrency": c, "wall_s": wall, "tokens": n, "tokens_expected": c * args.max_tokens,
                             "tok_s": n / wall})

    try:
        phases.run(f"{k} HF load", hf_load_phase)
        phases.run(f"{k} HF warm-up", hf_warmup)
        phases.run(f"{k} HF batch 1", hf_batch1)
        for c in args.levels:
            phases.run(f"{k} HF {c} requests", lambda c=c: hf_level(c))
    finally:
        if "hf" in state:
            import torch

            del state["hf"]
            torch.cuda.empty_cache()


# -- the report ------------------------------------------------------------------------


def find_smollm2(arg: str | None) -> Path | None:
    if arg:
        p = Path(arg).expanduser()
        if p.exists():
            return p
        print(f"--smollm2 {arg}: not found", flush=True)
        return None
    try:
        from ferrolm import hub

        return hub.resolve("smollm2", pull_missing=False)
    except (ImportError, FileNotFoundError):
        return None


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b and b == b and a == a else "   n/a"


def report(entry: dict, bw: float | None) -> None:
    """What was measured for one model, ferrolm next to HF (whatever ran)."""
    fl, hf = entry.get("ferrolm", {}), entry.get("hf") or {}
    weight_bytes = entry["decode_weight_bytes"]
    print(f"\n== {entry['name']}: decode weight bytes {weight_bytes / 1e9:.3f} GB", flush=True)
    b1, h1 = fl.get("batch1"), hf.get("batch1")
    if b1:
        line = (f"batch 1 decode: ferrolm {b1['decode_tok_s']:8.1f} tok/s ({b1['ms_per_token']:.3f} ms/token, "
                f"TTFT {1e3 * b1['ttft_s']:.1f} ms)")
        if h1:
            line += (f" | HF {h1['decode_tok_s']:8.1f} tok/s ({h1['ms_per_token']:.3f} ms/token)"
                     f" | ferrolm/HF {ratio(b1['decode_tok_s'], h1['decode_tok_s'])}")
        print(line)
        if bw:
            floor_ms = 1e3 * weight_bytes / bw
            print(f"bandwidth floor: {floor_ms:.3f} ms/token (weights / {bw / 1e12:.2f} TB/s copy bandwidth); "
                  f"ferrolm at {100 * floor_ms / b1['ms_per_token']:.0f}% of it"
                  + (f", HF at {100 * floor_ms / h1['ms_per_token']:.0f}%" if h1 else ""))
    hf_levels = {lv["concurrency"]: lv for lv in hf.get("levels", [])}
    for lv in fl.get("levels", []):
        line = (f"{lv['concurrency']:>4} requests: ferrolm {lv['tok_s']:9.1f} tok/s "
                f"(decode-only {lv['decode_tok_s']:9.1f}, wall {lv['wall_s']:6.2f} s)")
        h = hf_levels.get(lv["concurrency"])
        if h:
            line += (f" | HF {h['tok_s']:9.1f} tok/s (wall {h['wall_s']:6.2f} s)"
                     f" | ferrolm/HF {ratio(lv['tok_s'], h['tok_s'])}")
        print(line, flush=True)
    short = [f"{side} {r.get('concurrency', 'batch 1')}" for side, d in (("ferrolm", fl), ("HF", hf))
             for r in [d.get("batch1") or {}, *d.get("levels", [])]
             if r and r["tokens"] != r["tokens_expected"]]
    if short:
        print(f"token counts differ from requests x tokens: {', '.join(short)}", flush=True)


def print_plan(plan: list[dict], budget: float | None, applied: list[str]) -> None:
    total = plan_total(plan)
    print(f"plan: {len(plan)} phases, {total:.0f} s estimated"
          + (f" of a {budget:.0f} s budget" if budget is not None else "")
          + (f" (shrunk: {', '.join(applied)})" if applied else ""), flush=True)
    at = 0.0
    for p in plan:
        at += p["estimate_s"]
        over = " (past the budget: will be cut)" if budget is not None and at > budget else ""
        print(f"  {p['name']:<28} {p['estimate_s']:6.1f} s   by {at:6.1f} s{over}")


# -- the run ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3,smollm2", help="which, comma-separated (default: qwen3,smollm2)")
    ap.add_argument("--smollm2", metavar="PATH", help="SmolLM2-135M-Instruct .gguf or HF directory "
                    "(default: the ferrolm cache; else a SmolLM2-shaped random model)")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "ferrolm-gpu-bench"),
                    help="where random models are written (and reused)")
    ap.add_argument("--layers", type=int, help="override the layer count of the random models (smoke tests)")
    ap.add_argument("--device", default="cuda", help="ferrolm device (default: cuda)")
    ap.add_argument("--dtype", default="bfloat16", help="ferrolm dtype (default: bfloat16)")
    ap.add_argument("--prompt-len", type=int, default=64, help="longest prompt; lengths vary from half of it")
    ap.add_argument("--batch1-tokens", type=int, default=128, help="tokens decoded at batch 1 (default: 128)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per request at each concurrency level")
    ap.add_argument("--concurrency", default="32,64,256", help="levels, comma-separated (default: 32,64,256)")
    ap.add_argument("--repeats", type=int, default=2, help="batch-1 runs, the best kept (default: 2)")
    ap.add_argument("--max-batch-tokens", type=int, default=2048, help="ferrolm tokens per step (default: 2048)")
    ap.add_argument("--kv-cache-gib", type=float, default=8.0, help="ferrolm KV pool (default: 8 GiB)")
    ap.add_argument("--bandwidth-gib", type=float, default=1.0, help="copy size for the bandwidth (default: 1)")
    ap.add_argument("--no-hf", action="store_true", help="ferrolm only")
    ap.add_argument("--budget", type=float, help="seconds for the whole run: the flags shrink until the "
                    "estimated plan fits, phases that no longer fit are cut, a timer stops the run at the end")
    ap.add_argument("--dry-run", action="store_true", help="print (and with --json write) the plan; run nothing")
    ap.add_argument("--json", help="also write every figure here (rewritten after each phase)")
    args = ap.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c]
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.model_list) - {"qwen3", "smollm2"}
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; choose from qwen3, smollm2")
    return args


def torch_cuda() -> tuple[bool, str | None]:
    """Whether torch with a usable CUDA device is here, and the GPU's name."""
    try:
        import torch
    except ImportError:
        return False, None
    if not torch.cuda.is_available():
        return False, None
    return True, torch.cuda.get_device_name(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    asked = {k: v for k, v in vars(args).items() if k != "model_list"}
    specs, plan, applied = size_to_budget(args, find=not args.dry_run)
    results: dict[str, Any] = {
        "args": asked, "sized": {"applied": applied, "args": {k: v for k, v in vars(args).items()}},
        "budget_s": args.budget, "plan": plan, "plan_total_s": plan_total(plan), "phases": [], "models": {},
    }

    def save() -> None:
        results["total_s"] = round(time.monotonic() - t0, 2)
        if args.json:
            tmp = Path(args.json + ".tmp")
            tmp.write_text(json.dumps(results, indent=2, default=str))
            tmp.replace(args.json)  # whole or not at all, even if the run is killed meanwhile

    print_plan(plan, args.budget, applied)
    if args.dry_run:
        results["dry_run"] = True
        save()
        return 0 if args.budget is None or plan_total(plan) <= args.budget else 1

    import ferrolm

    if args.device != "cpu":
        available = getattr(ferrolm, "cuda_available", None)
        if available is None or not available():
            why = "this ferrolm has no CUDA backend" if available is None else ferrolm.cuda_unavailable_reason()
            print(f"CUDA is not usable: {why}", file=sys.stderr)
            results["error"] = f"CUDA is not usable: {why}"
            save()
            return 2
    has_torch, gpu = torch_cuda()
    results["gpu"] = gpu
    print(f"ferrolm {ferrolm.__version__} | GPU {gpu} | prompts <= {args.prompt_len} tokens | "
          f"batch 1: {args.batch1_tokens} tokens x {args.repeats} | levels {args.levels} x {args.max_tokens} tokens"
          f" | {platform.node()} {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    # The budget counts from the start: imports and CUDA checks took some of it.
    left = None if args.budget is None else args.budget - (time.monotonic() - t0)
    phases = Phases(plan, results, save, left)
    arm_deadline(left)
    try:
        bw = None
        if not has_torch:
            print("torch with CUDA is not available: the HF side and the bandwidth floor are skipped", flush=True)
            phases.skip("bandwidth", "torch with CUDA is not available")
        else:
            bw = phases.run("bandwidth", lambda: copy_bandwidth(args.bandwidth_gib))
            results["copy_bandwidth_bytes_s"] = bw
        work = Path(args.work_dir)
        for m in specs:
            run_model(m, args, work, bw, has_torch, phases, results)
    except Deadline as e:
        # Between phases: whatever had not started is cut.
        phases.expired = True
        print(f"stopped: {e}", flush=True)
    finally:
        disarm_deadline()
    done = {p["name"] for p in results["phases"]}
    for p in plan:
        if p["name"] not in done:
            phases.record(p["name"], "cut", reason="not reached: " + ("past the deadline" if phases.expired
                                                                      else "the run stopped"))
    for entry in results["models"].values():
        if entry.get("ferrolm", {}).get("batch1") or entry.get("ferrolm", {}).get("levels"):
            report(entry, results.get("copy_bandwidth_bytes_s"))
    results["summary"] = phases.summary()
    print("\nphases: " + "; ".join(f"{status} {len(names)}" for status, names in results["summary"].items())
          + f" | total {time.monotonic() - t0:.0f} s", flush=True)
    for status in ("failed", "timeout", "cut"):
        if status in results["summary"]:
            print(f"  {status}: {', '.join(results['summary'][status])}", flush=True)
    save()
    if args.json:
        print(f"wrote {args.json}")
    return 1 if {"failed", "timeout"} & set(results["summary"]) else 0


if __name__ == "__main__":
    sys.exit(main())
