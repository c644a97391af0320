"""The core's import graph: no cycles, and every arrow points down the layers.

    python scripts/check_layers.py            # exit 1 on a cycle or an upward import
    python scripts/check_layers.py --graph    # also print each file's imports
    python scripts/check_layers.py --src DIR  # another crate's src (tests use this)

Reads `crates/ferrolm-core/src` as text: every `use` tree and every inline
`crate::`/`super::`/`self::` path outside comments, strings and test code
(`#[cfg(test)]` modules) is resolved to the file that defines the item,
following `pub use` re-exports (a module that re-exports an item is a facade,
not a dependency). Two checks:

- files: the graph of file -> file imports has no cycle;
- layers: a file in top-level module A imports from module B only if B sits
  at A's layer or below in `LAYERS`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "crates" / "ferrolm-core" / "src"

# Bottom first. A module may import from its own layer's modules and from
# any layer below it, never from above. `error` is everyone's.
LAYERS = [
    ["error"],
    ["formats"],  # tensor formats: ggml blocks, FP8, StoredTensor
    ["config"],  # typed Config from config.json; the family registry
    ["weights"],  # checkpoint readers (safetensors, GGUF) and tensor names
    ["tokenizer", "stop"],  # HF and GGUF vocabularies, chat templates, stop strings
    ["backend"],  # trait Backend, cpu, cuda
    ["kv"],  # pages, block tables, prefix cache
    ["model"],  # the decoder over a backend and a KV cache; loading a checkpoint
    ["sampling"],
    ["tools"],  # OpenAI tool calling: formats, prompts, forcing grammars, reply parsers
    ["engine"],
    ["generate", "session", "eval", "inference_config", "fuzzing"],  # fuzzing: the fuzz targets' bodies
    ["lib"],
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}


class Module:
    def __init__(self, path: tuple[str, ...], file: Path):
        self.path = path  # ("kv", "cache"); () is the crate root
        self.file = file
        self.children: dict[str, Module] = {}
        self.text = ""  # code only: no comments, strings or test modules
        self.reexports: dict[str, tuple[str, ...]] = {}  # name -> path it stands for
        self.glob_reexports: list[tuple[str, ...]] = []
        self.is_test = False

    @property
    def name(self) -> str:
        return "::".join(self.path) or "lib"


def strip(code: str) -> str:
    """Blanks out comments, string and char literals (keeping line breaks)."""
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
        elif code.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if code.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif code.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if code[i] == "\n" else "")
                    i += 1
        elif c == "r" and re.match(r'r#*"', code[i:]) and not (i and (code[i - 1].isalnum() or code[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", code[i:]).group(1)
            end = code.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append('""' + "\n" * code.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and code[j] != '"':
                j += 2 if code[j] == "\\" else 1
            out.append('""' + "\n" * code.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", code[i:]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", code[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(code: str) -> tuple[str, set[str]]:
    """Removes inline `#[cfg(test)] mod x { ... }` and returns the names of
    `#[cfg(test)] mod x;` declared in files of their own."""
    test_files = set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code))
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", code)
        if not m:
            return code, test_files
        depth, j = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        code = code[: m.start()] + "\n" * code.count("\n", m.start(), j) + code[j:]


def inline_supers(code: str) -> str:
    """Inside an inline `mod x { ... }` block, `super` is the file's own
    module: rewritten to `self` so that paths resolve from the file."""
    out, pos = [], 0
    for m in re.finditer(r"\bmod\s+\$?\w+\s*\{", code):
        if m.start() < pos:
            continue
        depth, j = 1, m.end()
        while depth and j < len(code):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        out.append(code[pos : m.end()])
        out.append(re.sub(r"\bsuper::", "self::", code[m.end() : j]))
        pos = j
    out.append(code[pos:])
    return "".join(out)


def load_tree(src: Path) -> dict[tuple[str, ...], Module]:
    modules: dict[tuple[str, ...], Module] = {}
    for file in sorted(src.rglob("*.rs")):
        rel = file.relative_to(src).with_suffix("")
        parts = tuple(rel.parts)
        if parts[-1] in ("mod", "lib"):
            parts = parts[:-1]
        modules[parts] = Module(parts, file)
    for path, mod in modules.items():
        if path:
            modules[path[:-1]].children[path[-1]] = mod
    for mod in modules.values():
        text, test_children = drop_test_modules(strip(mod.file.read_text()))
        mod.text = inline_supers(text)
        for child in test_children:
            if child in mod.children:
                mark_test(mod.children[child])
    return modules


def mark_test(mod: Module) -> None:
    mod.is_test = True
    for child in mod.children.values():
        mark_test(child)


def use_trees(text: str) -> list[tuple[bool, str]]:
    """(is `pub use`, tree text) for each use declaration."""
    return [
        (bool(m.group(1)), re.sub(r"\s*([:{},])\s*", r"\1", re.sub(r"\s+", " ", m.group(2).strip())))
        for m in re.finditer(r"(?:^|[;{}\s])(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text)
    ]


def expand(tree: str, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """`a::{b,c::{d,e}}` -> [(a,b), (a,c,d), (a,c,e)]; `x as y` keeps x."""
    tree = tree.strip(":")
    if not tree:
        return [prefix]
    brace = tree.find("{")
    if brace < 0:
        return [prefix + tuple(p for p in tree.split(" as ")[0].split("::") if p)]
    head = tuple(p for p in tree[:brace].split("::") if p)
    inner, parts, depth, start = tree[brace + 1 : tree.rfind("}")], [], 0, 0
    for i, c in enumerate(inner):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p for part in parts if part for p in expand(part, prefix + head)]


def register_reexports(modules: dict[tuple[str, ...], Module]) -> None:
    for mod in modules.values():
        for is_pub, tree in use_trees(mod.text):
            if not is_pub:
                continue
            for path in expand(tree):
                if path[-1] == "*":
                    mod.glob_reexports.append(path[:-1])
                elif path[-1] != "self":
                    mod.reexports[path[-1]] = path
                else:
                    mod.reexports[path[-2]] = path[:-1]


def start_of(mod: Module, path: tuple[str, ...], modules) -> tuple[Module, tuple[str, ...]] | None:
    """Where a path starts: the crate root, a parent, this module or a child."""
    head = path[0]
    if head == "crate":
        return modules[()], path[1:]
    if head == "self":
        return mod, path[1:]
    if head == "super":
        base = mod.path
        while path and path[0] == "super":
            base, path = base[:-1], path[1:]
        return modules[base], path
    if head in mod.children:
        return mod, path
    return None  # an external crate or a local name


def resolve(mod: Module, path: tuple[str, ...], modules, seen=None) -> Module | None:
    """The module whose file defines what `path` (used in `mod`) names."""
    start = start_of(mod, path, modules)
    if start is None:
        return None
    here, rest = start
    seen = seen or set()
    while rest:
        name = rest[0]
        if name in here.children:
            here, rest = here.children[name], rest[1:]
            continue
        key = (here.path, name)
        if name in here.reexports and key not in seen:
            seen.add(key)
            target = resolve(here, here.reexports[name] + rest[1:], modules, seen)
            return target or here
        for glob in here.glob_reexports:
            base = resolve(here, glob, modules, seen)
            if base is not None and base is not here and (name in base.children or defines(base, name)):
                return resolve(base, ("self", *rest), modules, seen)
        return here
    return here


def defines(mod: Module, name: str) -> bool:
    pattern = rf"\b(?:fn|struct|enum|trait|type|const|static|union|mod|macro_rules!)\s+{re.escape(name)}\b"
    return bool(re.search(pattern, mod.text)) or name in mod.reexports


def imports(mod: Module, modules) -> set[Module]:
    targets: set[Module] = set()
    for is_pub, tree in use_trees(mod.text):
        for path in expand(tree):
            path = tuple(p for p in path if p != "*")
            own = path[1:] if path[:1] == ("self",) else path
            if not path or (is_pub and own and own[0] in mod.children):
                continue  # a facade re-exporting its own child
            if path[-1] == "self":
                path = path[:-1]
            target = resolve(mod, path, modules) if path else None
            if target is not None:
                targets.add(target)
    code = re.sub(r"\buse\s+[^;]+;", "", mod.text)  # inline paths only: uses were read above
    heads = "|".join(["crate", "super", "self", *map(re.escape, mod.children)])
    for m in re.finditer(rf"(?<!::)\b(?:{heads})(?:::\w+)+", code):
        if code[m.end() : m.end() + 1] == "!":
            continue  # an exported macro: named at the crate root, defined elsewhere
        target = resolve(mod, tuple(m.group(0).split("::")), modules)
        if target is not None:
            targets.add(target)
    targets.discard(mod)
    return {t for t in targets if not t.is_test}


def cycles(graph: dict[Module, set[Module]]) -> list[list[Module]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index: dict[Module, int] = {}
    low: dict[Module, int] = {}
    stack: list[Module] = []
    on_stack: set[Module] = set()
    found: list[list[Module]] = []

    def visit(v: Module) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w is v:
                    break
            if len(component) > 1:
                found.append(sorted(component, key=lambda m: m.name))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def layer(mod: Module) -> str:
    return mod.path[0] if mod.path else "lib"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print each file's imports")
    parser.add_argument("--src", type=Path, default=SRC, help="the crate's src folder (default: ferrolm-core's)")
    args = parser.parse_args()
    modules = load_tree(args.src)
    register_reexports(modules)
    graph = {m: imports(m, modules) for m in modules.values() if not m.is_test}
    problems = []
    for mod in graph:
        if layer(mod) not in RANK:
            problems.append(f"{mod.name}: top-level module not in LAYERS (scripts/check_layers.py)")
    for component in cycles(graph):
        names = {m.name for m in component}
        edges = [
            f"{a.name} -> {b.name}"
            for a in component
            for b in sorted(graph[a], key=lambda m: m.name)
            if b.name in names
        ]
        problems.append(f"import cycle among {len(component)} files:\n    " + "\n    ".join(edges))
    for mod, targets in graph.items():
        for t in targets:
            a, b = RANK.get(layer(mod)), RANK.get(layer(t))
            if a is not None and b is not None and b > a:
                problems.append(f"upward import: {mod.name} ({layer(mod)}) uses {t.name} ({layer(t)})")
    if args.graph:
        for mod in sorted(graph, key=lambda m: m.name):
            print(f"{mod.name}: {', '.join(sorted(t.name for t in graph[mod]))}")
    for p in problems:
        print(p)
    print(f"{len(graph)} files, {sum(map(len, graph.values()))} imports, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
