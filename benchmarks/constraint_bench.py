"""Structured-output benchmark: decode speed under a JSON schema against the
same requests unconstrained, through one continuous-batching engine.

For each concurrency level (default 1 and 32) the same chat prompts run with
the same max_tokens, greedy (or seeded with ``--temperature``), in two modes:

- ``free``: no constraint, ``ignore_eos`` so every request runs to max_tokens;
- ``json``: ``constraint={"json_schema": SCHEMA}``; the default schema (a list
  of 20 to 30 person records) is long enough that every request runs to
  max_tokens too (``--schema FILE`` takes another; the table says how many
  tokens each mode really generated).

Each run holds the engine (``AsyncEngine.pause``), queues the requests, and
steps it: first until every request has its first token (prefill; prompts are
prefix-cached by a warm-up, so this is short), then a window of decode steps
in which no request finishes, then to the end. Reported per level and mode:

- decode tok/s: tokens generated in the decode window / its wall time (every
  request in the batch all along): the figure the constrained/free ratio is
  taken on (target >= 0.9x);
- generated tok/s: all generated tokens / the wall time of the whole run
  (prefill, the last steps and the engine's hand-offs included);
- mask cost per token: (1 / constrained decode tok/s - 1 / free decode tok/s),
  in ms per generated token. ``ferrolm._core`` exposes no timer of its own for
  the mask, so this is *derived from the difference*: it includes llguidance's
  mask and token commit and the host-side pick of constrained rows (they cannot
  take the plain greedy path), and the run-to-run noise of the machine.

Measured directly, outside the runs: building the constraint factory (once per
model, on the first constrained request) and compiling the schema for one
request (``submit`` with the constraint minus ``submit`` without it, median).

    python benchmarks/constraint_bench.py                         # SmolLM2, 1 and 32 requests x 128 tokens
    python benchmarks/constraint_bench.py --repeats 3 --json out.json
    python benchmarks/constraint_bench.py --concurrency 1,8 --max-tokens 16 --repeats 1   # a quick look

Modes alternate (free, json, free, json, ...) ``--repeats`` times and the
medians are reported. CPU threads: ``FERROLM_NUM_THREADS`` (default: the
physical cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

from ferrolm import AsyncEngine, SamplingConfig

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "city": {"type": "string", "maxLength": 24}},
          "required": ["name", "age", "city"], "additionalProperties": False}
SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON, "minItems": 20,
                                                      "maxItems": 30}},
          "required": ["people"], "additionalProperties": False}

TOPICS = ["a chess club", "a hospital ward", "a school class", "a football team", "a choir", "a book club",
          "a startup", "a sailing crew", "a film set", "a research lab", "a bakery", "a train", "a library"]


def prompts(n: int) -> list[str]:
    return [f"List the people of {TOPICS[i % len(TOPICS)]} (list {i}) as JSON: name, age and city of each."
            for i in range(n)]


class Run:
    """Collects the outputs of one batch of requests."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.tokens = 0
        self.reasons: list[str] = []
        self.texts: dict[int, str] = {}
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()

    def listener(self, out) -> None:
        with self.lock:
            if out.kind == "token":
                self.tokens += 1
                self.texts[out.request_id] = self.texts.get(out.request_id, "") + out.text
                return
            if out.kind == "failed":
                self.error = out.error
            else:
                self.reasons.append(out.finish_reason)
            self.left -= 1
            if self.left == 0:
                self.done.set()


