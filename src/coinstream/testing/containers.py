"""The `containers` flavour (testcontainers): PostgreSQL, NATS JetStream and the three services from the coinstream
image, on a Docker network of their own; the services' ports published on the host. Each service applies its own
migrations at start (development mode)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from coinstream.client import NotServingError, wait_until_serving
from coinstream.testing.running import Coinstream

if TYPE_CHECKING:  # testcontainers is imported when the containers flavour runs, not with the plugin
    from testcontainers.core.container import DockerContainer

SERVICES = {"wallet": 50051, "gifts": 50052, "payouts": 50053}
DATABASES = tuple(f"coinstream_{service}" for service in SERVICES)
START_TIMEOUT_SECONDS = 120.0


def image_settings() -> dict[str, str]:
    """The images, settings with pinned defaults: the coinstream image is the one built from deploy/Dockerfile."""
    return {
        "coinstream": os.environ.get("COINSTREAM_TESTING_IMAGE", "coinstream:dev"),
        "postgres": os.environ.get("COINSTREAM_TESTING_POSTGRES_IMAGE", "postgres:18.6"),
        "nats": os.environ.get("COINSTREAM_TESTING_NATS_IMAGE", "nats:2.15.1-alpine"),
    }


@contextmanager
def run_containers(auth_secret: str) -> Iterator[Coinstream]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    images = image_settings()
    password = secrets.token_hex(16)
    # Containers stop (the ExitStack) before their network goes.
    with Network() as network, ExitStack() as started:
        postgres = started.enter_context(
            DockerContainer(images["postgres"])
            .with_env("POSTGRES_PASSWORD", password)
            .with_network(network)
            .with_network_aliases("postgres")
        )
        _create_databases(postgres, password)
        nats = started.enter_context(
            DockerContainer(images["nats"])
            .with_command("-js")
            .with_network(network)
            .with_network_aliases("nats")
            .with_exposed_ports(4222)
        )
        addresses = {}
        for service, port in SERVICES.items():
            container = started.enter_context(
                DockerContainer(images["coinstream"])
                .with_command(f"python -m services.{service}")
                .with_envs(**_service_env(service, password, auth_secret))
                .with_network(network)
                .with_network_aliases(service)
                .with_exposed_ports(port)
            )
            addresses[service] = f"{container.get_container_host_ip()}:{container.get_exposed_port(port)}"
            _wait_serving(service, addresses[service], container)
        yield Coinstream(
            wallet_address=addresses["wallet"],
            gifts_address=addresses["gifts"],
            payouts_address=addresses["payouts"],
            nats_url=f"nats://{nats.get_container_host_ip()}:{nats.get_exposed_port(4222)}",
            auth_secret=auth_secret,
            flavour="containers",
        )


def _service_env(service: str, password: str, auth_secret: str) -> dict[str, str]:
    return {
        # The image defaults to production mode; a test runs in development mode (plaintext, sandbox providers).
        "COINSTREAM_ENVIRONMENT": "development",
        "COINSTREAM_AUTH_SECRET": auth_secret,
        "COINSTREAM_LOG_LEVEL": "warning",
        "COINSTREAM_RATE_LIMITS": "{}",
        f"COINSTREAM_{service.upper()}_DATABASE_URL": f"postgresql://postgres:{password}@postgres:5432/coinstream_{service}",
        f"COINSTREAM_{service.upper()}_PORT": str(SERVICES[service]),
        "COINSTREAM_NATS_URL": "nats://nats:4222",
        "COINSTREAM_GIFTS_WALLET_ADDRESS": f"wallet:{SERVICES['wallet']}",
    }


def _create_databases(postgres: DockerContainer, password: str) -> None:
    """Waits until PostgreSQL takes TCP connections, then creates the three databases (each service migrates its own
    at start). The password reaches psql through its environment, never a command line."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while _psql(postgres, password, "SELECT 1")[0] != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL did not start: {_psql(postgres, password, 'SELECT 1')[1]}")
        time.sleep(0.5)
    for name in DATABASES:
        exit_code, output = _psql(postgres, password, f'CREATE DATABASE "{name}"')
        if exit_code != 0:
            raise RuntimeError(f"CREATE DATABASE {name}: {output}")


def _psql(postgres: DockerContainer, password: str, statement: str) -> tuple[int, str]:
    container = postgres.get_wrapped_container()
    result = container.exec_run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", statement],
        environment={"PGPASSWORD": password},
    )
    return result.exit_code, result.output.decode(errors="replace")


def _wait_serving(service: str, address: str, container: DockerContainer) -> None:
    try:
        wait_until_serving(address, timeout_seconds=START_TIMEOUT_SECONDS, poll_seconds=0.5)
    except NotServingError:
        logs = b"".join(container.get_logs()).decode(errors="replace")[-3000:]
        raise TimeoutError(f"coinstream {service} not SERVING after {START_TIMEOUT_SECONDS:.0f} s:\n{logs}") from None
