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
import statistics
import sys
import tempfile
import time
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

        return [(n, list(s)) for n, s in _core.parameter_shapes(json.dumps(config))]
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
    each request's token timestamps."""
    from ferrolm import SamplingConfig

    sampling = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                              max_tokens=max_tokens)
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


def bench_ferrolm(model: str, args: argparse.Namespace, vocab: int) -> dict:
    max_len = args.prompt_len + max(args.batch1_tokens, args.max_tokens) + 16
    t = time.perf_counter()
    engine = ferrolm_engine(model, args, max_len)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t, "model_info": engine.model_info}
    try:
        # Warm-up: kernel compilation (NVRTC), cuBLAS handles, first-touch allocations.
        ferrolm_run(engine, make_prompts(1, args.prompt_len, vocab, 99), 8)
        ferrolm_run(engine, make_prompts(max(args.levels), args.prompt_len, vocab, 98), 4)

        runs = []
        for r in range(args.repeats):
            res = ferrolm_run(engine, make_prompts(1, args.prompt_len, vocab, r), args.batch1_tokens)
            s = res["stamps"][0]
            runs.append({"ttft_s": s[0] - res["start"], "decode_s": s[-1] - s[0], "tokens": len(s)})
        best = min(runs, key=lambda x: x["decode_s"] / max(1, x["tokens"] - 1))
        out["batch1"] = {**best, "decode_tok_s": (best["tokens"] - 1) / best["decode_s"],
                         "ms_per_token": 1e3 * best["decode_s"] / (best["tokens"] - 1)}
        out["levels"] = []
        for c in args.levels:
            res = ferrolm_run(engine, make_prompts(c, args.prompt_len, vocab, 1000 + c), args.max_tokens)
            first_done = max(s[0] for s in res["stamps"] if s)
            late = sum(1 for s in res["stamps"] for x in s if x > first_done)
            end = max(s[-1] for s in res["stamps"] if s)
            out["levels"].append({
                "concurrency": c, "wall_s": res["wall_s"], "tokens": res["tokens"],
                "tok_s": res["tokens"] / res["wall_s"],
                # after every request has its first token: pure decode steps of the whole batch
                "decode_tok_s": late / (end - first_done) if end > first_done else float("nan"),
            })
        out["stats"] = engine.stats()
    finally:
        engine.close()
    return out


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
    return AutoModelForCausalLM.from_pretrained(str(path), **kw).to("cuda").eval()


def hf_generate(hf, prompts: list[list[int]], max_new_tokens: int, eos: list[int]) -> tuple[float, int]:
    """One left-padded batch through ``generate`` (greedy); returns (wall s, generated tokens)."""
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
                          pad_token_id=0, eos_token_id=eos or None, temperature=None, top_p=None, top_k=None)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    new = out[:, width:].tolist()
    tokens = 0
    for row in new:
        for t in row:
            if t in eos:
                break
            tokens += 1
    return wall, tokens


def bench_hf(model: str, args: argparse.Namespace, vocab: int, eos: list[int]) -> dict:
    import torch

    t = time.perf_counter()
    hf = hf_load(model)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t}
    try:
        hf_generate(hf, make_prompts(1, args.prompt_len, vocab, 99), 8, eos)
        hf_generate(hf, make_prompts(max(args.levels), args.prompt_len, vocab, 98), 4, eos)
        runs = []
        for r in range(args.repeats):
            p = make_prompts(1, args.prompt_len, vocab, r)
            t1, _ = hf_generate(hf, p, 1, eos)
            tn, n = hf_generate(hf, p, args.batch1_tokens, eos)
            runs.append({"ttft_s": t1, "decode_s": max(tn - t1, 1e-9), "tokens": n})
        best = min(runs, key=lambda x: x["decode_s"] / max(1, x["tokens"] - 1))
        out["batch1"] = {**best, "decode_tok_s": (best["tokens"] - 1) / best["decode_s"],
                         "ms_per_token": 1e3 * best["decode_s"] / max(1, best["tokens"] - 1)}
        out["levels"] = []
        for c in args.levels:
            wall, n = hf_generate(hf, make_prompts(c, args.prompt_len, vocab, 1000 + c), args.max_tokens, eos)
            out["levels"].append({"concurrency": c, "wall_s": wall, "tokens": n, "tok_s": n / wall})
    finally:
        del hf
        torch.cuda.empty_cache()
    return out


# -- the run ---------------------------------------------------------------------------


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


def report(name: str, fl: dict, hf: dict | None, weight_bytes: int, bw: float | None) -> None:
    print(f"\n== {name}: decode weight bytes {weight_bytes / 1e9:.3f} GB", flush=True)
    floor_ms = 1e3 * weight_bytes / bw if bw else float("nan")
    b1 = fl["batch1"]
    line = (f"batch 1 decode: ferrolm {b1['decode_tok_s']:8.1f} tok/s ({b1['ms_per_token']:.3f} ms/token, "
            f"TTFT {1e3 * b1['ttft_s']:.1f} ms)")
    if hf:
        h1 = hf["batch1"]
        line += (f" | HF {h1['decode_tok_s']:8.1f} tok/s ({h1['ms_per_token']:.3f} ms/token)"
                 f" | ferrolm/HF {ratio(b1['decode_tok_s'], h1['decode_tok_s'])}")
    print(line)
    if bw:
        print(f"bandwidth floor: {floor_ms:.3f} ms/token (weights / {bw / 1e12:.2f} TB/s copy bandwidth); "
              f"ferrolm at {100 * floor_ms / b1['ms_per_token']:.0f}% of it"
              + (f", HF at {100 * floor_ms / hf['batch1']['ms_per_token']:.0f}%" if hf else ""))
    for i, lv in enumerate(fl["levels"]):
        line = (f"{lv['concurrency']:>4} requests: ferrolm {lv['tok_s']:9.1f} tok/s "
                f"(decode-only {lv['decode_tok_s']:9.1f}, wall {lv['wall_s']:6.2f} s)")
        if hf:
            h = hf["levels"][i]
            line += (f" | HF {h['tok_s']:9.1f} tok/s (wall {h['wall_s']:6.2f} s)"
                     f" | ferrolm/HF {ratio(lv['tok_s'], h['tok_s'])}")
        print(line, flush=True)