def run(engine: AsyncEngine, requests: list[list[int]], sampling: SamplingConfig, max_tokens: int) -> dict:
    """One batch, stepped on a held engine: prefill, a decode window, the rest."""
    r = Run(len(requests))
    engine.pause()
    for ids in requests:
        engine.submit(ids, sampling, r.listener)
    gen = lambda: engine.stats()["generation_tokens"]  # noqa: E731
    base = gen()
    start = time.perf_counter()
    steps = 0
    while gen() - base < len(requests) and steps < 10_000:  # every request has its first token
        engine.step()
        steps += 1
    prefilled = time.perf_counter()
    before = gen()
    # No request reaches max_tokens inside the window: those that got their first token in an earlier
    # prefill step (chunked prompts) are ahead by at most the tokens beyond one per request.
    window = max(0, max_tokens - 2 - (before - base - len(requests)))
    if window:
        engine.step(window)
    decoded = time.perf_counter()
    in_window = gen() - before
    still_running = engine.stats()["running"]
    engine.resume()
    if not r.done.wait(timeout=3600):
        raise RuntimeError("the requests did not finish")
    end = time.perf_counter()
    if r.error is not None:
        raise r.error
    return {
        "requests": len(requests), "generated_tokens": r.tokens, "wall_s": end - start,
        "generated_tps": r.tokens / (end - start),
        "prefill_s": prefilled - start, "window_steps": window, "window_tokens": in_window,
        "window_s": decoded - prefilled, "decode_tps": in_window / (decoded - prefilled) if window else float("nan"),
        "finished_in_window": len(requests) - still_running,
        "finish_reasons": {k: r.reasons.count(k) for k in sorted(set(r.reasons))},
        "first_text": r.texts[min(r.texts)] if r.texts else "",
    }


