"""deploy/compose.yaml, offline: the compose specification's schema, pinned images, required secrets, the migration
step before each service, and settings that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

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
            assert names - setting_names(SETTINGS[service]) == set(), container
    for other in ("postgres", "nats"):
        assert not [n for n in services[other].get("environment", {}) if n.startswith("COINSTREAM_")]


def test_production_payouts_holds_diamonds_for_seven_days_unless_told_otherwise() -> None:
    """compose.production.yaml's defaults: a 7-day hold, no exemption; development (compose.yaml) keeps none."""
    production = yaml.safe_load((DEPLOY / "compose.production.yaml").read_text())["services"]["payouts"]["environment"]
    assert default_of(production["COINSTREAM_DIAMOND_HOLD_SECONDS"]) == str(7 * 86_400)
    assert default_of(production["COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD"]) == "false"
    assert {n for n in production if n.startswith("COINSTREAM_")} <= setting_names(SETTINGS["payouts"])
    assert "COINSTREAM_DIAMOND_HOLD_SECONDS" not in compose()["services"]["payouts"]["environment"]
