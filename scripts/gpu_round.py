"""The GPU round, ON the GPU machine, under one deadline: install the wheel, report the
environment, run tests/gpu, then benchmarks/gpu_bench.py. ``bash scripts/gpu-check run``
calls ``run``; ``bash scripts/gpu-check plan`` calls ``plan`` (anywhere: no GPU, no torch).

The budget (``GPU_CHECK_BUDGET``, default 480 s: one device command may run 10 minutes,
and a session has 15 minutes of device time, machine start included) is split up front:

    install       at most  45 s  (pip install --no-deps of .gpu/wheels/*.whl; .gpu/deps offline)
    environment   at most  30 s  (nvidia-smi, ferrolm/torch versions, NVRTC/cuBLAS paths)
    tests         at most 180 s  (GPU_CHECK_TEST_TIMEOUT; pytest-timeout stops a hung test)
    bench         what is left, less 10 s for the summary (at least 215 s with the defaults)

Each step runs in its own process group and is stopped at its limit (SIGINT, so
pytest still writes its report, then SIGKILL 10 s later); the benchmark gets
``--budget`` = its limit less 15 s, so it sizes its flags to fit and stops itself
first. After every step ``$OUT/gpu_round.json`` (every step's status, elapsed and
limit seconds, the test counts, the benchmark's phases and figures) and
``$OUT/summary.txt`` (which steps ran, failed, timed out or were cut) are
rewritten, so a failure or a timeout leaves them complete up to that point.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

INSTALL_S = 45.0
ENVIRONMENT_S = 30.0
TESTS_S = 180.0
MARGIN_S = 10.0  # kept back at the end for the summary
BENCH_MARGIN_S = 15.0  # the benchmark's own deadline comes this much before it is killed
BENCH_MIN_S = 60.0  # below this the benchmark is not started
PER_TEST_S = 90  # pytest-timeout's limit for one test, where it is installed
KILL_GRACE_S = 10.0


def round_plan(budget: float, tests_s: float = TESTS_S) -> list[dict]:
    """The steps and their limits: install, environment, tests, then the
    benchmark with what is left (the tests give way so it keeps BENCH_MIN_S)."""
    tests = max(0.0, min(tests_s, budget - INSTALL_S - ENVIRONMENT_S - MARGIN_S - BENCH_MIN_S))
    bench = max(0.0, budget - INSTALL_S - ENVIRONMENT_S - tests - MARGIN_S)
    return [{"name": "install", "limit_s": INSTALL_S}, {"name": "environment", "limit_s": ENVIRONMENT_S},
            {"name": "tests", "limit_s": tests}, {"name": "bench", "limit_s": bench},
            {"name": "summary", "limit_s": MARGIN_S}]


def load_bench():
    """benchmarks/gpu_bench.py as a module (it needs numpy alone to plan)."""
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_bench", module)
    spec.loader.exec_module(module)
    return module


class Round:
    """Runs steps under one deadline and keeps ``gpu_round.json`` and ``summary.txt`` current."""

    def __init__(self, out: Path, budget: float, plan: list[dict] | None = None,
                 clock: Callable[[], float] = time.monotonic, kill_grace_s: float = KILL_GRACE_S) -> None:
        self.out = out
        self.budget = budget
        self.clock = clock
        self.start = clock()
        self.kill_grace_s = kill_grace_s
        self.ok: set[str] = set()
        self.results: dict[str, Any] = {"budget_s": budget, "plan": plan or [], "steps": [],
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    # -- steps -------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[Callable[..., int], float], int], limit_s: float,
             needs: Sequence[str] = ()) -> str:
        """Runs ``fn(run, limit)``, where ``run(cmd, log=..., env=...)`` runs one
        command inside the step's limit and returns its exit status; ``fn``
        returns the step's. Records and saves the outcome; returns the status."""
        missing = [n for n in needs if n not in self.ok]
        limit = min(limit_s, self.left() - MARGIN_S)
        if missing:
            return self._record(name, "cut", limit_s, reason=f"needs {', '.join(missing)}")
        if limit <= 0:
            return self._record(name, "cut", limit_s, reason="no time left in the budget")
        deadline = self.clock() + limit
        timed_out: list[bool] = []

        def run(cmd: Sequence[str], log: Path | None = None, env: dict[str, str] | None = None) -> int:
            # The grace after the interrupt is inside the step's limit.
            rc, killed = run_command(cmd, deadline - self.clock() - self.kill_grace_s, log, env, self.kill_grace_s)
            if killed:
                timed_out.append(True)
            return rc

        t = self.clock()
        print(f"== {name} (limit {limit:.0f} s, {self.left():.0f} s left in the round)", flush=True)
        try:
            rc = fn(run, limit)
        except Exception as e:  # a broken step must not lose the round's record
            return self._record(name, "failed", limit, elapsed_s=self.clock() - t, reason=f"{type(e).__name__}: {e}")
        elapsed = self.clock() - t
        if timed_out:
            return self._record(name, "timeout", limit, elapsed_s=elapsed, rc=rc, reason="stopped at its limit")
        if rc != 0:
            return self._record(name, "failed", limit, elapsed_s=elapsed, rc=rc)
        self.ok.add(name)
        return self._record(name, "ok", limit, elapsed_s=elapsed, rc=0)

    def _record(self, name: str, status: str, limit_s: float, **extra: Any) -> str:
        entry: dict[str, Any] = {"name": name, "status": status, "limit_s": round(limit_s, 1)}
        entry.update({k: (round(v, 1) if isinstance(v, float) else v) for k, v in extra.items()})
        self.results["steps"].append(entry)
        took = f"{entry['elapsed_s']:.0f} s" if "elapsed_s" in entry else "not run"
        why = f" ({entry['reason']})" if "reason" in entry else ""
        print(f"[{name}: {status}, {took} of {entry['limit_s']:.0f} s{why}]", flush=True)
        self.save()
        return status

    # -- the record --------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        r = self.results
        lines = [f"GPU round: {self.elapsed():.0f} s of a {self.budget:.0f} s budget"]
        for s in r["steps"]:
            took = f"{s['elapsed_s']:5.0f} s" if "elapsed_s" in s else "    - "
            line = f"  {s['name']:<12} {s['status']:<8} {took} (limit {s['limit_s']:.0f} s)"
            if s["name"] == "tests" and "tests" in r:
                t = r["tests"]
                line += (f": {t['tests']} tests, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped"
                         if "tests" in t else f": {t.get('note', '')}")
            if "reason" in s:
                line += f" [{s['reason']}]"
            lines.append(line)
        bench = r.get("bench")
        if bench and bench.get("summary"):
            counts = ", ".join(f"{k} {len(v)}" for k, v in bench["summary"].items())
            lines.append(f"  bench phases: {counts}")
            for status in ("failed", "timeout", "cut", "skipped"):
                if status in bench["summary"]:
                    lines.append(f"    {status}: {', '.join(bench['summary'][status])}")
        elif bench and bench.get("phases"):
            done = ", ".join(f"{p['name']} {p['status']}" for p in bench["phases"])
            lines.append(f"  bench phases so far: {done}")
        lines += [f"  note: {note}" for note in r.get("notes", [])]
        steps = {s["name"]: s["status"] for s in r["steps"]}
        ran = [n for n, st in steps.items() if st in ("ok", "failed", "timeout")]
        cut = [n for n, st in steps.items() if st == "cut"]
        pending = [p["name"] for p in r["plan"] if p["name"] not in steps and p["name"] != "summary"]
        lines.append(f"ran: {', '.join(ran) or '-'} | cut: {', '.join(cut + pending) or '-'}"
                     + (f" | not ok: {', '.join(n for n, st in steps.items() if st in ('failed', 'timeout'))}"
                        if any(st in ("failed", "timeout") for st in steps.values()) else ""))
        return lines

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        self.results["ok"] = bool(self.results["steps"]) and all(s["status"] == "ok" for s in self.results["steps"])
        tmp = self.out / "gpu_round.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(self.out / "gpu_round.json")
        (self.out / "summary.txt").write_text("\n".join(self.summary_lines()) + "\n")


