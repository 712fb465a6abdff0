"""The container image, offline: hadolint on the Dockerfile, and what goes in - the services and the generated code,
not devstack (the development CLI and embedded servers, a distribution of their own), tests or benchmarks."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy.manifests import DEPLOY, REPO_ROOT


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_copies_the_services_and_generated_code_only() -> None:
    copies = [line.split()[1] for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    copies = [source for source in copies if not source.startswith("--from")]
    assert set(copies) == {"pyproject.toml", "services", "gen/python/coinstream"}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "--no-install-project" in dockerfile and "--no-dev" in dockerfile  # no wheel, no development group
    context = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in context and not [line for line in context if "devstack" in line and line.startswith("!")]


def distribution(requirement: str) -> str:
    """The normalized distribution name of a requirement such as `pyjwt[crypto]>=2.10`."""
    return requirement.split(">")[0].split("=")[0].split("[")[0].lower().replace("_", "-")


def test_the_production_wheel_leaves_the_development_tools_to_their_own_distribution() -> None:
    """The root wheel: the services and the coinstream namespace (generated code, coinstream.client, .testing), no
    console script; devstack/ is coinstream-devstack, and what only it needs is no runtime dependency of the root."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["services", "gen/python/coinstream", "src/coinstream"]
    assert "scripts" not in project["project"]
    devstack = tomllib.loads((REPO_ROOT / "devstack" / "pyproject.toml").read_text())["project"]
    assert devstack["name"] == "coinstream-devstack" and devstack["scripts"] == {"coinstream": "devstack.cli:app"}
    runtime = {distribution(requirement) for requirement in project["project"]["dependencies"]}
    assert runtime.isdisjoint(distribution(requirement) for requirement in devstack["dependencies"])


def test_the_services_import_nothing_the_image_lacks() -> None:
    """Top-level imports of every module under services/: the standard library, services, the generated coinstream
    package, and runtime dependencies - never devstack, tests, bench or a development-only package (the dev group's,
    or the dev tools' own: coinstream-devstack's)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    devstack = tomllib.loads((REPO_ROOT / "devstack" / "pyproject.toml").read_text())["project"]
    dev_distributions = {
        distribution(requirement)
        for requirement in [*project["dependency-groups"]["dev"], *devstack["dependencies"]]
        if distribution(requirement) != "coinstream"
    }
    providers = importlib.metadata.packages_distributions()
    allowed_local = {"services", "coinstream"}
    wrong = []
    for path in sorted((REPO_ROOT / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in allowed_local or top == "__future__":
                    continue
                distributions = {d.lower().replace("_", "-") for d in providers.get(top, [])}
                if top in {"devstack", "tests", "bench"} or not distributions or distributions <= dev_distributions:
                    wrong.append(f"{path.relative_to(REPO_ROOT)}: {name}")
    assert wrong == []
