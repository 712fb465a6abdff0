"""What the deployment tests read: the overlays rendered by kubectl kustomize (once per session), the compose file,
and the services' settings classes they are checked against."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.gifts.config import GiftsSettings
from services.payouts.config import PayoutsSettings
from services.payouts.rails.paypal import PayPalSettings
from services.payouts.rails.stripe_connect import StripeConnectSettings
from services.runtime.config import RuntimeSettings
from services.wallet.config import WalletSettings
from services.wallet.stores.app_store import AppStoreSettings
from services.wallet.stores.google_play import GooglePlaySettings
from services.wallet.stripe_payments import StripeSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("dev", "prod")
NAMESPACE = "coinstream"
SETTINGS: dict[str, type[RuntimeSettings]] = {
    "wallet": WalletSettings,
    "gifts": GiftsSettings,
    "payouts": PayoutsSettings,
}
# Each rail's own settings class (its own COINSTREAM_<RAIL>_ prefix), read by the service that has the rail.
RAIL_SETTINGS: dict[str, tuple[type[BaseSettings], ...]] = {
    "wallet": (AppStoreSettings, GooglePlaySettings, StripeSettings),
    "gifts": (),
    "payouts": (StripeConnectSettings, PayPalSettings),
}

Manifest = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed: it renders the kustomizations (nothing on PyPI ships kustomize)")
    return found


@functools.cache
def _render(directory: Path) -> tuple[Manifest, ...]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(directory: Path | str) -> list[Manifest]:
    """The objects a kustomization builds (kubectl kustomize), or a skip when kubectl is missing."""
    return list(_render(KUBERNETES / directory if isinstance(directory, str) else directory))


def objects(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in objects(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def pod_templates(manifests: list[Manifest]) -> list[tuple[Manifest, Manifest]]:
    """(object, pod template) of every Deployment, StatefulSet and Job."""
    return [(m, m["spec"]["template"]) for m in manifests if m["kind"] in ("Deployment", "StatefulSet", "Job")]


def config_map_data(manifests: list[Manifest], name: str) -> dict[str, str]:
    """A generated ConfigMap's data by its name as referenced (kustomize's hash suffix included)."""
    return dict(named(manifests, "ConfigMap", name).get("data", {}))


def service_of(container: Manifest) -> tuple[str, bool] | None:
    """('wallet', False) for `python -m services.wallet`, ('wallet', True) for its `migrate`; None otherwise."""
    command = container.get("command") or []
    if command[:2] != ["python", "-m"] or not command[2].startswith("services."):
        return None
    service = command[2].removeprefix("services.")
    return service, command[3:] == ["migrate"]


def service_containers(manifests: list[Manifest]) -> list[tuple[Manifest, Manifest, str, bool]]:
    """(workload, container, service, is its migration) of every container that runs a coinstream service."""
    found = []
    for workload, pod in pod_templates(manifests):
        for container in pod["spec"]["containers"]:
            runs = service_of(container)
            if runs is not None:
                found.append((workload, container, *runs))
    return found


def container_environment(manifests: list[Manifest], container: Manifest) -> dict[str, str | None]:
    """Every variable a container gets: literal values, ConfigMap values resolved, Secret-sourced ones as None."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map_data(manifests, source["configMapRef"]["name"]))
        else:
            secret = source["secretRef"]["name"]
            env[f"<all keys of Secret {secret}>"] = None
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("configMapKeyRef")
        if reference is not None:
            env[variable["name"]] = config_map_data(manifests, reference["name"])[reference["key"]]
        else:
            env[variable["name"]] = variable.get("value")
    return env


def setting_names(service: str) -> set[str]:
    """Every COINSTREAM_* variable the service reads: its settings' and its rails'."""
    names = set()
    for settings in (SETTINGS[service], *RAIL_SETTINGS[service]):
        prefix = str(settings.model_config.get("env_prefix", ""))
        names |= {f"{prefix}{field}".upper() for field in settings.model_fields}
    return names


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())
