"""The NATS passwords of one stack (`make run`, a test session, the benchmark): one per user of
services/runtime/nats_permissions.py, plus one for the routes between the nodes of a cluster. Generated with
secrets.token_urlsafe the first time and kept as files of the stack's data (the directory mode 0700, each file 0600),
so a restarted server and a later `make run` keep them. Each service reads its own through
COINSTREAM_NATS_PASSWORD_FILE, exactly as a Kubernetes Secret mounted as a file reaches it; an operator (the
`coinstream` CLI, the tests) uses the operator's."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.nats_login import PASSWORD_FILE_SETTING, USER_SETTING, NatsLogin
from services.runtime.nats_permissions import (
    OPERATOR_USER,
    SERVICE_USERS,
    USERS,
    literal_password,
    render_authorization,
)

# Not a client: the nodes of a cluster log in to each other's route port with it (see cluster_authorization).
ROUTE_USER = "route"
PASSWORD_BYTES = 32


@dataclass(frozen=True)
class NatsCredentials:
    directory: Path
    passwords: Mapping[str, str] = field(repr=False)

    @classmethod
    def load_or_generate(cls, directory: Path) -> NatsCredentials:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        return cls(directory, {user: _load_or_generate(directory / user) for user in (*USERS, ROUTE_USER)})

    def password_file(self, user: str) -> Path:
        return self.directory / user

    def login(self, user: str) -> NatsLogin:
        return NatsLogin(user, self.passwords[user])

    @property
    def operator(self) -> NatsLogin:
        return self.login(OPERATOR_USER)

    def environment(self, user: str) -> dict[str, str]:
        """The settings that log a process in as user (the password stays in its file)."""
        return {USER_SETTING: user, PASSWORD_FILE_SETTING: str(self.password_file(user))}

    def service_environment(self, service: str) -> dict[str, str]:
        """A service's own login (every service has a NATS user); none for a name that is not a service."""
        user = SERVICE_USERS.get(service)
        return self.environment(user) if user else {}

    def authorization(self) -> str:
        """The nats-server `authorization` block with these passwords."""
        return render_authorization({user: literal_password(self.passwords[user]) for user in USERS})

    def cluster_authorization(self) -> str:
        """Inside a `cluster {}` block: a route connection is not subject to any user's permissions, so the route
        port must not accept just anyone either, loopback or not."""
        return f'  authorization {{ user: "{ROUTE_USER}", password: {literal_password(self.passwords[ROUTE_USER])} }}\n'

    def route_url(self, port: int) -> str:
        return f"nats-route://{ROUTE_USER}:{self.passwords[ROUTE_USER]}@127.0.0.1:{port}"


def _load_or_generate(path: Path) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    write_private(path, password + "\n")
    return password


def write_private(path: Path, text: str) -> None:
    """Readable and writable by this user only, from the first byte on (not chmod after the fact)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through os.open
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
