"""gRPC health probe shared by `make run`, `coinstream health` and the container healthchecks.

Usage: python -m services.runtime.probe [HOST:PORT [SERVICE]]   — exits 0 when the server reports SERVING, else 1.
Without an address: this process's own plaintext health port (127.0.0.1:$COINSTREAM_GRPC_HEALTH_PORT), as the
image's HEALTHCHECK asks it, so moving that port moves the check with it.
Container images ship no grpc_health_probe binary, so compose healthchecks call this module instead."""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def health_status(address: str, service: str = "", timeout_seconds: float = 2.0) -> str:
    """The server's status name (SERVING, NOT_SERVING, …), or UNREACHABLE / the gRPC code name on failure."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds)
        except grpc.RpcError as error:
            code = error.code()
            # UNAVAILABLE / DEADLINE_EXCEEDED mean nothing answered yet: the usual state while a service starts.
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return code.name
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)  # grpc_health is untyped
    return name


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (not argv and not os.environ.get("COINSTREAM_GRPC_HEALTH_PORT", "").strip("0")):
        print(
            "usage: python -m services.runtime.probe [HOST:PORT [SERVICE]] (no address: needs"
            " COINSTREAM_GRPC_HEALTH_PORT)",
            file=sys.stderr,
        )
        return 2
    address = argv[0] if argv else f"127.0.0.1:{os.environ['COINSTREAM_GRPC_HEALTH_PORT']}"
    status = health_status(address, argv[1] if len(argv) == 2 else "")
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
