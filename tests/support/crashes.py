"""Crashing the gifts service on purpose: restarted with a crash point (COINSTREAM_FAULT_POINTS) that kills it with
SIGKILL there, started again afterwards, and requests retried until the new process answers."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from coinstream.gifts.v1 import gifts_pb2

from tests.support.clients import SERVICE, Clients
from tests.support.stack import Stack

# How a call fails when the server dies under it.
CONNECTION_LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@contextmanager
def gifts_crashing_at(stack: Stack, point: str) -> Iterator[subprocess.Popen[bytes]]:
    """Gifts restarted with a crash point; afterwards gifts runs normally again, whatever the test did."""
    stack.restart_service("gifts", extra_env={"COINSTREAM_FAULT_POINTS": point})
    faulty = stack.services["gifts"].process
    assert faulty is not None
    try:
        yield faulty
    finally:
        current = stack.services["gifts"].process
        if current is faulty and faulty.poll() is None:
            stack.stop_service("gifts")
        if current is faulty or current is None or current.poll() is not None:
            stack.start_service("gifts")


def restart_after_crash(stack: Stack) -> None:
    assert stack.wait_exit("gifts") == -signal.SIGKILL
    stack.start_service("gifts")


async def retry(clients: Clients, request: gifts_pb2.SendGiftRequest) -> gifts_pb2.SendGiftResponse:
    return await clients.gifts.SendGift(request, metadata=SERVICE, wait_for_ready=True, timeout=20)
