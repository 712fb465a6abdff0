"""deploy/compose.yaml, offline: the compose specification's schema, pinned images, required secrets, the migration
step before each service, and settings that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from services.runtime.nats_permissions import SERVICE_USERS, USERS, environment_variable_for
from tests.deploy.manifests import DEPLOY, SETTINGS, compose, setting_names

SERVICES = tuple(SETTINGS)


def test_the_compose_files_validate_against_the_compose_specification() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    files = [str(DEPLOY / "compose.yaml"), str(DEPLOY / "compose.production.yaml")]
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def default_of(value: str) -> str:
    """The default of a ${NAME:-default} setting (what compose uses when NAME is unset), or the value itself."""
    setting = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", value)
    return setting.group(1) if setting else value


def test_third_party_images_are_pinned_to_a_release() -> None:
    services = compose()["services"]
    assert re.fullmatch(r"postgres:18\.\d+", default_of(services["postgres"]["image"]))
    assert re.fullmatch(r"nats:2\.\d+\.\d+-alpine", default_of(services["nats"]["image"]))


def test_every_secret_is_required_and_none_has_a_default() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    references = re.findall(r"\$\{([A-Z_]+)(:?[-?])?[^}]*\}", text)
    secrets = {name for name, _ in references if any(w in name for w in ("PASSWORD", "SECRET"))}
    assert {"POSTGRES_PASSWORD", "COINSTREAM_AUTH_SECRET", "NATS_OPERATOR_PASSWORD"} <= secrets
    for name, operator in references:
        if name in secrets:
            assert operator == ":?", f"${{{name}}} must be required (${{{name}:?...}}), not defaulted"
    assert "dev-only" not in text


def test_each_service_waits_for_its_migration_and_runs_as_its_runtime_role() -> None:
    services = compose()["services"]
    for service in SERVICES:
        migrate = services[f"{service}-migrate"]
        assert migrate["command"] == ["python", "-m", f"services.{service}", "migrate"]
        assert migrate["restart"] == "no"
        assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert migrate["environment"]["PGUSER"] == f"coinstream_{service}_migrator"
        assert migrate["environment"]["COINSTREAM_DB_RUNTIME_ROLE"] == f"coinstream_{service}"
        server = services[service]
        assert server["command"] == ["python", "-m", f"services.{service}"]
        assert server["depends_on"][f"{service}-migrate"]["condition"] == "service_completed_successfully"
        assert server["environment"]["PGUSER"] == f"coinstream_{service}"
        assert server["environment"]["COINSTREAM_DB_MIGRATE_ON_START"] == "false"
        assert server["environment"]["COINSTREAM_GRPC_HEALTH_PORT"] in server["healthcheck"]["test"][-1]
        assert "services.runtime.probe" in server["healthcheck"]["test"]


def test_the_database_healthcheck_proves_the_databases_exist() -> None:
    check = " ".join(compose()["services"]["postgres"]["healthcheck"]["test"])
    assert all(f"coinstream_{service}" in check for service in SERVICES) and "= 3" in check


def test_every_coinstream_setting_given_is_a_setting_of_that_service() -> None:
    services = compose()["services"]
    for service in SERVICES:
        for container in (service, f"{service}-migrate"):
            names = {n for n in services[container]["environment"] if n.startswith("COINSTREAM_")}
            assert names - setting_names(service) == set(), container
    for other in ("postgres", "nats"):
        assert not [n for n in services[other].get("environment", {}) if n.startswith("COINSTREAM_")]


def test_production_payouts_holds_diamonds_for_seven_days_unless_told_otherwise() -> None:
    """compose.production.yaml's defaults: a 7-day hold, no exemption; development (compose.yaml) keeps none."""
    production = yaml.safe_load((DEPLOY / "compose.production.yaml").read_text())["services"]["payouts"]["environment"]
    assert default_of(production["COINSTREAM_DIAMOND_HOLD_SECONDS"]) == str(7 * 86_400)
    assert default_of(production["COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD"]) == "false"
    assert {n for n in production if n.startswith("COINSTREAM_")} <= setting_names("payouts")
    assert "COINSTREAM_DIAMOND_HOLD_SECONDS" not in compose()["services"]["payouts"]["environment"]


def test_each_service_logs_in_to_nats_as_its_own_user_once_nats_is_healthy() -> None:
    """Every service is a NATS client with a user of its own (services/runtime/nats_permissions.py) and that user's
    password, the variable nats-server resolves in nats.conf; nats-server is given every user's. In production mode
    each reaches NATS over TLS, verified against the CA."""
    services = compose()["services"]
    nats_environment = services["nats"]["environment"]
    assert set(nats_environment) == {environment_variable_for(user) for user in USERS}
    for name, value in nats_environment.items():
        assert value == f"${{{name}:?set {name}}}"
    production = yaml.safe_load((DEPLOY / "compose.production.yaml").read_text())["services"]
    for service in SERVICES:
        user = SERVICE_USERS[service]
        environment = services[service]["environment"]
        assert environment["COINSTREAM_NATS_USER"] == user, service
        variable = environment_variable_for(user)
        assert environment["COINSTREAM_NATS_PASSWORD"] == f"${{{variable}:?set {variable}}}", service
        assert environment["COINSTREAM_NATS_URL"] == "nats://nats:4222"
        assert services[service]["depends_on"]["nats"]["condition"] == "service_healthy", service
        tls = production[service]["environment"]
        assert tls["COINSTREAM_NATS_URL"].startswith("tls://nats:") and tls["COINSTREAM_NATS_TLS_CA_FILE"], service
    for service in SERVICES:
        migrate = services[f"{service}-migrate"]["environment"]
        assert not [n for n in migrate if n.startswith("COINSTREAM_NATS_")], f"{service}-migrate"


def test_the_readme_makes_every_secret_compose_requires() -> None:
    """deploy/README.md's `for name in ...` line writes deploy/.env: compose refuses to start without any of them."""
    text = (DEPLOY / "compose.yaml").read_text()
    required = {name for name in re.findall(r"\$\{([A-Z_]+):\?", text) if "PASSWORD" in name or "SECRET" in name}
    readme = (DEPLOY / "README.md").read_text()
    loop = re.search(r"for name in (.+?); do", readme, re.DOTALL)
    assert loop is not None
    assert set(loop.group(1).replace("\\", " ").split()) == required
