"""Seed inputs for the fuzz targets, made from the repo's own test fixtures.

    python fuzz/make_seeds.py fuzz/seeds     # then fuzz from fuzz/seeds/<target>/

Writes one directory per target. The committed corpora in ``fuzz/corpus/``
are these seeds plus what fuzzing found, minimised with ``-merge=1`` (see
README.md). Big fixtures are left out or cut down: libFuzzer mutates every
byte of an input alike, so a seed that is mostly tensor data spends its
mutations where no parser looks.
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


def put(out: Path, target: str, data: bytes, name: str) -> None:
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    (d / f"{name}-{digest}").write_bytes(data)


def small_safetensors(path: Path, budget: int = 4096) -> bytes:
    """The file's header (dtypes, shapes, metadata) kept for the tensors
    that fit in ``budget`` bytes of data, with their data: a valid file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    kept, body = {}, b""
    if "__metadata__" in header:
        kept["__metadata__"] = header.pop("__metadata__")
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        if len(body) + end - start > budget:
            continue
        kept[name] = dict(info, data_offsets=[len(body), len(body) + end - start])
        body += data[start:end]
    text = json.dumps(kept).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def main(out: Path) -> None:
    # GGUF models: one of each architecture and tensor type family (the f32
    # and f16 files are the same models, mostly bigger tensor data).
    for name in ["quants", "llama_q4_0", "qwen3_q4_1", "qwen2_q8_0", "llama3_rope_bf16"]:
        put(out, "gguf", (FIX / "gguf" / f"{name}.gguf").read_bytes(), name)
    # GGUF vocabularies: every tokenizer kind the fixtures have.
    for path in sorted((FIX / "tokenizers" / "gguf").glob("*.gguf")):
        put(out, "gguf_vocab", path.read_bytes(), path.stem)
    # One model GGUF with the fixtures' minimal gpt2 vocabulary.
    put(out, "gguf_vocab", (FIX / "gguf" / "llama_q4_0.gguf").read_bytes(), "llama_q4_0")

    for path in sorted((FIX / "models").glob("*/*.safetensors")):
        if path.name != "reference.safetensors":
            put(out, "safetensors", small_safetensors(path), path.parent.name)
    put(out, "safetensors", small_safetensors(FIX / "quantize" / "fp8_e4m3.safetensors"), "fp8")

    for path in sorted((FIX / "models").glob("*/config.json")):
        put(out, "config_json", path.read_bytes(), path.parent.name)

    # tokenizer.json: the GGUF fixtures' HF twins (smollm2's 3.4 MB vocabulary is left out).
    for path in sorted((FIX / "tokenizers" / "gguf").glob("*.tokenizer.json")):
        put(out, "tokenizer_json", path.read_bytes(), path.name.split(".")[0])

    templates = {}
    for name, entry in json.loads((FIX / "tokenizers" / "chat" / "templates.json").read_text()).items():
        templates[entry["source"]] = name
    for path in sorted((FIX / "tokenizers").glob("**/*.jinja")):
        templates.setdefault(path.read_text(), path.stem)
    for path in sorted(FIX.glob("**/tokenizer_config.json")):
        source = json.loads(path.read_text()).get("chat_template")
        if isinstance(source, str):
            templates.setdefault(source, path.parent.name)
    for source, name in templates.items():
        put(out, "chat_template", source.encode(), name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
