"""Crash points for fault-injection tests: `crash_point("gifts.after_wallet_debit")` kills the process with
SIGKILL when that name is listed in COINSTREAM_FAULT_POINTS. Off (a set lookup) in every normal run."""

from __future__ import annotations

import os
import signal

import structlog

_enabled_points: frozenset[str] = frozenset()


def enable_fault_points(points: str) -> None:
    global _enabled_points
    _enabled_points = frozenset(p.strip() for p in points.split(",") if p.strip())
    if _enabled_points:
        structlog.get_logger().warning("fault_points_enabled", points=sorted(_enabled_points))


def crash_point(name: str) -> None:
    if name in _enabled_points:
        structlog.get_logger().warning("fault_point_crash", point=name)
        os.kill(os.getpid(), signal.SIGKILL)
