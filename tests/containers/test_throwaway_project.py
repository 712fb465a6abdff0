"""The README's example test, run from a throwaway project that depends on coinstream (`coinstream[testing]` installed
from this checkout into a venv of its own), in both flavours of the fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.containers.conftest import FIGURES
from tests.containers.harness import BuiltImage, env_file_value
from tests.support.readme import readme_example
from tests.support.stack import REPO_ROOT

UV = Path(sys.executable).with_name("uv")


@pytest.fixture(scope="module")
def throwaway_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("throwaway-project")
    (project / "test_example.py").write_text(readme_example())
    subprocess.run([str(UV), "venv", "-q", "-p", sys.executable, str(project / ".venv")], check=True, timeout=120)
    installed = subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "-q",
            "-p",
            str(project / ".venv" / "bin" / "python"),
            f"coinstream[testing] @ {REPO_ROOT.as_uri()}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return project


@pytest.mark.parametrize("flavour", ["processes", "containers"])
def test_the_readme_example_passes_in_a_project_that_depends_on_coinstream(
    throwaway_project: Path, image: BuiltImage, flavour: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COINSTREAM_", "PYTHON"))},
        "COINSTREAM_TESTING_IMAGE": image.tag,
        "COINSTREAM_TESTING_POSTGRES_IMAGE": env_file_value("POSTGRES_IMAGE"),
        "COINSTREAM_TESTING_NATS_IMAGE": env_file_value("NATS_IMAGE"),
        # testcontainers' reaper comes from a registry; the fixture stops what it started itself.
        "TESTCONTAINERS_RYUK_DISABLED": "true",
    }
    done = subprocess.run(
        [str(throwaway_project / ".venv" / "bin" / "python"), "-m", "pytest", "-q", f"--coinstream-flavour={flavour}"],
        cwd=throwaway_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    FIGURES[f"README example in a throwaway project ({flavour})"] = done.stdout.strip().splitlines()[-1]