def run_command(cmd: Sequence[str], timeout: float, log: Path | None = None, env: dict[str, str] | None = None,
                kill_grace_s: float = KILL_GRACE_S) -> tuple[int, bool]:
    """Runs ``cmd`` in its own process group, its output to our stdout (and
    appended to ``log``); past ``timeout`` s the group gets SIGINT (pytest then
    still writes its report, gpu_bench its JSON), ``kill_grace_s`` later
    SIGKILL. Returns (exit status, whether it was stopped)."""
    if timeout <= 0:
        return 124, True
    print("$ " + " ".join("<script>" if "\n" in str(c) else shlex.quote(str(c)) for c in cmd), flush=True)
    sink = open(log, "a", encoding="utf-8") if log else None
    try:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True)
    except OSError as e:
        print(f"cannot run {cmd[0]}: {e}", flush=True)
        if sink:
            sink.write(f"cannot run {cmd[0]}: {e}\n")
            sink.close()
        return 127, False

    def copy() -> None:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            if sink:
                sink.write(line)
                sink.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    killed = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        killed = True
        print(f"\n-- stopped at its limit ({timeout:.0f} s): SIGINT", flush=True)
        _signal_group(proc, signal.SIGINT)
        try:
            proc.wait(timeout=kill_grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    _signal_group(proc, signal.SIGKILL)  # whatever it left running in its group
    reader.join(timeout=5)
    if sink:
        sink.close()
    return (124 if killed else proc.returncode), killed


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- the steps of the round on the GPU machine -------------------------------------------


class Machine:
    """What the steps share: the Python to use, the environment, $OUT."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.py = os.environ.get("PYTHON", sys.executable)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.wheels = Path(os.environ.get("GPU_CHECK_WHEELS", ROOT / ".gpu" / "wheels"))
        self.notes: list[str] = []  # what the round's record should say beside the statuses

    def install(self, run: Callable[..., int], limit: float) -> int:
        rc = self.install_ferrolm(run, limit)
        if rc == 0 and self.install_deps(run, limit) != 0:
            self.notes.append("the test dependencies in .gpu/deps did not install: the tests importing them error")
            print(f"warning: {self.notes[-1]}")
        return rc

    def install_ferrolm(self, run: Callable[..., int], limit: float) -> int:
        wheels = sorted(self.wheels.glob("*.whl"))
        if not wheels:
            print(f"no wheel in {self.wheels}: run 'bash scripts/gpu-check build' here first and carry .gpu")
            return 1
        pip = ["-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall",
               "--disable-pip-version-check", *wheels]
        if run([self.py, *pip]) == 0:
            return 0
        print("system-wide install refused: using a venv with --system-site-packages", flush=True)
        venv = Path("/tmp/ferrolm-gpu-venv")
        if run([self.py, "-m", "venv", "--system-site-packages", venv]) != 0:
            return 1
        self.py = str(venv / "bin" / "python")
        return run([self.py, *pip])

    def install_deps(self, run: Callable[..., int], limit: float) -> int:
        """What the tests import and the machine lacks, from .gpu/deps (offline):
        pip keeps what is installed where it satisfies the pins."""
        deps = self.wheels.parent / "deps"
        req = deps / "requirements.txt"
        if not req.is_file():
            print(f"no {req}: nothing to add (bash scripts/gpu-check build fetches it)")
            return 0
        return run([self.py, "-m", "pip", "install", "-q", "--no-index", "--find-links", deps,
                    "--disable-pip-version-check", *req.read_text().split()])

    def environment(self, run: Callable[..., int], limit: float) -> int:
        env_txt = self.out / "env.txt"
        env_txt.write_text("")
        dirs = cuda_lib_dirs()
        self.env["LD_LIBRARY_PATH"] = ":".join(dirs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
        with open(env_txt, "a") as f:
            f.write(f"LD_LIBRARY_PATH={self.env['LD_LIBRARY_PATH']}\n")
            for lib in ("libnvrtc", "libcublas", "libcuda"):
                hits = [h for d in [*dirs, "/usr/lib/x86_64-linux-gnu", "/usr/local/nvidia/lib64"]
                        for h in sorted(glob.glob(f"{d}/{lib}.so*"))][:3]
                f.write(f"  {lib}: {' '.join(hits) or 'not found in these folders'}\n")
        print(env_txt.read_text(), end="", flush=True)
        smi = run(["nvidia-smi"], log=env_txt)
        report = run([self.py, "-c", ENV_REPORT], log=env_txt, env=self.env)
        return report or smi

    def tests(self, run: Callable[..., int], limit: float) -> int:
        # One module that cannot import (a package missing there) must not stop the others.
        # -v: one line per test, so the log says how far a stopped run got.
        cmd = [self.py, "-m", "pytest", "-v", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider", "-rs",
               "--durations=10", "--continue-on-collection-errors", f"--junitxml={self.out / 'gpu-tests.xml'}"]
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd += [f"--timeout={PER_TEST_S}"]
        env = dict(self.env, FERROLM_REQUIRE_GPU="1")
        return run(cmd, log=self.out / "gpu-tests.log", env=env)

    def bench(self, run: Callable[..., int], limit: float) -> int:
        gguf = sorted((ROOT / ".gpu" / "models").glob("*.gguf"))
        cmd = [self.py, "benchmarks/gpu_bench.py", "--json", self.out / "gpu_bench.json",
               "--work-dir", "/tmp/ferrolm-gpu-bench", "--budget", f"{max(1.0, limit - BENCH_MARGIN_S):.0f}"]
        if gguf:
            cmd += ["--smollm2", gguf[0]]
        cmd += shlex.split(os.environ.get("GPU_BENCH_ARGS", ""))
        return run(cmd, log=self.out / "gpu_bench.log", env=self.env)


ENV_REPORT = r"""
import platform
import ferrolm
print("ferrolm", ferrolm.__version__, "from", ferrolm.__file__, "| python", platform.python_version())
ok = getattr(ferrolm, "cuda_available", None)
if ok is None:
    print("ferrolm.cuda_available is missing: this wheel has no CUDA backend")
    raise SystemExit(1)
print("cuda_available:", ok(), "| reason:", ferrolm.cuda_unavailable_reason())
try:
    import torch
    import transformers
    print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__)