def run_model(name: str, model: str, args: argparse.Namespace, vocab: int, eos: list[int],
              weight_bytes: int | None, bw: float | None, results: dict) -> None:
    print(f"\n-- {name}: ferrolm ({args.device}, {args.dtype})", flush=True)
    entry: dict[str, Any] = {"path": model}
    results["models"][name] = entry
    try:
        entry["ferrolm"] = bench_ferrolm(model, args, vocab)
    except Exception as e:  # a failure on one side must not lose the other's figures
        entry["ferrolm_error"] = f"{type(e).__name__}: {e}"
        print(f"ferrolm failed: {entry['ferrolm_error']}", flush=True)
        return
    if weight_bytes is None:
        weight_bytes = 2 * int(entry["ferrolm"]["model_info"].get("parameters", 0))
    entry["decode_weight_bytes"] = weight_bytes
    hf = None
    if not args.no_hf:
        print(f"-- {name}: HF transformers (cuda, bfloat16)", flush=True)
        try:
            hf = entry["hf"] = bench_hf(model, args, vocab, eos)
        except Exception as e:
            entry["hf_error"] = f"{type(e).__name__}: {e}"
            print(f"HF side skipped: {entry['hf_error']}", flush=True)
    if bw:
        entry["bandwidth_floor_ms_per_token"] = 1e3 * weight_bytes / bw
    report(name, entry["ferrolm"], hf, weight_bytes, bw)


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
    ap.add_argument("--json", help="also write every figure here (rewritten after each model: partial results survive)")
    ap.add_argument("--deadline", type=float, help="seconds: start no model after this (what ran is kept)")
    args = ap.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c]
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.model_list) - {"qwen3", "smollm2"}
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; choose from qwen3, smollm2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ferrolm

    if args.device != "cpu":
        available = getattr(ferrolm, "cuda_available", None)
        if available is None or not available():
            why = "this ferrolm has no CUDA backend" if available is None else ferrolm.cuda_unavailable_reason()
            print(f"CUDA is not usable: {why}", file=sys.stderr)
            return 2
    bw = None
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            bw = copy_bandwidth(args.bandwidth_gib)
    except ImportError:
        pass
    if bw is None and not args.no_hf:
        print("torch with CUDA is not available: HF side and bandwidth skipped", flush=True)
        args.no_hf = True
    print(f"ferrolm {ferrolm.__version__} | GPU {gpu} | copy bandwidth "
          f"{bw / 1e12 if bw else float('nan'):.2f} TB/s | prompts <= {args.prompt_len} tokens | "
          f"batch 1: {args.batch1_tokens} tokens | levels {args.levels} x {args.max_tokens} tokens | "
          f"{platform.node()} {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    results: dict[str, Any] = {"gpu": gpu, "copy_bandwidth_bytes_s": bw, "args": {
        k: v for k, v in vars(args).items() if k not in ("model_list",)}, "models": {}}
    work = Path(args.work_dir)
    t0 = time.perf_counter()
    results["steps"] = []

    def save() -> None:
        results["total_s"] = time.perf_counter() - t0
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))

    for name in args.model_list:
        if args.deadline is not None and time.perf_counter() - t0 > args.deadline:
            print(f"\n{name}: not run, past the {args.deadline:.0f} s deadline", flush=True)
            results["steps"].append({"model": name, "skipped": "deadline"})
            continue
        step = time.perf_counter()
        if name == "qwen3":
            config = dict(QWEN3_0_6B, num_hidden_layers=args.layers or QWEN3_0_6B["num_hidden_layers"])
            d = build_random_model(work / f"qwen3-0.6b-random-{config['num_hidden_layers']}l", config)
            run_model("qwen3-0.6b (random bf16)", str(d), args, config["vocab_size"], [],
                      decode_weight_bytes(config), bw, results)
        else:
            path = find_smollm2(args.smollm2)
            if path is not None:
                eos = [2, 0]  # SmolLM2's <|im_end|> and <|endoftext|>
                run_model("smollm2-135m", str(path), args, SMOLLM2_135M["vocab_size"], eos, None, bw, results)
            else:
                print("\nSmolLM2 GGUF not found (no --smollm2 PATH, nothing in the ferrolm cache, no internet): "
                      "measuring a SmolLM2-135M-shaped model with random bf16 weights instead", flush=True)
                config = dict(SMOLLM2_135M, num_hidden_layers=args.layers or SMOLLM2_135M["num_hidden_layers"])
                d = build_random_model(work / f"smollm2-135m-random-{config['num_hidden_layers']}l", config)
                run_model("smollm2-135m-shaped (random bf16)", str(d), args, config["vocab_size"], [],
                          decode_weight_bytes(config), bw, results)
        results["steps"].append({"model": name, "elapsed_s": time.perf_counter() - step})
        print(f"  [{name}: {time.perf_counter() - step:.0f} s]", flush=True)
        save()
    save()
    print(f"\ntotal {results['total_s']:.0f} s", flush=True)
    if args.json:
        print(f"wrote {args.json}")
    failed = any("ferrolm_error" in m for m in results["models"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