def submit_times(engine: AsyncEngine, ids: list[int], sampling: SamplingConfig, n: int) -> list[float]:
    """Wall time of `n` submits (a constraint compiles inside submit); the requests are then aborted."""
    engine.pause()
    times, rids = [], []
    for _ in range(n):
        t = time.perf_counter()
        rids.append(engine.submit(ids, sampling, lambda out: None))
        times.append(time.perf_counter() - t)
    for rid in rids:
        engine.abort(rid)
    engine.resume()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="directory, .gguf or short name (default: smollm2)")
    ap.add_argument("--concurrency", default="1,32",
                    help="levels, comma-separated: N requests at once, the first N prompts (default: 1,32)")
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens per request (default: 128)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs of each mode per level, alternating; medians reported (default: 2)")
    ap.add_argument("--schema", help="a JSON schema file to use instead of the built-in list of records")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="0 is greedy (default); otherwise seeded sampling, top-k/top-p/min-p off")
    ap.add_argument("--seed", type=int, default=0, help="seed when --temperature > 0 (default: 0)")
    ap.add_argument("--compile-samples", type=int, default=16,
                    help="submits timed with and without the schema for the compile cost (default: 16)")
    ap.add_argument("--max-seq-len", type=int, default=1024, help="engine max_seq_len (default: 1024)")
    ap.add_argument("--max-batch-tokens", type=int, default=512, help="engine max_batch_tokens (default: 512)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if min(levels) < 1 or args.max_tokens < 1 or args.repeats < 1:
        ap.error("--concurrency levels, --max-tokens and --repeats must be positive")
    schema = SCHEMA
    if args.schema:
        with open(args.schema) as f:
            schema = json.load(f)

    engine = AsyncEngine(args.model, max_seq_len=args.max_seq_len, max_num_seqs=max(levels),
                         max_batch_tokens=args.max_batch_tokens)
    tok = engine.tokenizer
    requests = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], True), add_special_tokens=False)
                for p in prompts(max(levels))]
    common = dict(temperature=args.temperature, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                  max_tokens=args.max_tokens, seed=args.seed if args.temperature > 0 else None)
    modes = {"free": SamplingConfig(**common, ignore_eos=True),
             "json": SamplingConfig(**common, constraint={"json_schema": schema})}

    # The constraint factory is built on the first constrained submit; then compiles alone.
    t = time.perf_counter()
    first_s = submit_times(engine, requests[0], modes["json"], 1)[0]
    free_submit = statistics.median(submit_times(engine, requests[0], modes["free"], args.compile_samples))
    json_submit = statistics.median(submit_times(engine, requests[0], modes["json"], args.compile_samples))
    compile_s = json_submit - free_submit
    factory_s = first_s - json_submit
    setup_s = time.perf_counter() - t
    # Warm-up: first-touch allocations, and every prompt's pages in the prefix cache for both modes alike.
    warm = Run(len(requests))
    for ids in requests:
        engine.submit(ids, SamplingConfig(temperature=0.0, max_tokens=1), warm.listener)
    warm.done.wait(timeout=3600)

    print(f"model {engine.model_path} | prompts {min(map(len, requests))}-{max(map(len, requests))} tokens | "
          f"max_tokens {args.max_tokens} | {'greedy' if args.temperature == 0 else f'T={args.temperature}'} | "
          f"repeats {args.repeats} | {os.cpu_count()} CPUs, {platform.machine()} | {time.strftime('%Y-%m-%d')}",
          flush=True)
    print(f"constraint factory: {1e3 * factory_s:.0f} ms (the first constrained submit, {1e3 * first_s:.0f} ms, "
          "less a later one); "
          f"schema compile per request: {1e3 * compile_s:.2f} ms "
          f"(submit {1e3 * json_submit:.2f} ms with it, {1e3 * free_submit:.2f} ms without; setup {setup_s:.1f} s)",
          flush=True)

    results = []
    for c in levels:
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode, sampling in modes.items():
                r = run(engine, requests[:c], sampling, args.max_tokens)
                runs[mode].append(r)
                print(f"  concurrency {c:>3} {mode:>4}: decode {r['decode_tps']:7.1f} tok/s, "
                      f"generated {r['generated_tps']:7.1f} tok/s ({r['generated_tokens']} tokens, "
                      f"{r['wall_s']:.1f} s), finish {r['finish_reasons']}", flush=True)
                if mode == "json" and len(runs[mode]) == 1:
                    print(f"    first output: {r['first_text'][:100]!r}...", flush=True)
                if r["finished_in_window"]:
                    print(f"    note: {r['finished_in_window']} requests ended inside the decode window "
                          "(the schema's output is shorter than max_tokens): the batch shrank", flush=True)
        med = {m: {k: statistics.median(x[k] for x in rs) for k in ("decode_tps", "generated_tps",
                                                                      "generated_tokens", "wall_s")}
               for m, rs in runs.items()}
        ratio = med["json"]["decode_tps"] / med["free"]["decode_tps"]
        mask_ms = 1e3 * (1 / med["json"]["decode_tps"] - 1 / med["free"]["decode_tps"])
        results.append({"concurrency": c, "median": med, "decode_ratio": ratio,
                        "generated_ratio": med["json"]["generated_tps"] / med["free"]["generated_tps"],
                        "mask_ms_per_token": mask_ms, "runs": runs})

    print()
    print("| concurrency | mode | generated tokens | decode tok/s | generated tok/s | json / free (decode) "
          "| mask cost per token (derived) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        m = r["median"]
        for mode in modes:
            ratio = f"{r['decode_ratio']:.2f}x" if mode == "json" else ""
            mask = f"{r['mask_ms_per_token']:.3f} ms" if mode == "json" else ""
            print(f"| {r['concurrency']} | {mode} | {m[mode]['generated_tokens']:.0f} | {m[mode]['decode_tps']:.1f} "
                  f"| {m[mode]['generated_tps']:.1f} | {ratio} | {mask} |")
    print()
    for r in results:
        verdict = "met" if r["decode_ratio"] >= 0.9 else "NOT met"
        print(f"concurrency {r['concurrency']}: json / free decode {r['decode_ratio']:.2f}x "
              f"(generated tok/s {r['generated_ratio']:.2f}x): target >= 0.90x {verdict}")
    print(f"mask cost per token = 1/json decode tok/s - 1/free decode tok/s (ferrolm._core has no mask timer); "
          f"schema compile {1e3 * compile_s:.2f} ms per request, factory {1e3 * factory_s:.0f} ms once per model")
    stats = engine.stats()
    engine.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": engine.model_path, "args": vars(args), "schema": schema,
                       "factory_s": factory_s, "compile_s": compile_s, "submit_s": {"free": free_submit,
                                                                                     "json": json_submit},
                       "levels": results, "stats": stats}, f, indent=2)


if __name__ == "__main__":
    main()
