"""An auditor's check in Java: ``tests/interop/java/VerifyExport.java``, written from the export's
documented format with the JDK alone, recomputes the RFC 9162 tree of a real gateway's exported log
and checks the signed checkpoint, at tree sizes of every shape, and refuses tampered exports.

Needs Java 15+ (for Ed25519) on PATH; skipped with the reason otherwise. CI sets
``VEILGATE_REQUIRE_JAVA=1`` to fail instead.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GatewayHarness

from veilgate.v1 import citizen_pb2, citizen_pb2_grpc
from veilgate_server.audit import Checkpointer
from veilgate_server.audit_tools import export_log
from veilgate_server.crypto.note import NoteSigner

VERIFIER = Path(__file__).parent / "java" / "VerifyExport.java"
REQUIRE_JAVA_ENV = "VEILGATE_REQUIRE_JAVA"
SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17)  # one leaf, perfect trees, and the ragged sizes between

pytestmark = pytest.mark.java


@pytest.fixture(scope="session")
def java() -> str:
    found = shutil.which("java")
    if found is None:
        reason = "Java is not on PATH"
    else:
        shown = subprocess.run([found, "-version"], capture_output=True, text=True, check=False).stderr
        version = re.search(r'version "(\d+)', shown)
        if version is not None and int(version.group(1)) >= 15:
            return found
        reason = f"Java 15 or newer is needed for Ed25519; found: {shown.splitlines()[0] if shown else 'no version'}"
    if os.environ.get(REQUIRE_JAVA_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_JAVA_ENV}=1 requires the Java interop test")
    pytest.skip(reason)


def _verify(java: str, *exports: Path) -> tuple[int, list[str]]:
    ran = subprocess.run([java, str(VERIFIER), *map(str, exports)], capture_output=True, text=True, timeout=120)
    assert ran.stderr == ""
    return ran.returncode, [line.split(": ", 1)[1] for line in ran.stdout.splitlines()]


def _tampered(export: Path, into: Path, change: str) -> Path:
    shutil.copytree(export, into)
    if change == "an entry's bytes":
        lines = (into / "entries.jsonl").read_text().splitlines()
        leaf = bytearray(base64.b64decode(lines[2].split('"leaf": "')[1].rstrip('"}')))
        leaf[5] ^= 0x01
        lines[2] = f'{{"index": 2, "leaf": "{base64.b64encode(bytes(leaf)).decode()}"}}'
        (into / "entries.jsonl").write_text("\n".join(lines) + "\n")
    elif change == "an entry left out":
        lines = (into / "entries.jsonl").read_text().splitlines()
        (into / "entries.jsonl").write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    elif change == "the signed root":
        origin, size, root, *rest = (into / "checkpoint").read_text().split("\n")
        root = ("B" if root[0] == "A" else "A") + root[1:]
        (into / "checkpoint").write_text("\n".join([origin, size, root, *rest]))
    elif change == "another log's key":
        (into / "log.vkey").write_text(NoteSigner.generate("veilgate.test/log").verifier_key_string() + "\n")
    return into


def test_a_java_auditor_recomputes_every_exported_tree_and_refuses_tampered_ones(
    gateway_harness: GatewayHarness, java: str, tmp_path: Path
) -> None:
    gw = gateway_harness
    checkpointer = Checkpointer(gw.store, gw.gateway.log_signer)
    exports: list[Path] = []
    roots: list[str] = []
    with gw.channel() as channel:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        for size in SIZES:
            while gw.store.log.tree_size() < size:
                stub.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)  # audited: one entry
            export = tmp_path / f"size-{size}"
            assert export_log(gw.store, checkpointer, export).tree_size == size
            exports.append(export)
            roots.append((export / "checkpoint").read_text().split("\n")[2])

    status, outcomes = _verify(java, *exports)
    assert status == 0, outcomes
    assert outcomes == [
        f"verified {size} entries under veilgate.test/log, root {root}" for size, root in zip(SIZES, roots, strict=True)
    ]

    changes = ["an entry's bytes", "an entry left out", "the signed root", "another log's key"]
    tampered = [_tampered(exports[-1], tmp_path / f"tampered-{n}", change) for n, change in enumerate(changes)]
    status, outcomes = _verify(java, *tampered, exports[-1])
    assert status == 1
    assert outcomes == [
        "REJECTED: the entries' root is not the signed root",
        "REJECTED: line 4 holds entry 4, not 3",
        "REJECTED: the checkpoint's signature does not verify",
        "REJECTED: the checkpoint carries no signature by the log's key",
        outcomes[-1],
    ]
    assert outcomes[-1].startswith("verified 17 entries")