except ImportError as e:
    print("torch/transformers:", e)
raise SystemExit(0 if ok() else 1)
"""


def cuda_lib_dirs() -> list[str]:
    """Folders with NVRTC/cuBLAS/cudart: the CUDA toolkit's and the nvidia/* wheels torch brings."""
    dirs = []
    for d in [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"))]:
        for sub in ("lib64", "targets/x86_64-linux/lib"):
            if d and os.path.isdir(os.path.join(d, sub)):
                dirs.append(os.path.join(d, sub))
    try:
        import nvidia

        for root in nvidia.__path__:
            for lib in glob.glob(os.path.join(root, "**", "lib*.so*"), recursive=True):
                if any(k in os.path.basename(lib) for k in ("nvrtc", "cublas", "cudart")):
                    dirs.append(os.path.dirname(lib))
    except ImportError:
        pass
    return list(dict.fromkeys(dirs))


def test_counts(xml: Path) -> dict[str, Any]:
    """tests/failures/errors/skipped/time from pytest's junit XML."""
    if not xml.is_file():
        return {"note": "no junit report (pytest stopped before writing it): see gpu-tests.log"}
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"note": "junit report without a testsuite"}
    out: dict[str, Any] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out["time_s"] = float(suite.get("time", 0))
    out["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                     if c.find("failure") is not None or c.find("error") is not None]
    return out


def run_round(what: str, out: Path, budget: float, tests_s: float) -> int:
    plan = round_plan(budget, tests_s)
    limits = {p["name"]: p["limit_s"] for p in plan}
    print("round plan: " + ", ".join(f"{p['name']} {'>=' if p['name'] == 'bench' else '<='}{p['limit_s']:.0f} s"
                                     for p in plan) + f" (budget {budget:.0f} s)", flush=True)
    r = Round(out, budget, plan)
    m = Machine(out)
    r.step("install", m.install, limits["install"])
    r.results["notes"] = m.notes
    r.step("environment", m.environment, limits["environment"])
    if what in ("all", "tests"):
        r.step("tests", m.tests, limits["tests"], needs=["install"])
        r.results["tests"] = test_counts(out / "gpu-tests.xml")
        r.save()
    if what in ("all", "bench"):
        # The benchmark has what is left, however long the tests took.
        bench_s = r.left() - MARGIN_S
        if bench_s < BENCH_MIN_S:
            r._record("bench", "cut", bench_s, reason=f"{bench_s:.0f} s left, under {BENCH_MIN_S:.0f} s")
        else:
            r.step("bench", m.bench, bench_s, needs=["install"])
        path = out / "gpu_bench.json"
        if path.is_file():
            bench = json.loads(path.read_text())
            r.results["bench"] = {k: bench.get(k) for k in ("gpu", "copy_bandwidth_bytes_s", "sized", "plan_total_s",
                                                            "phases", "summary", "models", "total_s")}
        r.save()
    print("\n" + "\n".join(r.summary_lines()), flush=True)
    return 0 if r.results["ok"] else 1


def show_plan(budget: float, tests_s: float) -> int:
    plan = round_plan(budget, tests_s)
    total = sum(p["limit_s"] for p in plan)
    print(f"GPU round plan: {total:.0f} s of a {budget:.0f} s budget (the device command's 10-minute limit"
          " and the session's 15 minutes of device time include the machine's start)")
    for p in plan:
        bound = "at least" if p["name"] == "bench" else "at most "
        print(f"  {p['name']:<12} {bound} {p['limit_s']:5.0f} s" + ("  (what the steps before it leave)"
                                                                  if p["name"] == "bench" else ""))
    bench_s = next(p["limit_s"] for p in plan if p["name"] == "bench")
    print(f"\nbenchmark at its guaranteed {bench_s:.0f} s (more if the steps before it end early), "
          f"--budget {bench_s - BENCH_MARGIN_S:.0f}:")
    rc = load_bench().main(["--dry-run", "--budget", f"{bench_s - BENCH_MARGIN_S:.0f}",
                            *shlex.split(os.environ.get("GPU_BENCH_ARGS", ""))])
    return 0 if total <= budget and rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["run", "plan"])
    ap.add_argument("what", nargs="?", default="all", choices=["all", "tests", "bench"])
    args = ap.parse_args(argv)
    budget = float(os.environ.get("GPU_CHECK_BUDGET", 480))
    tests_s = float(os.environ.get("GPU_CHECK_TEST_TIMEOUT", TESTS_S))
    if args.mode == "plan":
        return show_plan(budget, tests_s)
    out = Path(os.environ.get("OUT") or ROOT / ".gpu" / "out")
    return run_round(args.what, out, budget, tests_s)


if __name__ == "__main__":
    sys.exit(main())
