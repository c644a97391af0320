"""CPU benchmark: prefill and decode speed of one GGUF through ferrolm,
llama.cpp (its own `llama-bench`, and llama-cpp-python) and HF transformers
(torch, f32), each in its own process on the same threads, in one run
(runs alternate between the engines); prints the ratios.

    python benchmarks/cpu_bench.py                              # SmolLM2 Q4_1, 128 + 128 tokens, 2 threads
    python benchmarks/cpu_bench.py --engines ferrolm,llama-bench --model Q4_K_M.gguf --runs 5

`llama-bench` is llama.cpp's C++ benchmark (no Python between tokens: the
strictest peer), run twice: the prompt, then decoding at a depth of the
prompt's length (`-d`), as the other engines decode after their prompt; `../shared/tools/build-llama-cpp` builds it, and
`--llama-bin` (default `$FERROLM_LLAMA_BIN`, else /tmp/llama.cpp-bin/bin)
says where it is.

Each engine gets a 128-token prompt (prefill tokens/s: the whole prompt in
one pass, logits of its last position only, as llama.cpp computes by
default) and then greedily generates 128 tokens (decode tokens/s, end of
sequence ignored). Peers that are not installed are reported and skipped:
llama.cpp needs `pip install llama-cpp-python` (built from source by pip),
HF needs `torch`, `transformers` and `gguf`. Medians of `--runs` runs.

Accuracy of the fast path (``--agreement N``, default 512): over the first N
tokens of tests/fixtures/text/sample.txt (held-out text), the share of
positions where ferrolm's default path (8-bit activations) picks the same
greedy token as its exact f32 path on the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKER = r'''
import json, os, sys, time, resource
engine, model, threads, prompt_len, gen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
os.environ.setdefault("OMP_NUM_THREADS", str(threads))
os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
prompt = [(i * 7919) % 20000 + 100 for i in range(prompt_len)]
if engine == "ferrolm":
    import numpy as np
    from ferrolm import Transformer
    m = Transformer.from_pretrained(model, max_seq_len=prompt_len + gen + 8)
    t = time.perf_counter(); logits = m.forward([prompt], logits_to_keep=1); prefill = time.perf_counter() - t
    tok = int(np.argmax(logits[0, -1])); t = time.perf_counter()
    for i in range(gen):
        tok = int(np.argmax(m.forward([[tok]], start_pos=prompt_len + i)[0, -1]))
    decode = time.perf_counter() - t
elif engine == "llama.cpp":
    from llama_cpp import Llama
    m = Llama(model_path=model, n_ctx=prompt_len + gen + 8, n_threads=threads, n_threads_batch=threads,
              n_batch=prompt_len, verbose=False, logits_all=False)
    t = time.perf_counter(); m.eval(prompt); prefill = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(gen):
        tok = m.sample(temp=0.0)
        m.eval([tok])
    decode = time.perf_counter() - t
elif engine == "hf":
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(model), gguf_file=os.path.basename(model),
                                             torch_dtype=torch.float32)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        t = time.perf_counter(); out = m(ids, use_cache=True, logits_to_keep=1); prefill = time.perf_counter() - t
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(gen):
            out = m(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        decode = time.perf_counter() - t
elif engine == "llama-bench":
    import subprocess
    def bench(*args):
        cmd = [os.path.join(os.environ["LLAMA_BIN"], "llama-bench"), "-m", model, "-t", str(threads), "-r", "1",
               "-o", "json", *args]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)[0]["avg_ts"]
    # Decode after the prompt, as the others decode: at a depth of prompt_len cached positions.
    prefill = prompt_len / bench("-p", str(prompt_len), "-n", "0")
    decode = gen / bench("-p", "0", "-n", str(gen), "-d", str(prompt_len))
else:
    raise SystemExit(f"unknown engine {engine}")
who = resource.RUSAGE_CHILDREN if engine == "llama-bench" else resource.RUSAGE_SELF
rss = resource.getrusage(who).ru_maxrss * 1024
print(json.dumps({"prefill_tps": prompt_len / prefill, "decode_tps": gen / decode, "peak_rss": rss}))
'''


def run_once(python: str, engine: str, model: str, threads: int, prompt_len: int, gen: int, llama_bin: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads), LLAMA_BIN=llama_bin)
    p = subprocess.run([python, "-c", WORKER, engine, model, str(threads), str(prompt_len), str(gen)],
                       capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="a .gguf file or short name (default: smollm2)")
    ap.add_argument("--engines", default="ferrolm,llama-bench,llama.cpp,hf")
    ap.add_argument("--llama-bin", default=os.environ.get("FERROLM_LLAMA_BIN", "/tmp/llama.cpp-bin/bin"),
                    help="folder of llama.cpp's llama-bench (see ../shared/tools/build-llama-cpp)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3, help="runs per engine; medians are reported (default: 3)")
    ap.add_argument("--python", action="append", default=[], metavar="ENGINE=PATH",
                    help="run ENGINE with another interpreter, e.g. hf=/opt/torch-env/bin/python (repeatable)")
    ap.add_argument("--agreement", type=int, default=512, metavar="N",
                    help="positions of held-out text for the default-vs-exact greedy agreement (0: skip)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    pythons = dict(p.split("=", 1) for p in args.python)

    from ferrolm import hub

    model = str(hub.resolve(args.model))
    size = os.path.getsize(model)
    print(f"{model} ({size / 2**20:.0f} MiB) | {args.prompt_tokens} + {args.gen_tokens} tokens | "
          f"{args.threads} threads | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs | "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    # Runs alternate between the engines (round 1 of each, then round 2, ...)
    # so that a slow phase of a shared machine does not fall on one engine.
    engines = args.engines.split(",")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(args.runs):
        for engine in [e for e in engines if e in runs]:
            try:
                python = pythons.get(engine, sys.executable)
                runs[engine].append(run_once(python, engine, model, args.threads, args.prompt_tokens,
                                             args.gen_tokens, args.llama_bin))
            except Exception as e:  # a peer that is not installed is reported, not fatal
                print(f"{engine:>10}: skipped ({e})", flush=True)
                del runs[engine]
    results: dict[str, dict] = {}
    for engine, rs in runs.items():
        r = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        results[engine] = r
        print(f"{engine:>10}: prefill {r['prefill_tps']:8.1f} tok/s | decode {r['decode_tps']:7.1f} tok/s | "
              f"peak RSS {r['peak_rss'] / 2**20:6.0f} MiB", flush=True)
    bandwidth = read_bandwidth(args.threads)
    bound = bandwidth / size
    print(f"read bandwidth, {args.threads} threads: {bandwidth / 1e9:.1f} GB/s -> decode bound ~{bound:.0f} tok/s "
          f"(every byte of the file read once per token)", flush=True)
    for engine, r in results.items():
        print(f"{engine:>10}: decode at {r['decode_tps'] / bound:.0%} of the bound")
    if "ferrolm" in results:
        ours = results["ferrolm"]
        for peer, r in results.items():
            if peer != "ferrolm":
                print(f"ferrolm / {peer}: prefill {ours['prefill_tps'] / r['prefill_tps']:.2f}x, "
                      f"decode {ours['decode_tps'] / r['decode_tps']:.2f}x")
    agreement = greedy_agreement(model, args.agreement) if args.agreement else None
    if agreement is not None:
        print(f"greedy agreement, default path vs exact f32, {args.agreement} positions of sample.txt: "
              f"{agreement:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model, "args": vars(args), "results": results, "agreement": agreement,
                       "read_bandwidth": bandwidth, "decode_bound_tps": bound}, f, indent=2)


def read_bandwidth(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """Bytes/s that `threads` threads read from memory: each sums its share
    of a buffer far larger than the caches (numpy's vectorized sum releases
    the GIL); the best of `repeats`."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    buf = np.ones(mib * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(buf, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, buf.nbytes / (time.perf_counter() - t))
    return best


def greedy_agreement(model: str, positions: int) -> float:
    """Share of positions of held-out text where the default path's argmax
    equals the exact f32 path's (both ferrolm, one forward pass each)."""
    import numpy as np

    from ferrolm import Tokenizer, Transformer

    text = (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "text" / "sample.txt").read_text()
    tokens = Tokenizer.from_pretrained(model).encode(text)[:positions]
    argmax = [Transformer.from_pretrained(model, max_seq_len=len(tokens), **kw).forward([tokens])[0].argmax(-1)
              for kw in ({}, {"dtype": "float32"})]
    return float(np.mean(argmax[0] == argmax[1]))


if __name__ == "__main__":
    main()
