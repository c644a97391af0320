"""The ``ferrolm`` command: generate, chat, serve, info, pull.

Every command that takes a model accepts a directory, a ``.gguf`` file or a
short name (default ``smollm2``, pulled on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ferrolm import hub

_EPILOG = """examples:
  ferrolm generate "The capital of France is"
  ferrolm chat --system "You are terse."
  ferrolm serve smollm2 --port 8000
  ferrolm info smollm2
  ferrolm pull smollm2
"""


DTYPE_HELP = ("on a GPU: bfloat16 (default), float16 (GPUs without bf16) or float32 (exact); on the CPU: "
              "unset keeps the weights as stored (quantized blocks or halves), float32 is the exact path")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults as in SamplingConfig)")
    g.add_argument("--max-tokens", type=int, default=256, help="most new tokens (default: 256)")
    g.add_argument("--temperature", type=float, help="0 = greedy (default: 0.6)")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens, 0 = off (default: 20)")
    g.add_argument("--top-p", type=float, help="nucleus probability mass (default: 0.95)")
    g.add_argument("--min-p", type=float, help="drop tokens below min_p x the best (default: 0.05)")
    g.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeats (default: 1.1)")
    g.add_argument("--seed", type=int, help="fix the random draws")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--think", action="store_true", help="let reasoning models think first (reasoning_mode=1)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=hub.DEFAULT_MODEL,
                   help=f"directory, .gguf file or short name (default: {hub.DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or a GPU index")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help=DTYPE_HELP)
    p.add_argument("--system", help="system prompt")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferrolm", description="Run LLMs with ferrolm.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ferrolm {_version()}")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU worker threads (default: FERROLM_NUM_THREADS, else the physical cores)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="answer one prompt, streaming the text")
    g.add_argument("prompt", help="the prompt text")
    g.add_argument("--raw", action="store_true", help="continue the text as is (no chat template)")
    _model_args(g)
    _sampling_args(g)

    c = sub.add_parser("chat", help="interactive multi-turn chat (/reset, /exit)")
    _model_args(c)
    _sampling_args(c)

    _serve_args(sub)
    _eval_args(sub)

    i = sub.add_parser("info", help="describe a model")
    i.add_argument("model", nargs="?", default=hub.DEFAULT_MODEL, help="directory, .gguf file or short name")

    p = sub.add_parser("pull", help="download a known model into the cache")
    p.add_argument("name", choices=sorted(hub.KNOWN_MODELS), help="short name")
    return parser


_SERVE_EPILOG = """endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models,
POST /generate, GET /status/{id}, GET /health, GET /metrics (Prometheus).

examples:
  ferrolm serve smollm2
  ferrolm serve ./SmolLM2-135M-Instruct.Q4_1.gguf --port 9000 --api-key secret
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 32}'

needs the server extra: pip install 'ferrolm[server]'
"""


def _serve_args(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs ferrolm[server])",
                       description="Serve a model over HTTP with an OpenAI-compatible API.",
                       epilog=_SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", nargs="?", default=hub.DEFAULT_MODEL,
                   help=f"directory, .gguf file or short name (default: {hub.DEFAULT_MODEL})")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    s.add_argument("--api-key", default=os.environ.get("FERROLM_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1, /generate and /status "
                        "(default: $FERROLM_API_KEY; unset = no key)")
    s.add_argument("--served-model-name", help="the model id clients use (default: MODEL's basename without .gguf)")
    s.add_argument("--max-request-bytes", type=int,
                   help="larger request bodies get a 413 before they are read (default: 32 MiB)")
    s.add_argument("--shutdown-timeout", type=float, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, new requests get a 503 and those in flight get this long to finish "
                        "before they are ended with an error (default: 30)")
    s.add_argument("--config", metavar="FILE",
                   help="an inference config file (JSON: inference.device/dtype/max_batch_size, "
                        "kv_cache.page_size/num_pages, sampling defaults); an option also set there is an error")
    s.add_argument("--device", help="cpu (default), cuda[:N] or a GPU index")
    s.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help=DTYPE_HELP)
    e = s.add_argument_group("engine")
    e.add_argument("--max-seq-len", type=int, help="longest sequence, prompt + output (default: the model's context)")
    e.add_argument("--max-num-seqs", type=int, help="most requests decoding at once (default: 64)")
    e.add_argument("--max-batch-tokens", type=int,
                   help="most tokens per forward pass; longer prompts are chunked (default: 512)")
    e.add_argument("--num-pages", type=int, help="KV cache pages of 16 tokens (default: 2 GiB worth)")
    e.add_argument("--max-waiting", type=int, metavar="N",
                   help="most requests queued and not yet running; past it a request gets a 429 with "
                        "Retry-After at once (default: no limit)")
    e.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false", default=None,
                   help="do not share KV pages of common prompt prefixes")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: info)")


_PERPLEXITY_EPILOG = """The text is cut into consecutive windows of --context tokens; each starts
with an empty cache and every token after its first is scored.

