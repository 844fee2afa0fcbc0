#!/usr/bin/env python3
"""Regenerate client_sdk/veilgate/v1 from proto/veilgate/v1 — the one way to produce that code.

    python tools/gen_proto.py           # rewrite the generated files
    python tools/gen_proto.py --check   # exit 1 if the checked-in files differ from a fresh run

The generated code embeds the protobuf and grpcio versions it was made with and refuses older runtimes,
so grpcio-tools is pinned in pyproject.toml and the runtime floors there match it.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "client_sdk"
PACKAGE_DIR = Path("veilgate") / "v1"
INIT_TEXT = '"""Generated gRPC code for veilgate.v1 (tools/gen_proto.py). Never edit by hand."""\n'


def _plugin(name: str) -> Path:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    path = Path(found)
    if not path.exists():
        raise SystemExit(f"gen_proto: {name} not found; install the dev extra (pip install -e '.[dev]')")
    return path


def generate(out_root: Path) -> None:
    """Run protoc over every proto under proto/veilgate/v1 into out_root/veilgate/v1."""
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    if not protos:
        raise SystemExit("gen_proto: no .proto files under proto/veilgate/v1")
    well_known = resources.files("grpc_tools") / "_proto"
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    result = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise SystemExit(f"gen_proto: protoc failed:\n{result.stderr}")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)


def _generated_files(root: Path) -> set[str]:
    base = root / PACKAGE_DIR
    if not base.exists():
        return set()
    return {p.name for p in base.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}}


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _generated_files(fresh), _generated_files(OUT_ROOT)
        drift = sorted(want ^ have)
        drift += sorted(
            name
            for name in want & have
            if not filecmp.cmp(fresh / PACKAGE_DIR / name, OUT_ROOT / PACKAGE_DIR / name, shallow=False)
        )
    if drift:
        print("gen_proto --check: generated code is out of date: " + ", ".join(drift), file=sys.stderr)
        print("run: python tools/gen_proto.py", file=sys.stderr)
        return 1
    print("gen_proto --check: generated code matches proto/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the checked-in code is stale")
    args = parser.parse_args()
    if args.check:
        return check()
    target = OUT_ROOT / PACKAGE_DIR
    for name in _generated_files(OUT_ROOT):
        (target / name).unlink()
    generate(OUT_ROOT)
    print(f"gen_proto: wrote {len(_generated_files(OUT_ROOT))} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
