"""scripts/check_layers.py, the CI check that keeps the core's imports acyclic
and pointing down its layers: it passes on the core and fails on a tree
with a cycle or an upward import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py"


def check(src: Path | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(SCRIPT)] + ([] if src is None else ["--src", str(src)])
    return subprocess.run(args, capture_output=True, text=True)


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_core_has_no_cycle_and_no_upward_import():
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problems" in result.stdout


def test_a_cycle_between_two_files_fails(tmp_path):
    src = tree(tmp_path, {
        "lib.rs": "pub mod kv;\n",
        "kv/mod.rs": "mod cache;\nmod tables;\npub use cache::KvCache;\n",
        "kv/cache.rs": "use super::tables::Tables;\npub struct KvCache;\n",
        "kv/tables.rs": "use super::cache::KvCache;\npub struct Tables;\n",
    })
    result = check(src)
    assert result.returncode == 1
    assert "import cycle among 2 files" in result.stdout
    assert "kv::cache -> kv::tables" in result.stdout and "kv::tables -> kv::cache" in result.stdout


def test_an_upward_import_fails_and_a_facade_reexport_does_not(tmp_path):
    src = tree(tmp_path, {
        "lib.rs": "pub mod config;\npub mod model;\npub use model::Transformer;\n",
        "model/mod.rs": "pub struct Transformer;\n",
        "config/mod.rs": "pub struct Config;\nfn f(_: crate::model::Transformer) {}\n",
    })
    result = check(src)
    assert result.returncode == 1
    assert "upward import: config (config) uses model (model)" in result.stdout
    assert "cycle" not in result.stdout  # lib's `pub use` is a facade, not a dependency


def test_test_modules_may_import_anything(tmp_path):
    src = tree(tmp_path, {
        "lib.rs": "pub mod config;\npub mod model;\n",
        "model/mod.rs": "pub struct Transformer;\n",
        "config/mod.rs": "pub struct Config;\n#[cfg(test)]\nmod tests {\n    use crate::model::Transformer;\n}\n",
    })
    assert check(src).returncode == 0