examples:
  ferrolm perplexity smollm2 tests/fixtures/text/sample.txt
  ferrolm perplexity ./model.gguf book.txt --context 1024 --max-tokens 8192
"""

_BENCH_EPILOG = """Prefill: a fixed prompt in one forward pass. Decode: greedy, one token per
forward pass from the KV cache, end of sequence ignored. Medians over --runs
in this process, measured as benchmarks/cpu_bench.py measures ferrolm; peak
RSS is the process's (model loading included).

examples:
  ferrolm bench smollm2
  RAYON_NUM_THREADS=2 ferrolm bench ./model.gguf --prompt-tokens 512 --gen-tokens 64 --runs 5
"""


def _eval_args(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a model on a text file",
                       description="Perplexity of MODEL on the UTF-8 text in FILE.",
                       epilog=_PERPLEXITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="directory, .gguf file or short name (e.g. smollm2)")
    p.add_argument("file", help="UTF-8 text file to score")
    p.add_argument("--context", type=int, default=512, help="tokens per window, at least 2 (default: 512)")
    p.add_argument("--max-tokens", type=int, help="score only the first N tokens of the text (default: all)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or a GPU index")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help=DTYPE_HELP)
    p.add_argument("--quantize", choices=["q8_0", "q4_k", "fp8"],
                   help="quantize the weights at load (q8_0, q4_k: CPU; fp8: FP8 E4M3 linear layers)")

    b = sub.add_parser("bench", help="prefill and decode speed, peak memory",
                       description="Prefill tokens/s, decode tokens/s and peak RSS of MODEL.",
                       epilog=_BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("model", nargs="?", default=hub.DEFAULT_MODEL,
                   help=f"directory, .gguf file or short name (default: {hub.DEFAULT_MODEL})")
    b.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for prefill (default: 128)")
    b.add_argument("--gen-tokens", type=int, default=128, help="tokens generated for decode (default: 128)")
    b.add_argument("--runs", type=int, default=3, help="runs; medians are printed (default: 3)")
    b.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or a GPU index")
    b.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help=DTYPE_HELP)
    b.add_argument("--quantize", choices=["q8_0", "q4_k", "fp8"],
                   help="quantize the weights at load (q8_0, q4_k: CPU; fp8: FP8 E4M3 linear layers)")


def _version() -> str:
    from ferrolm import __version__

    return __version__


def _config(args: argparse.Namespace):
    from ferrolm.sampling import SamplingConfig

    given = {
        "max_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "min_p": args.min_p, "repetition_penalty": args.repetition_penalty,
        "seed": args.seed, "stop": args.stop, "reasoning_mode": 1 if args.think else 0,
    }
    return SamplingConfig(**{k: v for k, v in given.items() if v is not None})


def _session(args: argparse.Namespace):
    from ferrolm.session import InferenceSession

    return _load(lambda: InferenceSession(hub.resolve(args.model), device=args.device, dtype=args.dtype), args.model)


def _load(make, name):
    """Runs ``make``, showing a loading line on a terminal (nothing otherwise)."""
    if not sys.stderr.isatty():
        return make()
    sys.stderr.write(f"loading {name} ...")
    sys.stderr.flush()
    try:
        return make()
    finally:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _stream(pieces) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_generate(args: argparse.Namespace) -> None:
    config = _config(args)
    with _session(args) as session:
        if args.raw:
            _stream(session.complete(args.prompt, config, stream=True))
        else:
            _stream(session.generate(args.prompt, config, system_prompt=args.system, stream=True))


def cmd_chat(args: argparse.Namespace) -> None:
    config = _config(args)
    interactive = sys.stdin.isatty()
    with _session(args) as session:
        if args.system:
            session.set_system_prompt(args.system)
        if interactive:
            print("Chatting with ferrolm. /reset starts over, /exit quits.", file=sys.stderr)
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                break
            text = line.strip()
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                session.reset_conversation()
                print("(conversation reset)", file=sys.stderr)
                continue
            if text:
                _stream(session.generate(text, config, stream=True))


def cmd_serve(args: argparse.Namespace) -> None:
    try:  # lazily: the other commands must work without the server extra
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401

        from ferrolm.server.launch import serve
    except ImportError as e:
        raise RuntimeError(f"the server needs extra packages ({e.name or e}): pip install 'ferrolm[server]'") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    engine_args = {k: getattr(args, k) for k in ("device", "dtype", "max_seq_len", "max_num_seqs",
                                                 "max_batch_tokens", "num_pages", "prefix_caching", "max_waiting")}
    serve(args.model, host=args.host, port=args.port, api_key=args.api_key,
          served_model_name=args.served_model_name, log_level=args.log_level, config=args.config,
          max_request_bytes=args.max_request_bytes, shutdown_timeout=args.shutdown_timeout,
          **{k: v for k, v in engine_args.items() if v is not None})


def cmd_info(args: argparse.Namespace) -> None:
    from ferrolm.session import InferenceSession

    with _load(lambda: InferenceSession(hub.resolve(args.model)), args.model) as session:
        print(json.dumps(session.get_model_info(), indent=2))


def cmd_pull(args: argparse.Namespace) -> None:
    print(hub.pull(args.name))


def _bad_input(e: Exception) -> SystemExit:
    """Bad arguments or input files: one line on stderr and exit status 2, as argparse does."""
    print(f"ferrolm: error: {e}", file=sys.stderr)
    return SystemExit(2)


def cmd_perplexity(args: argparse.Namespace) -> None:
    from ferrolm.evaluate import perplexity

    try:
        r = perplexity(args.model, file=args.file, context=args.context, max_tokens=args.max_tokens,
                       device=args.device, dtype=args.dtype, quantize=args.quantize)
    except (FileNotFoundError, ValueError) as e:
        raise _bad_input(e) from None
    print(f"perplexity:    {r.perplexity:.4f}")
    print(f"mean NLL:      {r.mean_nll:.4f} nats/token")
    print(f"tokens scored: {r.tokens}")
    print(f"windows:       {r.windows} (context {args.context})")
    print(f"seconds:       {r.seconds:.2f}")
    print(f"tokens/s:      {r.tokens_per_second:.1f}")


def cmd_bench(args: argparse.Namespace) -> None:
    from ferrolm.evaluate import bench

    try:
        r = bench(args.model, args.prompt_tokens, args.gen_tokens, args.runs, device=args.device, dtype=args.dtype,
                  quantize=args.quantize)
    except (FileNotFoundError, ValueError) as e:
        raise _bad_input(e) from None
    runs = f"median of {r.runs}" if r.runs > 1 else "1 run"
    print(f"prefill:  {r.prefill_tps:.1f} tokens/s ({r.prompt_tokens}-token prompt, {runs})")
    print(f"decode:   {r.decode_tps:.1f} tokens/s ({r.gen_tokens} tokens, {runs})")
    print(f"peak RSS: {r.peak_rss / 2**20:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        os.environ["FERROLM_NUM_THREADS"] = str(args.threads)  # read by the core when a model loads
    commands = {"generate": cmd_generate, "chat": cmd_chat, "serve": cmd_serve, "info": cmd_info,
                "pull": cmd_pull, "perplexity": cmd_perplexity, "bench": cmd_bench}
    try:
        commands[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"ferrolm: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
