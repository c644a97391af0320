"""Serving over HTTP: `ferrolm serve` against llama.cpp's own `llama-server`
on the same GGUF, the same threads and the same client load, in one run.

Each server is started in turn on a free port, sent the same greedy chat
completions (the prompts of `serve_bench.py`, 41-66 tokens) through the
official `openai` client with at most C requests in flight, for each
concurrency level C, and stopped. Generated tokens are the servers' own
`usage.completion_tokens`; tok/s is their sum over the wall time of a level.

    python benchmarks/http_bench.py                      # SmolLM2 Q4_1, 64 requests x 32 tokens, C = 1 and 64
    python benchmarks/http_bench.py --model Q4_K_M.gguf --concurrency 1,8,64 --json out.json

`llama-server` comes from `../shared/tools/build-llama-cpp`; `--llama-bin`
(default `$FERROLM_LLAMA_BIN`, else /tmp/llama.cpp-bin/bin) says where. It
runs with `--parallel` set to the highest level and a context of
`--slot-tokens` per slot (it splits `-c` between its slots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import prompts  # the same prompts as the engine benchmark


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


async def level(client, model: str, texts: list[str], max_tokens: int, concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(text: str) -> int:
        async with sem:
            t = time.perf_counter()
            r = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
                temperature=0.0, seed=0)
            latencies.append(time.perf_counter() - t)
            return r.usage.completion_tokens

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(t) for t in texts)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {"concurrency": concurrency, "generated_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "latency_p50_s": latencies[len(latencies) // 2], "latency_max_s": latencies[-1]}


def run_server(name: str, cmd: list[str], url: str, texts: list[str], args, levels: list[int]) -> list[dict]:
    from openai import AsyncOpenAI

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RAYON_NUM_THREADS=str(args.threads)))
    try:
        wait_ready(url, proc)

        async def all_levels() -> list[dict]:
            async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600, max_retries=0) as client:
                await level(client, "m", texts[:2], 4, 1)  # warm-up
                return [await level(client, "m", texts, args.max_tokens, c) for c in levels]

        results = asyncio.run(all_levels())
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for r in results:
        print(f"{name:>12} C={r['concurrency']:>3}: {r['tokens_per_s']:7.1f} tok/s | {r['generated_tokens']} tokens "
              f"in {r['wall_s']:.1f} s | latency p50 {r['latency_p50_s']:.2f} s, max {r['latency_max_s']:.2f} s",
              flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="a .gguf file or short name (default: smollm2)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", default="1,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slot-tokens", type=int, default=256, help="llama-server context per slot (default: 256)")
    ap.add_argument("--servers", default="ferrolm,llama-server")
    ap.add_argument("--llama-bin", default=os.environ.get("FERROLM_LLAMA_BIN", "/tmp/llama.cpp-bin/bin"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from ferrolm import hub

    model = str(hub.resolve(args.model))
    texts = prompts(args.requests)
    print(f"{model} | {args.requests} chat requests x {args.max_tokens} tokens, greedy | {args.threads} threads | "
          f"{platform.machine()}, {os.cpu_count()} CPUs | {time.strftime('%Y-%m-%d')}", flush=True)
    results: dict[str, list[dict]] = {}
    for name in args.servers.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "ferrolm":
            ferrolm = Path(sys.executable).with_name("ferrolm")
            cmd = [str(ferrolm), "serve", model, "--port", str(port), "--served-model-name", "m",
                   "--max-num-seqs", str(max(levels)), "--log-level", "warning"]
        elif name == "llama-server":
            cmd = [os.path.join(args.llama_bin, "llama-server"), "-m", model, "--port", str(port), "-t",
                   str(args.threads), "-tb", str(args.threads), "--parallel", str(max(levels)), "-c",
                   str(args.slot_tokens * max(levels)), "--alias", "m"]
        else:
            raise SystemExit(f"unknown server {name}")
        try:
            results[name] = run_server(name, cmd, url, texts, args, levels)
        except (OSError, RuntimeError) as e:  # a peer that is not built is reported, not fatal
            print(f"{name:>12}: skipped ({e})", flush=True)
    if "ferrolm" in results:
        for i, c in enumerate(levels):
            ours = results["ferrolm"][i]["tokens_per_s"]
            line = f"C={c}: ferrolm {ours / results['ferrolm'][0]['tokens_per_s']:.2f}x its C={levels[0]}"
            if "llama-server" in results:
                line += f", {ours / results['llama-server'][i]['tokens_per_s']:.2f}x llama-server"
            print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
