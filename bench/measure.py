"""Turning a run into figures: throughput and latency percentiles from the load generator's records, CPU seconds per
process from /proc, and settlement lag from the gifts and payouts databases."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.load import OK, Record, Run

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REFUSED = "RESOURCE_EXHAUSTED"
SETTLEMENT_TIMEOUT_SECONDS = 120.0


# -- latency and throughput ------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of the values at or below it."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(s * 1000 for s in seconds)
    return {
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else float("nan"),
    }


def summarize(records: list[Record], seconds: float, primary: str) -> dict[str, Any]:
    """Successful calls of the primary kind per second, latency of the accepted ones (from the scheduled moment),
    outcomes counted by status and ErrorInfo reason, and how fast refusals came back."""
    mine = [r for r in records if r[0] == primary]
    ok = [r for r in mine if r[4] == OK]
    refused = [r for r in mine if r[4].startswith(REFUSED)]
    summary: dict[str, Any] = {
        "seconds": seconds,
        "calls": len(mine),
        "ok": len(ok),
        "per_second": len(ok) / seconds if seconds > 0 else 0.0,
        "latency_ms": latency_ms([r[3] - r[1] for r in ok]),
        "errors": dict(Counter(r[4] for r in mine if r[4] != OK).most_common()),
        "refused_latency_ms": latency_ms([r[3] - r[1] for r in refused]) if refused else None,
        # How late the generator sent calls against its schedule: large values mean the generator, not the
        # system, was the bottleneck (open loop only; 0 in a closed loop).
        "send_lag_ms_p99": percentile(sorted((r[2] - r[1]) * 1000 for r in mine), 0.99) if mine else 0.0,
    }
    others = sorted({r[0] for r in records} - {primary})
    if others:
        summary["other_kinds"] = {kind: summarize_kind(records, kind, seconds) for kind in others}
    return summary


def summarize_kind(records: list[Record], kind: str, seconds: float) -> dict[str, Any]:
    mine = [r for r in records if r[0] == kind]
    ok = [r for r in mine if r[4] == OK]
    return {
        "calls": len(mine),
        "per_second": len(ok) / seconds if seconds > 0 else 0.0,
        "latency_ms": latency_ms([r[3] - r[1] for r in ok]),
        "errors": dict(Counter(r[4] for r in mine if r[4] != OK).most_common()),
    }


def summarize_phase(run: Run, label: str, primary: str) -> dict[str, Any]:
    """An open-loop phase: throughput is what completed successfully inside the phase's window; latency is that of
    the calls scheduled in it (wherever they ended), so a backlog is charged to the phase that caused it."""
    _, start, end, rate = next(p for p in run.phases if p[0] == label)
    scheduled_here = [r for r in run.records if start <= r[1] < end]
    summary = summarize(scheduled_here, end - start, primary)
    done_here = [r for r in run.records if r[0] == primary and r[4] == OK and start <= r[3] < end]
    summary["per_second"] = len(done_here) / (end - start)
    summary["offered_per_second"] = rate
    return summary


# -- CPU -------------------------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int, with_reaped_children: bool = False) -> float:
    """utime + stime from /proc/<pid>/stat (0 for a process that is gone); optionally plus its reaped children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may contain spaces and parentheses
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == parent:
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class ProcessGroup:
    """A named set of processes whose CPU is summed: PostgreSQL is its postmaster plus every backend."""

    name: str
    pid: int
    with_children: bool = False

    def cpu_seconds(self) -> float:
        if not self.with_children:
            return process_cpu_seconds(self.pid)
        # Backends that exited meanwhile are in the postmaster's reaped-children counters.
        return process_cpu_seconds(self.pid, with_reaped_children=True) + sum(
            process_cpu_seconds(child) for child in children_of(self.pid)
        )


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (every process, the kernel's interrupt work and steal included)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(ticks) for ticks in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


MACHINE = "machine"
OTHERS = "not the bench"


class CpuMeter:
    def __init__(self, groups: list[ProcessGroup]) -> None:
        self.groups = groups

    def snapshot(self) -> dict[str, float]:
        return {**{group.name: group.cpu_seconds() for group in self.groups}, MACHINE: machine_busy_seconds()}

    @staticmethod
    def report(before: dict[str, float], after: dict[str, float], units: int, wall_seconds: float) -> dict[str, Any]:
        """CPU seconds per 1,000 successful calls, and the cores each process kept busy on average. What the
        machine spent on anything else (another test run on a shared machine) is shown apart, out of the total."""
        used = {name: after[name] - before[name] for name in before if name != MACHINE}
        used["total"] = sum(used.values())
        per_1000 = {name: (seconds * 1000 / units if units else None) for name, seconds in used.items()}
        used[OTHERS] = max(0.0, after[MACHINE] - before[MACHINE] - used["total"])
        busy = {name: seconds / wall_seconds for name, seconds in used.items()} if wall_seconds > 0 else {}
        return {"cpu_seconds": used, "cpu_seconds_per_1000": per_1000, "cores_busy": busy}


# -- settlement ------------------------------------------------------------------------------------------------


async def settlement_lag(gifts_dsn: str, payouts_dsn: str, since: datetime, until: datetime) -> dict[str, Any]:
    """Waits until payouts has credited every gift completed in the window, then: credit time − completion time."""
    gifts = await asyncpg.connect(gifts_dsn)
    payouts = await asyncpg.connect(payouts_dsn)
    try:
        completed = {
            r["gift_transaction_id"]: r["finished_at"]
            for r in await gifts.fetch(
                "SELECT gift_transaction_id, finished_at FROM gift_transactions"
                " WHERE status = 'completed' AND created_at >= $1 AND created_at <= $2",
                since,
                until,
            )
        }
        waited_from = time.monotonic()
        while True:
            credited = await payouts.fetchval(
                "SELECT count(*) FROM diamond_credits WHERE gift_transaction_id = ANY($1::text[])", list(completed)
            )
            if credited == len(completed):
                break
            if time.monotonic() - waited_from > SETTLEMENT_TIMEOUT_SECONDS:
                raise RuntimeError(f"settlement did not catch up: {credited} of {len(completed)} gifts credited")
            await asyncio.sleep(0.1)
        credits = await payouts.fetch(
            "SELECT gift_transaction_id, created_at FROM diamond_credits WHERE gift_transaction_id = ANY($1::text[])",
            list(completed),
        )
        lags = [(r["created_at"] - completed[r["gift_transaction_id"]]).total_seconds() for r in credits]
        return {"gifts": len(lags), **latency_ms(lags), "waited_seconds": time.monotonic() - waited_from}
    finally:
        await gifts.close()
        await payouts.close()


def settlement_lag_now(gifts_dsn: str, payouts_dsn: str, since: datetime, until: datetime) -> dict[str, Any]:
    return asyncio.run(settlement_lag(gifts_dsn, payouts_dsn, since, until))
