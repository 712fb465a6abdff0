"""Generates the Python protobuf and gRPC code from protos/ (run as `make proto`).

Usage: python scripts/gen_protos.py [OUTPUT_DIR]   (default: gen/python)
The output is deterministic, so tests/test_generated_code.py can regenerate into a temporary folder and
compare it with the committed code.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUTPUT = REPO_ROOT / "gen" / "python"


def generate(output_dir: Path) -> None:
    generated_package = output_dir / "coinstream"
    if generated_package.exists():
        shutil.rmtree(generated_package)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Ours only: protos/google holds vendored googleapis files (google.rpc.Status), whose Python modules come from
    # googleapis-common-protos; generating them too would shadow that package's.
    proto_files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "coinstream").rglob("*.proto"))
    well_known_types = Path(grpc_tools.__file__).parent / "_proto"
    arguments = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known_types}",
        f"--python_out={output_dir}",
        f"--grpc_python_out={output_dir}",
        f"--mypy_out={output_dir}",
        f"--mypy_grpc_out={output_dir}",
        *proto_files,
    ]
    exit_code = protoc.main(arguments)
    if exit_code != 0:
        raise SystemExit(f"protoc failed with exit code {exit_code}")
    # coinstream itself stays a namespace package: the hand-written coinstream.testing (src/) shares it.
    for package_dir in generated_package.rglob("*"):
        if package_dir.is_dir():
            (package_dir / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT)
