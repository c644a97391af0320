"""The GPU round's time plan and its records, checked without a GPU or torch.

``scripts/gpu_round.py`` (what ``bash scripts/gpu-check run`` runs on the GPU
machine) and ``benchmarks/gpu_bench.py`` must fit one device command of 8
minutes and leave a complete JSON and summary however a step ends. Nothing
here depends on the machine's speed: clocks are fakes where a decision
depends on time, and the one real timeout stops a command that never ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = load("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
gpu_round = load("gpu_round", ROOT / "scripts" / "gpu_round.py")

DEVICE_COMMAND_S = 8 * 60


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def required_phases(key: str) -> set[str]:
    """What the round must measure for a model: both engines' load, batch 1
    and each concurrency level, and the bandwidth floor."""
    names = {"bandwidth"}
    for side in ("ferrolm", "HF"):
        names |= {f"{key} {side} load", f"{key} {side} batch 1"}
        names |= {f"{key} {side} {c} requests" for c in (32, 64, 256)}
    return names


# -- the plan ----------------------------------------------------------------------------


def test_the_round_plan_fits_one_device_command():
    plan = gpu_round.round_plan(480)
    assert [p["name"] for p in plan] == ["install", "environment", "tests", "bench", "summary"]
    assert sum(p["limit_s"] for p in plan) <= DEVICE_COMMAND_S
    assert all(p["limit_s"] > 0 for p in plan)
    # Long tests give way to the benchmark's minimum; the budget is never exceeded.
    for budget, tests_s in ((480, 1000), (300, 180), (200, 180)):
        plan = gpu_round.round_plan(budget, tests_s)
        assert sum(p["limit_s"] for p in plan) <= budget
        assert next(p["limit_s"] for p in plan if p["name"] == "bench") >= gpu_round.BENCH_MIN_S


def test_the_benchmark_sized_to_its_guaranteed_time_measures_everything_asked():
    bench_s = next(p["limit_s"] for p in gpu_round.round_plan(480) if p["name"] == "bench")
    args = bench.parse_args(["--budget", str(bench_s - gpu_round.BENCH_MARGIN_S)])
    _, plan, _ = bench.size_to_budget(args, find=False)
    assert bench.plan_total(plan) <= args.budget
    assert required_phases("qwen3") <= {p["name"] for p in plan}
    assert args.levels == [32, 64, 256] and args.max_tokens == 64  # full-length runs kept
    # With more time (short tests), the second model is measured too, unshrunk.
    roomy = bench.parse_args(["--budget", "400"])
    _, plan, applied = bench.size_to_budget(roomy, find=False)
    assert applied == [] and required_phases("smollm2") <= {p["name"] for p in plan}


def test_a_small_budget_shrinks_the_flags_in_order():
    args = bench.parse_args(["--budget", "60"])
    _, plan, applied = bench.size_to_budget(args, find=False)
    assert applied == ["repeats 1", "first model only", "batch-1 tokens 64", "max tokens 32"]
    assert (args.repeats, args.model_list, args.batch1_tokens, args.max_tokens) == (1, ["qwen3"], 64, 32)
    # Still over: the phases past the budget are cut when their turn comes.
    assert bench.plan_total(plan) > 60
    no_budget = bench.parse_args([])
    _, _, applied = bench.size_to_budget(no_budget, find=False)
    assert applied == [] and no_budget.repeats == 2


def test_both_engines_get_the_same_prompts():
    a = bench.make_prompts(32, 64, 151936, 1032)
    assert a == bench.make_prompts(32, 64, 151936, 1032)
    assert all(32 <= len(p) <= 64 for p in a) and all(3 <= t < 151936 for p in a for t in p)


def test_the_dry_run_writes_the_plan_without_torch_or_a_gpu(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert bench.main(["--dry-run", "--budget", "200", "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["dry_run"] and plan["plan_total_s"] <= 200 and plan["phases"] == []
    assert "phases," in capsys.readouterr().out
    assert bench.main(["--dry-run", "--budget", "20", "--no-hf"]) == 1, "does not fit: says so"


# -- the benchmark's phases --------------------------------------------------------------


def test_phases_record_failures_cuts_and_save_after_each(tmp_path):
    clock = FakeClock()
    plan = [{"name": n, "estimate_s": e, "needs": needs} for n, e, needs in (
        ("a", 10, []), ("b", 10, []), ("c", 10, ["b"]), ("d", 100, []), ("e", 10, []))]
    results: dict = {}
    saves = []
    phases = bench.Phases(plan, results, lambda: saves.append(len(results["phases"])), budget_s=60, clock=clock)

    def takes(seconds):
        clock.now += seconds
        return "value"

    def breaks():
        clock.now += 5
        raise RuntimeError("out of memory")

    assert phases.run("a", lambda: takes(7)) == "value"
    assert phases.run("b", breaks) is None
    phases.run("c", lambda: takes(1))
    phases.run("d", lambda: takes(1))  # 100 s estimate, 48 s left
    clock.now += 100  # past the deadline
    phases.run("e", lambda: takes(1))
    got = {p["name"]: p for p in results["phases"]}
    assert [got[n]["status"] for n in "abcde"] == ["ok", "failed", "cut", "cut", "cut"]
    assert got["a"]["elapsed_s"] == 7 and got["b"]["elapsed_s"] == 5
    assert "RuntimeError: out of memory" in got["b"]["reason"]
    assert got["c"]["reason"] == "needs b" and "estimate 100" in got["d"]["reason"]
    assert got["e"]["reason"] == "past the deadline"
    assert saves == [1, 2, 3, 4, 5], "the JSON is rewritten after every phase"
    assert phases.summary() == {"ok": ["a"], "failed": ["b"], "cut": ["c", "d", "e"]}


def test_the_deadline_stops_a_phase_that_is_still_running():
    plan = [{"name": "endless", "estimate_s": 0, "needs": []}, {"name": "next", "estimate_s": 0, "needs": []}]
    results: dict = {}
    phases = bench.Phases(plan, results, lambda: None, budget_s=None)
    old = [(sig, signal.getsignal(sig)) for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT)]
    try:
        bench.arm_deadline(0.2)

        def endless():
            while True:  # never ends on its own: only the deadline stops it
                time.sleep(0.01)

        phases.run("endless", endless)
        phases.run("next", lambda: None)
    finally:
        bench.disarm_deadline()
        for sig, handler in old:
            signal.signal(sig, handler)
    assert [(p["name"], p["status"]) for p in results["phases"]] == [("endless", "timeout"), ("next", "cut")]


# -- the round ---------------------------------------------------------------------------


def test_a_round_keeps_its_record_when_steps_fail_time_out_or_are_cut(tmp_path):
    r = gpu_round.Round(tmp_path, budget=120, plan=gpu_round.round_plan(120), kill_grace_s=1)
    py = sys.executable
    assert r.step("install", lambda run, limit: run([py, "-c", "import sys; sys.exit(3)"]), 10) == "failed"
    assert r.step("tests", lambda run, limit: 0, 10, needs=["install"]) == "cut"
    endless = [py, "-c", "import time\nwhile True: time.sleep(1)"]
    log = tmp_path / "endless.log"
    assert r.step("bench", lambda run, limit: run(endless, log=log), 2) == "timeout"
    record = json.loads((tmp_path / "gpu_round.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert (steps["install"]["status"], steps["install"]["rc"]) == ("failed", 3)
    assert steps["tests"]["reason"] == "needs install" and "elapsed_s" not in steps["tests"]
    assert steps["bench"]["status"] == "timeout" and steps["bench"]["limit_s"] == 2
    assert record["ok"] is False
    summary = (tmp_path / "summary.txt").read_text()
    assert "ran: install, bench | cut: tests, environment" in summary
    assert "not ok: install, bench" in summary


def test_gpu_check_run_without_a_wheel_reports_and_fails(tmp_path):
    # The whole driver as the GPU machine runs it, up to its first failure.
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_CHECK_WHEELS=str(tmp_path / "none"),
               GPU_CHECK_BUDGET="300")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_round.py"), "run"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "out" / "gpu_round.json").read_text())
    statuses = {s["name"]: s["status"] for s in record["steps"]}
    assert statuses["install"] == "failed" and statuses["tests"] == "cut" and statuses["bench"] == "cut"
    assert "no wheel" in proc.stdout
    assert record["tests"]["note"].startswith("no junit report")
    assert "cut: tests, bench" in (tmp_path / "out" / "summary.txt").read_text()


def test_gpu_check_plan_fits():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), "plan"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU round plan: 480 s of a 480 s budget" in proc.stdout
