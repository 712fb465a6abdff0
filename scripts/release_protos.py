"""Records the protos of a release as the image `buf breaking` compares against (run at each release).

Usage: python scripts/release_protos.py VERSION [GIT_REF]   (GIT_REF defaults to HEAD)
e.g.   python scripts/release_protos.py 0.2.0 v0.2.0

Builds the protos/ of GIT_REF (not the work tree, so uncommitted edits never become "released") into a buf image
and writes it to protos/released/coinstream-VERSION.json, replacing the previous release's image: `make check`
compares the work tree with the one image found there. The image is pretty-printed JSON without source info, so a
refresh is a readable diff in review and editing a proto comment does not change it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RELEASED_DIR = REPO_ROOT / "protos" / "released"


def _extract_protos(git_ref: str, destination: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", git_ref, "protos"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")
    return destination / "protos"


def _build_image(proto_dir: Path, image: Path) -> None:
    # buf-bin installs buf next to this interpreter. buf reads only .proto files, so released/ is never an input.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["buf", "build", str(proto_dir), "--exclude-source-info", "-o", str(image)], check=True, env=env)


def release(version: str, git_ref: str) -> Path:
    with tempfile.TemporaryDirectory() as temporary:
        proto_dir = _extract_protos(git_ref, Path(temporary))
        image = Path(temporary) / "image.json"
        _build_image(proto_dir, image)
        descriptors = json.loads(image.read_text())
    for previous in RELEASED_DIR.glob("coinstream-*.json"):
        previous.unlink()
    target = RELEASED_DIR / f"coinstream-{version}.json"
    target.write_text(json.dumps(descriptors, indent=1) + "\n")
    return target


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print(release(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "HEAD"))
