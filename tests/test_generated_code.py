"""The committed generated code must be exactly what `make proto` makes from protos/."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = REPO_ROOT / "gen" / "python" / "coinstream"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
        env=env,
    )
    fresh = tmp_path / "coinstream"
    assert _files(fresh) == _files(COMMITTED), "generated files differ: run `make proto` and commit"
    stale = [name for name in sorted(_files(fresh)) if not filecmp.cmp(fresh / name, COMMITTED / name, shallow=False)]
    assert not stale, f"generated code is stale, run `make proto` and commit: {stale}"
