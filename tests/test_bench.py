"""`make bench` must keep running: the quick mode, shortened to about a second per scenario on a tiny setup, against a
stack of its own (a subprocess, not the session's stack). It checks that the benchmark runs and reports, never its
figures: this is not a timed test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.stack import REPO_ROOT

BENCH_TIMEOUT_SECONDS = 240


def test_quick_bench_runs_and_reports(tmp_path: Path) -> None:
    command = [
        *(sys.executable, "-m", "bench", "--quick", "--seconds-per-scenario", "1"),
        *("--fans", "40", "--creators", "4", "--results-dir", str(tmp_path), "--name", "smoke"),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT_SECONDS)
    assert done.returncode == 0, f"make bench failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    results = json.loads((tmp_path / "smoke.json").read_text())
    assert set(results) >= {"run", "baselines", "probes", "setup", "scenarios", "steps", "ratios", "goals"}
    assert set(results["baselines"]) == {"echo", "guarded_debit", "stream_echo"}
    scenarios = {"uniform", "hot_creator", "latency", "overload", "overload_recovery", "mixed", "capacity"}
    assert set(results["scenarios"]) == {*scenarios, "send_gifts"}
    assert results["capacity_probes"] and "meets" in results["scenarios"]["capacity"]
    assert {"send_gifts_per_echo", "send_gifts_per_stream_echo"} <= set(results["ratios"])
    for scenario in results["scenarios"].values():
        assert {"per_second", "latency_ms", "errors", "cpu_seconds_per_1000", "settlement_lag_ms"} <= set(scenario)
    assert results["money_identities"] == {"violations": [], "count": 0}
    for name in ("smoke.md", "smoke.png", "latest.json", "latest.md", "latest.png"):
        assert (tmp_path / name).stat().st_size > 0
