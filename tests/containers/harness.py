"""The compose stack of `make test-containers`: the image built from this checkout, deploy/compose.yaml with
deploy/compose.production.yaml (production mode, TLS everywhere) and tests/containers/production.env, under a
compose project of its own with free host ports, fresh secrets, a throwaway CA and the gifts → wallet token in a
temporary directory. Everything is driven through the docker CLI, as a user would."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from coinstream.testing.servers import free_port
from services.runtime.auth import ROLE_SERVICE, mint_token
from tests.support.stack import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILES = (DEPLOY / "compose.yaml", DEPLOY / "compose.production.yaml")
TEST_ENV_FILE = Path(__file__).with_name("production.env")
IMAGE = os.environ.get("COINSTREAM_TEST_IMAGE", "coinstream:test")
# Where `docker build` fetches packages from: the host's network by default (works with any engine on Linux, and where
# containers have no route of their own); "default" for the engine's build network.
BUILD_NETWORK = os.environ.get("COINSTREAM_TEST_BUILD_NETWORK", "host")
SERVICES = ("wallet", "gifts", "payouts")
HOST_PORTS = ("POSTGRES", "NATS", "WALLET", "GIFTS", "PAYOUTS", "WALLET_HTTP", "PAYOUTS_HTTP")
SECRETS = (
    "POSTGRES_PASSWORD",
    "COINSTREAM_AUTH_SECRET",
    "NATS_WALLET_PASSWORD",
    "NATS_GIFTS_PASSWORD",
    "NATS_PAYOUTS_PASSWORD",
    "NATS_OPERATOR_PASSWORD",
    "DB_WALLET_PASSWORD",
    "DB_WALLET_MIGRATOR_PASSWORD",
    "DB_GIFTS_PASSWORD",
    "DB_GIFTS_MIGRATOR_PASSWORD",
    "DB_PAYOUTS_PASSWORD",
    "DB_PAYOUTS_MIGRATOR_PASSWORD",
)
# The compose network's host names and the host's, all in one server certificate.
SERVER_NAMES = ("wallet", "gifts", "payouts", "nats", "postgres", "localhost", "127.0.0.1")
GIFTS_SUBJECT = "coinstream-gifts"
TOKEN_TTL_SECONDS = 4 * 3600
UP_TIMEOUT_SECONDS = 240


# compose.production.yaml for a PostgreSQL image built without SSL: the database in clear on the compose network.
PLAINTEXT_DATABASE = {
    "POSTGRES_SSL": "off",
    "DATABASE_TLS_PARAMETERS": "",
    "COINSTREAM_ALLOW_PLAINTEXT_DATABASE": "true",
}


def env_file_value(name: str) -> str:
    for line in TEST_ENV_FILE.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{TEST_ENV_FILE} sets no {name}")


class DockerMissing(Exception):
    """No usable container engine: what is missing, in words a user can act on."""


def preflight() -> str:
    """The engine's and Compose's versions, or DockerMissing."""
    if shutil.which("docker") is None:
        raise DockerMissing("the docker CLI is not on the PATH: make test-containers needs Docker with Compose v2")
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=30
    )
    if engine.returncode != 0:
        raise DockerMissing(f"the Docker engine does not answer ({engine.stderr.strip() or 'no output'})")
    compose = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=30)
    if compose.returncode != 0 or not compose.stdout.strip().lstrip("v").startswith("2"):
        raise DockerMissing("Docker Compose v2 (the `docker compose` plugin) is missing")
    return f"Docker {engine.stdout.strip()}, Compose {compose.stdout.strip()}"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    seconds: float
    size_bytes: int
    base_size_bytes: int
    labels: dict[str, str]
    config: dict

    @property
    def added_bytes(self) -> int:
        return self.size_bytes - self.base_size_bytes


def build_image() -> BuiltImage:
    """Builds deploy/Dockerfile from this checkout, labelled with its version and revision."""
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    version = project_version()
    started = time.monotonic()
    docker(
        "build",
        f"--network={BUILD_NETWORK}",
        "-f",
        str(DEPLOY / "Dockerfile"),
        "-t",
        IMAGE,
        "--build-arg",
        f"VERSION={version}",
        "--build-arg",
        f"REVISION={revision or 'unknown'}",
        str(REPO_ROOT),
        timeout=900,
    )
    seconds = time.monotonic() - started
    [inspected] = json.loads(docker("image", "inspect", IMAGE).stdout)
    base = dockerfile_base_image()
    [base_inspected] = json.loads(docker("image", "inspect", base).stdout)
    return BuiltImage(
        IMAGE,
        seconds,
        inspected["Size"],
        base_inspected["Size"],
        inspected["Config"].get("Labels") or {},
        inspected["Config"],
    )


def project_version() -> str:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def dockerfile_base_image() -> str:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.split("=", 1)[1]
    raise AssertionError("deploy/Dockerfile has no ARG PYTHON_IMAGE=")


@dataclass
class ComposeStack:
    """One compose project: `up`, `stop`, `down` and what the tests need to reach it from the host."""

    root: Path
    project: str = field(default_factory=lambda: f"coinstream-test-{secrets.token_hex(3)}")
    secrets: dict[str, str] = field(default_factory=lambda: {name: secrets.token_hex(32) for name in SECRETS})
    ports: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in HOST_PORTS})
    _database_tls: bool | None = None

    def __post_init__(self) -> None:
        self.tls_dir = self.root / "tls"
        self.token_dir = self.root / "gifts-wallet-token"
        self._write_tls_files()
        self.token_dir.mkdir(mode=0o755)
        token_file = self.token_dir / "token"
        token_file.write_text(mint_token(self.auth_secret, GIFTS_SUBJECT, [ROLE_SERVICE], TOKEN_TTL_SECONDS))
        token_file.chmod(0o644)  # the service runs as uid 10001 in its container (this is a throwaway token)

    def _write_tls_files(self) -> None:
        import trustme  # a development dependency, like the rest of the tests

        self.tls_dir.mkdir(parents=True)
        ca = trustme.CA()
        server = ca.issue_cert(*SERVER_NAMES)
        ca.cert_pem.write_to_path(str(self.tls_dir / "ca.pem"))
        (self.tls_dir / "server.pem").write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(self.tls_dir / "server.key"))
        # Readable inside the containers (uid 10001): a throwaway key in a directory of this test run.
        self.tls_dir.chmod(0o755)
        for path in self.tls_dir.iterdir():
            path.chmod(0o644)

    @property
    def auth_secret(self) -> str:
        return self.secrets["COINSTREAM_AUTH_SECRET"]

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.secrets,
            **{f"{name}_HOST_PORT": str(port) for name, port in self.ports.items()},
            "COINSTREAM_IMAGE": IMAGE,
            "COINSTREAM_TLS_DIR": str(self.tls_dir),
            "GIFTS_WALLET_TOKEN_DIR": str(self.token_dir),
            **({} if self.database_tls else PLAINTEXT_DATABASE),
        }

    @property
    def database_tls(self) -> bool:
        """Whether the PostgreSQL image can serve TLS (the official one can): the database is then reached with
        sslmode=verify-full like everything else, else in clear on the compose network (PLAINTEXT_DATABASE)."""
        if self._database_tls is None:
            probe = docker(
                "run", "--rm", "--entrypoint", "sh", self.postgres_image, "-c", "pg_config --configure", check=False
            )
            self._database_tls = probe.returncode != 0 or "openssl" in probe.stdout
        return self._database_tls

    @property
    def postgres_image(self) -> str:
        return os.environ.get("POSTGRES_IMAGE") or env_file_value("POSTGRES_IMAGE")

    def compose(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [option for path in COMPOSE_FILES for option in ("-f", str(path))]
        command = ["docker", "compose", "-p", self.project, *files, "--env-file", str(TEST_ENV_FILE), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.environment())
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command[2:])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def up(self) -> float:
        """Starts (or restarts) everything and waits until every service is healthy; returns how long it took."""
        started = time.monotonic()
        self.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_SECONDS), timeout=UP_TIMEOUT_SECONDS + 60)
        return time.monotonic() - started

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "200", check=False).stdout

    def container(self, service: str) -> str:
        container_id = self.compose("ps", "--all", "-q", service).stdout.strip()
        assert container_id, f"no container for {service}"
        return container_id

    def state(self, service: str) -> dict:
        [inspected] = json.loads(docker("inspect", self.container(service)).stdout)
        return inspected["State"] | {"RestartCount": inspected["RestartCount"]}

    def kill_service_process(self, service: str) -> None:
        """SIGKILL to the service's process inside its container, as a crash would do it. (`docker kill` is a stop by
        hand to Docker, after which no restart policy applies.)"""
        script = (
            "import os, signal\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        command = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
            "    except OSError:\n"
            "        continue  # gone meanwhile (a healthcheck's probe)\n"
            # The service (python -m services.<name>), not a healthcheck's probe (python -m services.runtime.probe).
            "    service = command.startswith(b'python\\x00-m\\x00services.')"
            " and not command.startswith(b'python\\x00-m\\x00services.runtime')\n"
            "    if int(pid) not in (1, os.getpid()) and service:\n"
            f"        os.kill(int(pid), {int(signal.SIGKILL)})\n"
        )
        docker("exec", self.container(service), "python", "-c", script)

    def wait_healthy(self, service: str, timeout_seconds: float = 120) -> dict:
        deadline = time.monotonic() + timeout_seconds
        while True:
            state = self.state(service)
            if state.get("Health", {}).get("Status") == "healthy":
                return state
            assert time.monotonic() < deadline, f"{service} not healthy: {state}\n{self.logs()}"
            time.sleep(1)

    def channel(self, service: str) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_file.read_bytes())
        return grpc.aio.secure_channel(f"127.0.0.1:{self.ports[service.upper()]}", credentials)

    def token(self, subject: str, *roles: str) -> tuple[tuple[str, str], ...]:
        token = mint_token(self.auth_secret, subject, list(roles or ("user",)), 3600)
        return (("authorization", f"Bearer {token}"),)

    def reconcile(self) -> subprocess.CompletedProcess[str]:
        """`python -m services.reconcile --json` from the host, through the published ports and over TLS, as an
        operator would run it against this deployment."""
        tls = f"sslmode=verify-full&sslrootcert={self.ca_file}" if self.database_tls else "sslmode=disable"
        password = self.secrets["POSTGRES_PASSWORD"]
        database = f"postgresql://postgres:{password}@127.0.0.1:{self.ports['POSTGRES']}"
        env = {
            **os.environ,
            **{f"COINSTREAM_{s.upper()}_DATABASE_URL": f"{database}/coinstream_{s}?{tls}" for s in SERVICES},
            "COINSTREAM_NATS_URL": f"tls://127.0.0.1:{self.ports['NATS']}",
            "COINSTREAM_NATS_TLS_CA_FILE": str(self.ca_file),
            "COINSTREAM_NATS_USER": "operator",
            "COINSTREAM_NATS_PASSWORD": self.secrets["NATS_OPERATOR_PASSWORD"],
        }
        return subprocess.run(
            [sys.executable, "-m", "services.reconcile", "--json"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
