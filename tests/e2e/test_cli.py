"""The CLI as a user runs it: real processes, real TLS, on every storage backend."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from veilgate import AuditClient, CitizenClient, CitizenWallet, DepartmentClient, InstitutionClient, PolicyPin, Record
from veilgate._internal import jose
from veilgate._internal.jose import b64url_decode
from veilgate.audit import parse_entry
from veilgate.consent import CONSENT_TYP
from veilgate.errors import CertificateNotAccepted, ConsentRevoked, DepartmentDisabled, InstitutionDisabled
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc
from veilgate_server.audit import checkpoint_body
from veilgate_server.config import Settings, default_policies_dir
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.crypto.records import RecordsKey
from veilgate_server.rpc.processes import max_processes
from veilgate_server.storage import Store, StoredRecord, sqlite_url

PASSPHRASE = "e2e passphrase, long enough"


def veilgate(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "veilgate_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"veilgate {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


class ServeProcess:
    """`veilgate serve` in a child process; stdout is read on a thread so it never blocks."""

    def __init__(self, *args: str, listen: str = "127.0.0.1:0", listen_mtls: str = "127.0.0.1:0") -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veilgate_server.cli",
                "serve",
                "-v",
                "--listen",
                listen,
                "--listen-mtls",
                listen_mtls,
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._port = threading.Event()
        self.port = 0
        self.mtls_port = 0
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True).start()
        if not self._port.wait(60):
            self.stop()
            raise AssertionError("serve did not start:\n" + "".join(self.stdout + self.stderr))

    def _pump(self, stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)
            mtls = re.search(r"mutual TLS\) on port (\d+)", line)
            if mtls:
                self.mtls_port = int(mtls.group(1))
            match = re.search(r"serving on port (\d+)", line)
            if match:
                self.port = int(match.group(1))
            if line.startswith("store: "):  # the banner's last line: both ports are known
                self._port.set()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def signed_policies(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the shipped policies with a MANIFEST signed by a fresh governance key."""
    policies = tmp_path / "policies"
    shutil.copytree(default_policies_dir(), policies, ignore=shutil.ignore_patterns("MANIFEST"))
    keygen = veilgate("policy", "keygen", "--out", str(tmp_path / "governance.key"))
    vkey = keygen.stdout.strip().splitlines()[-1].split(": ")[-1]
    veilgate("policy", "sign", "--key", str(tmp_path / "governance.key"), "--policies-dir", str(policies))
    return policies, vkey


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[tuple[ServeProcess, Path, str]]:
    data = tmp_path / "gw"
    policies, vkey = signed_policies(tmp_path)
    (data).mkdir()
    (data / "governance.vkey").write_text(vkey + "\n")
    veilgate("seed", "--citizens", "5", "--seed", "3", "--data-dir", str(data), "--database-url", database_url)
    server = ServeProcess("--data-dir", str(data), "--database-url", database_url, "--policies-dir", str(policies))
    try:
        yield server, data, database_url
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_demo_runs_end_to_end(database_url: str) -> None:
    result = veilgate("demo", "--citizens", "5", "--database-url", database_url)
    out = result.stdout
    assert "GetMyData: 61 items" in out
    assert "department pushed the citizen's current employer over mutual TLS: 1 record" in out
    assert "Pushing a taxation item was refused: ITEM_NOT_OWNED" in out
    assert "Among them the employer the department pushed" in out
    assert "Values are sealed at rest: AES-256-GCM under a data key per citizen, wrapped by records key" in out
    assert "A third party checked the signed delivery offline" in out
    assert "TOKEN_REPLAYED" in out
    assert "signed and registered three consents" in out
    assert re.search(r"consumer loan \(50k-200k\):\s+(ELIGIBLE|NOT_ELIGIBLE|REFER)", out)
    assert re.search(r"inpatient claim:\s+ELIGIBLE\s+bands: self_paid=", out)
    assert "next evaluation is refused: CONSENT_REVOKED" in out
    assert len(re.findall(r"(bank-of-jinan|qilu-insurance)\s+\S+\s+(ELIGIBLE|NOT_ELIGIBLE|REFER)", out)) == 3
    assert "Demo finished" in out
    assert "Traceback" not in result.stderr


def test_citizen_journey_through_the_cli(served: tuple[ServeProcess, Path, str], tmp_path: Path) -> None:
    server, data, database_url = served
    db = ["--data-dir", str(data), "--database-url", database_url]
    with Store.open(database_url, records_key=RecordsKey.load_or_create(data / "keys" / "records.key")) as store:
        citizen = store.records.citizen_ids(limit=1)[0]
        employer = store.records.for_citizen(citizen, ["social_insurance.current_employer"])[0]
        canary = "CANARY-e2e-51d0c3"
        store.records.put_many(
            [StoredRecord(citizen, employer.item_id, employer.department, employer.as_of, json.dumps(canary))]
        )
    env = {"VEILGATE_WALLET_PASSPHRASE": PASSPHRASE}
    wallet = tmp_path / "me.wallet"
    veilgate("wallet", "create", "--citizen-id", citizen, "--out", str(wallet), env=env)
    assert json.loads((tmp_path / "me.wallet.identity.json").read_text())["citizen_id"] == citizen
    enrolled = veilgate("enroll", "--identity", str(tmp_path / "me.wallet.identity.json"), *db)
    assert "key version 1" in enrolled.stdout
    again = veilgate("enroll", "--identity", str(tmp_path / "me.wallet.identity.json"), *db, check=False)
    assert again.returncode == 1
    assert "already enrolled" in again.stderr

    fetch_args = ["wallet", "fetch", "--wallet", str(wallet), "--target", f"localhost:{server.port}"]
    fetch_args += ["--ca", str(data / "tls" / "ca.pem"), "--gateway-keys", str(data / "gateway-keys.json")]
    with Store.open(database_url) as store:
        logged = store.log.tree_size()
    nowhere = veilgate(*fetch_args, "--out", str(tmp_path / "no-such-dir" / "delivery.jws"), env=env, check=False)
    assert nowhere.returncode == 1
    assert "there is no directory" in nowhere.stderr
    with Store.open(database_url) as store:  # refused before the call: no request made, none logged
        assert store.log.tree_size() == logged
    fetched = veilgate(*fetch_args, "--out", str(tmp_path / "delivery.jws"), env=env)
    assert "61 items" in fetched.stdout
    payload = (tmp_path / "delivery.jws").read_text().strip().split(".")[1]
    assert canary in b64url_decode(payload).decode()  # the citizen, and only the citizen, can read it
    # The records key rotated while the gateway serves: it takes up the new key, without a restart.
    old_records_key = RecordsKey.load(data / "keys" / "records.key")
    rotated = veilgate("keys", "--rotate-records-key", *db)
    assert "take it up at their next read, without a restart" in rotated.stdout
    assert "61 items" in veilgate(*fetch_args, env=env).stdout
    # So was the gateway signing key: the serving gateway signs with the new one within a second.
    signing_rotated = veilgate("keys", "--rotate", *db)
    new_kid = re.search(r"new gateway signing key (\S+);", signing_rotated.stdout)
    assert new_kid is not None
    deadline = time.monotonic() + 30
    while True:
        veilgate(*fetch_args, "--out", str(tmp_path / "delivery.jws"), env=env)  # verified with the new JWKS
        header = (tmp_path / "delivery.jws").read_text().strip().split(".")[0]
        if json.loads(b64url_decode(header))["kid"] == new_kid.group(1):
            break
        assert time.monotonic() < deadline, "the serving gateway never signed with the rotated key"
    narrowed = veilgate(*fetch_args, "--items", "no_such.item", env=env, check=False)
    assert narrowed.returncode == 1
    assert "unknown data item" in narrowed.stderr
    assert "Traceback" not in narrowed.stderr

    # Rotation: the old wallet stops working, the new one works.
    new_wallet = tmp_path / "new.wallet"
    veilgate("wallet", "create", "--citizen-id", citizen, "--out", str(new_wallet), env=env)
    veilgate("enroll", "--rotate", "--identity", str(tmp_path / "new.wallet.identity.json"), *db)
    refused = veilgate(*fetch_args, env=env, check=False)
    assert refused.returncode == 1
    assert "not a valid Veilgate JWS" in refused.stderr
    fetch_new = [*fetch_args]
    fetch_new[fetch_new.index(str(wallet))] = str(new_wallet)
    assert "61 items" in veilgate(*fetch_new, env=env).stdout

    assert server.stop() == 0
    logs = "".join(server.stdout + server.stderr)
    assert "GetMyData -> OK" in logs
    assert "GetMyData -> INVALID_ARGUMENT ITEM_UNKNOWN" in logs
    assert f"taken up in place of {old_records_key.key_id}: it was rotated" in logs
    assert f"gateway signing key {new_kid.group(1)} taken up in place of" in logs
    assert canary not in logs
    assert citizen not in logs
    assert "Traceback" not in logs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_several_processes_share_the_ports_and_append_to_one_log(tmp_path: Path, database_url: str) -> None:
    """`serve --processes 2`: connections are spread over both processes, every call of either is
    appended to the one log, and the log verifies afterwards."""
    data = tmp_path / "gw"
    policies, vkey = signed_policies(tmp_path)
    data.mkdir()
    (data / "governance.vkey").write_text(vkey + "\n")
    db = ["--data-dir", str(data), "--database-url", database_url]
    veilgate("seed", "--citizens", "3", "--seed", "5", *db)
    port, mtls_port, metrics_port = _free_port(), _free_port(), _free_port()
    server = ServeProcess(
        *db,
        "--policies-dir",
        str(policies),
        "--processes",
        "2",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        listen=f"127.0.0.1:{port}",
        listen_mtls=f"127.0.0.1:{mtls_port}",
    )
    calls = 32
    try:
        assert (server.port, server.mtls_port) == (port, mtls_port)
        # Each process on a CPU of its own, where there are two to give.
        cpus = sorted(os.sched_getaffinity(0))
        pinned = f"2 processes pinned to CPUs {cpus[0]}, {cpus[1]})" if len(cpus) >= 2 else "not pinned to CPUs"
        assert pinned in "".join(server.stdout)
        # A second gateway on the same ports by mistake would quietly share them: it is refused.
        second = veilgate(
            "serve",
            *db,
            "--policies-dir",
            str(policies),
            "--processes",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--listen-mtls",
            f"127.0.0.1:{mtls_port}",
            check=False,
        )
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in second.stderr
        credentials = grpc.ssl_channel_credentials((data / "tls" / "ca.pem").read_bytes())
        for _ in range(calls):  # a connection of its own per call, as separate clients would have
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.secure_channel(f"localhost:{port}", credentials, options=options) as channel:
                stub = citizen_pb2_grpc.CitizenServiceStub(channel)
                stub.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
        # Each process counts its own calls, on its own port; together, every call.
        assert f"metrics (Prometheus, /metrics) on ports {metrics_port}, {metrics_port + 1}, one per process" in (
            "".join(server.stdout)
        )
        counted = 0.0
        for each in (metrics_port, metrics_port + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{each}/metrics", timeout=5) as reply:
                for family in text_string_to_metric_families(reply.read().decode()):
                    counted += sum(s.value for s in family.samples if s.name == "veilgate_calls_total")
        assert counted == calls
    finally:
        assert server.stop() == 0
    logs = "".join(server.stdout + server.stderr)
    served = r"(veilgate-serve-\d+) veilgate\.rpc: /veilgate\.v1\.CitizenService/GetGatewayInfo -> OK"
    served_by = set(re.findall(served, logs))
    assert served_by == {"veilgate-serve-0", "veilgate-serve-1"}, logs[-2000:]
    assert "Traceback" not in logs
    verified = veilgate("audit", "verify", *db)
    entries = int(re.search(r"log verified: (\d+) entries", verified.stdout).group(1))  # type: ignore[union-attr]
    assert entries == calls


def test_when_one_server_process_dies_serve_stops_and_says_so(tmp_path: Path) -> None:
    """A gateway that lost a process must not go on serving at part strength unnoticed: serve stops
    the others and exits non-zero, so that its supervisor restarts the whole."""
    data = tmp_path / "gw"
    policies, vkey = signed_policies(tmp_path)
    data.mkdir()
    (data / "governance.vkey").write_text(vkey + "\n")
    server = ServeProcess(
        "--data-dir",
        str(data),
        "--policies-dir",
        str(policies),
        "--processes",
        "2",
        "--no-pin",
        listen=f"127.0.0.1:{_free_port()}",
        listen_mtls=f"127.0.0.1:{_free_port()}",
    )
    try:
        assert "2 processes, not pinned to CPUs)" in "".join(server.stdout)
        listed = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
        # The server processes, not multiprocessing's resource tracker beside them.
        children = [pid for pid in listed if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(children) == 2
        os.kill(int(children[0]), signal.SIGKILL)
        assert server.proc.wait(30) == 1
    finally:
        if server.proc.poll() is None:
            server.stop()
    errors = "".join(server.stderr)
    assert re.search(r"server process veilgate-serve-\d \(killed by SIGKILL\) stopped", errors), errors
    assert "Traceback" not in errors
    for child in children[1:]:
        assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()


def test_a_port_in_use_fails_serve_with_processes_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "gw"
    policies, vkey = signed_policies(tmp_path)
    data.mkdir()
    (data / "governance.vkey").write_text(vkey + "\n")
    with socket.socket() as taken:  # a listener that does not share its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = veilgate(
            "serve",
            "--processes",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--listen-mtls",
            f"127.0.0.1:{_free_port()}",
            "--data-dir",
            str(data),
            "--policies-dir",
            str(policies),
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"veilgate: error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in result.stderr


def test_of_two_gateways_started_together_on_the_same_ports_one_serves(tmp_path: Path) -> None:
    """Each holds its ports from its check until it stops, so the second finds them taken even when
    it starts before the first one's processes listen (they share the ports with their parent)."""
    policies, vkey = signed_policies(tmp_path)
    port, mtls_port = _free_port(), _free_port()
    gateways = []
    for name in ("a", "b"):
        data = tmp_path / name
        data.mkdir()
        (data / "governance.vkey").write_text(vkey + "\n")
        veilgate("migrate", "--data-dir", str(data))
        gateways.append((data, ["--processes", "2", "--data-dir", str(data), "--policies-dir", str(policies)]))
    serve = [sys.executable, "-m", "veilgate_server.cli", "serve"]
    procs = [
        subprocess.Popen(
            [*serve, "--listen", f"127.0.0.1:{port}", "--listen-mtls", f"127.0.0.1:{mtls_port}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _, args in gateways
    ]
    try:
        deadline = time.monotonic() + 60
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = [p for p in procs if p.poll() is not None]
        assert len(refused) == 1, "both gateways are serving on the same ports"
        time.sleep(3)  # the other one's processes are up by now, and stay up
        [serving] = [p for p in procs if p.poll() is None]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=30) for p in procs]
    assert refused[0].returncode == 1
    assert "Address already in use (is another gateway on it?)" in outputs[procs.index(refused[0])][1]
    assert serving.returncode == 0
    assert "serving on port" in outputs[procs.index(serving)][0]


def test_several_processes_need_fixed_ports(tmp_path: Path) -> None:
    result = veilgate("serve", "--processes", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "--processes share their ports" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_state_serves_later_commands(tmp_path: Path) -> None:
    data = tmp_path / "kept"
    result = veilgate("demo", "--citizens", "3", "--data-dir", str(data))
    assert f"State kept in {data}" in result.stdout
    assert re.search(r"none of the demo citizen's \d+ longer values is in veilgate.db in the clear", result.stdout)
    assert (data / "veilgate.db").exists()
    assert (data / "citizen.wallet").exists()
    assert data.stat().st_mode & 0o777 == 0o700  # records and keys: private to the operator
    key_id = veilgate("keys", "--data-dir", str(data)).stdout
    assert f"records key id:         {RecordsKey.load_or_create(data / 'keys' / 'records.key').key_id}" in key_id
    assert json.loads((data / "gateway-keys.json").read_text())["keys"][0]["kid"] in key_id
    # The demo is re-runnable on kept state (the citizen's keys are rotated to a new wallet).
    assert "key version 2" in veilgate("demo", "--data-dir", str(data)).stdout
    # Each run issued its callers a certificate, on record with its expiry for the operator to renew by.
    for kind in ("institution", "department"):
        listed = veilgate(kind, "list", "--data-dir", str(data)).stdout.splitlines()
        assert listed
        assert all("[certificate expires 20" in line and ", 2 accepted]" in line for line in listed), listed
    server = ServeProcess("--data-dir", str(data), "--policies-dir", str(data / "policies"))
    try:
        fetched = veilgate(
            "wallet",
            "fetch",
            "--wallet",
            str(data / "citizen.wallet"),
            "--target",
            f"localhost:{server.port}",
            "--ca",
            str(data / "tls" / "ca.pem"),
            "--departments",
            "medical_insurance",
            env={"VEILGATE_WALLET_PASSPHRASE": "correct horse battery staple"},
        )
        assert "medical_insurance: 6 items" in fetched.stdout
        assert f"store: sqlite:///{data / 'veilgate.db'}" in "".join(server.stdout)
        records_key = RecordsKey.load_or_create(data / "keys" / "records.key").key_id
        assert f"records sealed at rest under records key {records_key}" in "".join(server.stdout)
    finally:
        # A hang-up (a closed terminal, a log rotation's habit) stops it as SIGTERM does: cleanly,
        # saying so, after the calls in flight and a final checkpoint.
        server.proc.send_signal(signal.SIGHUP)
        assert server.proc.wait(30) == 0
    deadline = time.monotonic() + 10  # the reader thread takes the last lines after the exit
    while "veilgate: stopped" not in "".join(server.stderr) and time.monotonic() < deadline:
        time.sleep(0.05)
    said = "".join(server.stderr)
    assert "veilgate: stopping on SIGHUP: finishing the calls in flight" in said
    assert said.rstrip().endswith("veilgate: stopped")


def test_an_operator_erases_a_citizens_records_and_the_log_still_verifies(tmp_path: Path) -> None:
    data = tmp_path / "kept"
    veilgate("demo", "--citizens", "3", "--data-dir", str(data))
    key = RecordsKey.load_or_create(data / "keys" / "records.key")
    with Store.open(sqlite_url(data), records_key=key) as store:
        first, second = store.records.citizen_ids(limit=2)
        kept = store.records.for_citizen(second)

    unconfirmed = veilgate("erase", first, "--data-dir", str(data), check=False)
    assert unconfirmed.returncode == 1
    assert f"erasing destroys every record of {first} for good; repeat with --yes" in unconfirmed.stderr
    erased = veilgate("erase", first, "--yes", "--data-dir", str(data))
    said = erased.stdout.splitlines()
    assert said[0] == f"erased 61 records of {first}: their data key is destroyed"
    index = int(re.fullmatch(r"logged as entry (\d+) \(the citizen finds it in their trail\)", said[1])[1])  # type: ignore[index]
    again = veilgate("erase", first, "--yes", "--data-dir", str(data))
    assert again.stdout.splitlines()[0] == f"{first} has no records: nothing erased"

    with Store.open(sqlite_url(data), records_key=key) as store:
        assert store.records.for_citizen(first) == []
        assert store.records.for_citizen(second) == kept != []
        [logged] = store.log.entries(index, 1)
        entry = parse_entry(logged.entry)
        assert (entry.method, entry.caller_kind, entry.code) == ("veilgate erase", "operator", "OK")
        pseudonym = store.log.pseudonym_key(first, create=False)
        assert pseudonym is not None
        assert entry.is_about(pseudonym)
        assert index in store.log.indices_for_citizen(first)  # in the citizen's own trail
        assert first.encode() not in logged.entry

    forgotten = veilgate("erase", second, "--yes", "--unlink-trail", "--data-dir", str(data))
    assert forgotten.stdout.splitlines()[1].endswith(
        "their trail is unlinked: nobody can tell any more which entries were theirs"
    )
    with Store.open(sqlite_url(data), records_key=key) as store:
        assert store.records.for_citizen(second) == []
        assert store.log.pseudonym_key(second, create=False) is None
        assert store.log.indices_for_citizen(second) == []  # not even the erasure's own entry
    verified = veilgate("audit", "verify", "--data-dir", str(data))
    assert "verified" in verified.stdout


def test_an_operator_rotates_the_records_key_and_an_interrupted_rotation_finishes(tmp_path: Path) -> None:
    data = tmp_path / "kept"
    veilgate("demo", "--citizens", "3", "--data-dir", str(data))
    key_file = data / "keys" / "records.key"
    old = RecordsKey.load_or_create(key_file)
    with Store.open(sqlite_url(data), records_key=old) as store:
        citizen, other = store.records.citizen_ids(limit=2)
        before = store.records.for_citizen(citizen)

    rotated = veilgate("keys", "--rotate-records-key", "--data-dir", str(data))
    new = RecordsKey.load_or_create(key_file)
    assert new.key_id != old.key_id
    assert rotated.stdout.startswith(
        f"new records key {new.key_id}: 3 citizens' data keys rewrapped; {old.key_id} is destroyed"
    )
    assert not (data / "keys" / "records.key.next").exists()
    assert key_file.stat().st_mode & 0o077 == 0
    with Store.open(sqlite_url(data), records_key=new) as store:
        assert store.records.for_citizen(citizen) == before

    # Interrupted after the data keys were rewrapped, before the new file replaced the old one:
    pending = RecordsKey.load_or_create(data / "keys" / "records.key.next")
    with Store.open(sqlite_url(data)) as store:
        assert store.records.rewrap(new, pending) == 3
    # Meanwhile the gateway's commands work under the key the database names, and say to finish.
    meanwhile = veilgate("erase", other, "--yes", "--data-dir", str(data))
    assert "a records key rotation is staged, or was interrupted; `veilgate keys --rotate-records-key`" in (
        meanwhile.stderr
    )
    assert f"records key {pending.key_id} taken up in place of {new.key_id}" in meanwhile.stderr
    finished = veilgate("keys", "--rotate-records-key", "--data-dir", str(data))
    assert f"new records key {pending.key_id}: 0 citizens' data keys rewrapped" in finished.stdout
    with Store.open(sqlite_url(data), records_key=RecordsKey.load_or_create(key_file)) as store:
        assert store.records.for_citizen(citizen) == before


def test_a_records_key_rotation_staged_on_every_host_never_stops_their_reads(tmp_path: Path, database_url: str) -> None:
    """Replicas on two hosts serve one database, each with its own data directory. The next key is
    staged and copied to the other host first; after the rotation its gateway, which never stopped,
    reads and stores records under the new key, and the rotation run there completes it."""
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    db = ["--database-url", database_url]
    veilgate("seed", "--citizens", "3", "--seed", "7", "--data-dir", str(host_a), *db)
    (host_b / "keys").mkdir(parents=True)
    shutil.copy2(host_a / "keys" / "records.key", host_b / "keys" / "records.key")
    with Settings.from_env(data_dir=str(host_b), database_url=database_url).open_store() as serving:
        citizen = serving.records.citizen_ids(limit=1)[0]
        before = serving.records.for_citizen(citizen)
        staged = veilgate("keys", "--stage-records-key", "--data-dir", str(host_a), *db).stdout
        staged_id = RecordsKey.load(host_a / "keys" / "records.key.next").key_id
        assert f"staged records key {staged_id} in " in staged
        assert serving.records.for_citizen(citizen) == before  # staged, not used
        shutil.copy2(host_a / "keys" / "records.key.next", host_b / "keys" / "records.key.next")
        veilgate("keys", "--rotate-records-key", "--data-dir", str(host_a), *db)
        assert serving.records.for_citizen(citizen) == before
        serving.records.put_many([StoredRecord("c-new", before[0].item_id, before[0].department, before[0].as_of, "1")])
        assert serving.records.key_id == staged_id
    finished = veilgate("keys", "--rotate-records-key", "--data-dir", str(host_b), *db).stdout
    assert f"new records key {staged_id}: 0 citizens' data keys rewrapped" in finished
    assert not (host_b / "keys" / "records.key.next").exists()
    with Store.open(database_url, records_key=RecordsKey.load(host_b / "keys" / "records.key")) as completed:
        assert completed.records.for_citizen("c-new")[0].value_json == "1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "--rotate-records-key"], "no records key at"),
        (["keys", "--stage-records-key"], "no records key at"),
        (["erase", "a b", "--yes"], "citizen_id must not hold spaces"),
        (["erase", "c-1", "--yes"], "no gateway state at"),
        (["seed", "--citizens", "0", "--seed", "1"], "--citizens must be from 1 to 10,000,000"),
        (["seed", "--citizens", "10000001", "--seed", "1"], "--citizens must be from 1 to 10,000,000"),
        (["seed", "--citizens", "5", "--seed", "1", "--as-of", "0001-01-01"], "--as-of must be from 1900-01-01"),
        (["demo", "--citizens", "0"], "--citizens must be from 1 to 10,000,000"),
        (["demo", "--policies-dir", "/nonexistent"], "--policies-dir does not apply"),
        (["enroll"], "give --identity FILE"),
        (["enroll", "--identity", "/nonexistent/i.json"], "identity file /nonexistent/i.json: No such file"),
        (["enroll", "--citizen-id", "x", "--signing-key", "AAAA", "--encryption-key", "AAAA"], "32 bytes"),
        (["migrate", "--database-url", "mysql://nobody@127.0.0.1/x"], "unsupported"),
        (["migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/x"], "could not"),
        (["migrate", "--database-url", "sqlite://"], "an in-memory SQLite database cannot hold"),
        (["migrate", "--database-url", "sqlite:///:memory:"], "an in-memory SQLite database cannot hold"),
        (["migrate", "--database-url", "sqlite:////nonexistent/x.db"], "(unable to open database file)"),
        (["wallet", "fetch", "--wallet", "/nonexistent.wallet", "--target", "localhost:1"], "could not read wallet"),
        (["serve", "--tls-cert", "only-cert.pem"], "--tls-cert and --tls-key go together"),
        (["institution", "add", "--id", "Bad/Id", "--kind", "bank", "--name", "B"], "id must match"),
        (["institution", "add", "--id", "b", "--kind", "bank", "--name", "B", "--trust-domain", "BAD!"], "domain"),
        (["institution", "add", "--id", "b", "--kind", "bank", "--name", "B\x1b[31mred"], "printable characters"),
        (["institution", "add", "--id", "b", "--kind", "bank", "--name", "B", "--out-dir", "/dev/null"], "not a dir"),
        (["institution", "list"], "no gateway state at"),
        (
            ["department", "add", "--id", "ghost_bureau"],
            "the catalog has no department 'ghost_bureau'; its departments are",
        ),
        (["department", "add", "--id", "Bad/Id"], "id must match"),
        (["department", "list"], "no gateway state at"),
        (["department", "enable", "--id", "taxation"], "no gateway state at"),
        (["institution", "disable", "--id", "b"], "no gateway state at"),
        (["institution", "renew", "--id", "Bad/Id"], "id must match"),
        (["institution", "renew", "--id", "b"], "no gateway state at"),
        (["institution", "certificates", "--id", "b"], "no gateway state at"),
        (["department", "revoke-certificate", "--id", "taxation", "--serial", "ab"], "no gateway state at"),
        (["audit", "verify", "--log-key", "garbage"], "the log verifier key is malformed"),
        (["audit", "export", "--out", "x"], "no gateway state at"),
        (["audit", "export", "--out", ""], "--out must not be empty"),
        (["institution", "list", "--database-url", ""], "--database-url must not be empty"),
        (["serve", "--policies-dir", ""], "--policies-dir must not be empty"),
        (["enroll", "--citizen-id", "a\nb", "--signing-key", "A" * 43, "--encryption-key", "A" * 43], "printable"),
        (["wallet", "create", "--citizen-id", "a b", "--out", "{tmp}/w"], "printable characters, without spaces"),
        (["wallet", "create", "--citizen-id", "ab", "--out", "{tmp}/w", "--identity-out", "/nonexistent/i"], "no dir"),
        (["serve", "--listen", "127.0.0.1:99999"], "--listen '127.0.0.1:99999': give host:port, with a port from 0"),
        (["serve", "--listen", "127.0.0.1"], "give host:port"),
        (["serve", "--listen-mtls", "127.0.0.1:-1"], "--listen-mtls '127.0.0.1:-1': give host:port"),
        (["serve", "--trust-domain", "BAD DOMAIN!"], "--trust-domain: a trust domain must be"),
        (["serve", "--gateway-id", "a b+c"], "the gateway id (--gateway-id, VEILGATE_GATEWAY_ID) must match"),
        (["wallet", "fetch", "--wallet", "/nonexistent.wallet", "--target", "localhost:70000"], "a port from 1"),
        (["serve"], "no trusted policy governance key"),
        (["serve", "--governance-key", "garbage"], "governance verifier key 1 is invalid"),
        (["serve", "--governance-key", sys.executable], "takes the verifier key itself (name+hash+key), not a file"),
        (["serve", "--workers", "0"], "--workers must be from 1 to 256 threads per process"),
        (["serve", "--workers", "257"], "--workers must be from 1 to 256 threads per process"),
        (["serve", "--daily-budget", "-1"], "--daily-budget must be from 0 to 1,000,000"),
        (["serve", "--daily-budget", "99999999999999999999"], "--daily-budget must be from 0 to 1,000,000"),
        (["serve", "--processes", "0"], f"--processes must be from 1 to {max_processes()} (4 per CPU"),
        (["serve", "--processes", str(max_processes() + 1)], f"--processes must be from 1 to {max_processes()}"),
    ],
)
def test_bad_input_gives_one_clear_line_and_a_non_zero_exit(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    state = [] if args[0] == "wallet" else ["--data-dir", str(tmp_path / "d")]  # a wallet is a file of its own
    result = veilgate(*args, *state, env={"VEILGATE_WALLET_PASSPHRASE": "x"}, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.startswith("veilgate: error: ")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before a directory, a key or a file is made


@pytest.mark.parametrize(
    "command",
    [
        ["wallet", "create", "--citizen-id", "ab", "--out", "{tmp}/w"],
        ["wallet", "fetch", "--wallet", "{tmp}/w", "--target", "localhost:1"],
        ["wallet", "policies", "--target", "localhost:1"],
        ["policy", "keygen", "--out", "{tmp}/k"],
    ],
)
@pytest.mark.parametrize("option", ["--data-dir", "--database-url", "--policies-dir"])
def test_commands_of_a_file_of_their_own_refuse_a_gateways_state_options(
    tmp_path: Path, command: list[str], option: str
) -> None:
    """A citizen's wallet and a governance key are files of their own: a gateway's data directory,
    store or policies given to their commands would have been ignored, silently; they are refused."""
    command = [a.replace("{tmp}", str(tmp_path)) for a in command]
    result = veilgate(*command, option, str(tmp_path / "elsewhere"), check=False)
    assert result.returncode == 2
    assert result.stderr.endswith(f"veilgate: error: unrecognized arguments: {option} {tmp_path / 'elsewhere'}\n")
    assert list(tmp_path.iterdir()) == []  # refused before a wallet or a key is written


def test_output_to_a_reader_that_went_away_stops_quietly() -> None:
    """`veilgate ... | head -1`: the rest of the output has nowhere to go; no error about it."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "veilgate_server.cli", "policy", "list"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")


def test_an_empty_directory_argument_is_refused_not_read_as_the_current_one() -> None:
    result = veilgate("audit", "verify-export", "", check=False)
    assert (result.returncode, result.stderr) == (1, "veilgate: error: DIRECTORY must not be empty\n")


def test_files_in_the_wrong_place_are_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    as_data_dir = veilgate("migrate", "--data-dir", str(tmp_path / "a-file"), check=False)
    assert as_data_dir.returncode == 1
    assert f"data directory {tmp_path / 'a-file'} is a file, not a directory" in as_data_dir.stderr
    key = tmp_path / "d" / "keys" / "gateway-signing.key"
    key.mkdir(parents=True)
    as_key = veilgate("keys", "--data-dir", str(tmp_path / "d"), check=False)
    assert as_key.returncode == 1
    assert f"cannot read gateway signing key {key}: Is a directory" in as_key.stderr


def test_an_institution_whose_certificate_cannot_be_written_is_not_registered(tmp_path: Path) -> None:
    """Otherwise it stays registered with no certificate anywhere, and adding it again is refused."""
    data = ["--data-dir", str(tmp_path / "d")]
    veilgate("migrate", *data)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700  # the records' and keys' directory is private
    add = ["institution", "add", "--id", "bank-w", "--kind", "bank", "--name", "Bank W", *data]
    (tmp_path / "a-file").write_text("")
    refused = veilgate(*add, "--out-dir", str(tmp_path / "a-file" / "sub"), check=False)
    assert refused.returncode == 1
    assert "cannot write the certificate to" in refused.stderr
    assert "no institutions registered" in veilgate("institution", "list", *data).stdout
    added = veilgate(*add, "--out-dir", str(tmp_path / "out"))
    assert "registered bank bank-w" in added.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["client.key", "client.pem", "gateway-ca.pem"]
    again = veilgate(*add, "--out-dir", str(tmp_path / "out2"), check=False)
    assert "institution is already registered" in again.stderr
    assert not (tmp_path / "out2").exists()  # the first one's files are not replaced, nor new ones made


def test_a_renewal_never_replaces_files_in_its_out_dir(tmp_path: Path) -> None:
    """A bank's certificate and key in --out-dir are the ones it serves with: a renewal into the same
    directory, or into one holding another gateway's CA certificate, is refused and changes
    nothing, on disk or on record. The same CA certificate is kept as it is."""
    data = ["--data-dir", str(tmp_path / "d")]
    veilgate("migrate", *data)
    first = tmp_path / "first"
    veilgate(
        "institution", "add", "--id", "bank-r", "--kind", "bank", "--name", "Bank R", "--out-dir", str(first), *data
    )
    held = {p.name: p.read_bytes() for p in first.iterdir()}
    renew = ["institution", "renew", "--id", "bank-r", *data, "--out-dir"]

    def on_record() -> list[str]:
        return veilgate("institution", "certificates", "--id", "bank-r", *data).stdout.splitlines()

    same = veilgate(*renew, str(first), check=False)
    assert (same.returncode, same.stderr.strip()) == (
        1,
        f"veilgate: error: {first} already holds client.pem and client.key: choose another --out-dir",
    )
    other_ca = tmp_path / "other-ca"
    other_ca.mkdir()
    (other_ca / "gateway-ca.pem").write_bytes(b"another gateway's CA certificate\n")
    refused = veilgate(*renew, str(other_ca), check=False)
    assert refused.returncode == 1
    assert "already holds another gateway-ca.pem" in refused.stderr
    assert {p.name: p.read_bytes() for p in first.iterdir()} == held
    assert [p.name for p in other_ca.iterdir()] == ["gateway-ca.pem"]
    assert (other_ca / "gateway-ca.pem").read_bytes() == b"another gateway's CA certificate\n"
    assert len(on_record()) == 1

    kept_ca = tmp_path / "kept-ca"
    kept_ca.mkdir()
    (kept_ca / "gateway-ca.pem").write_bytes(held["gateway-ca.pem"])
    veilgate(*renew, str(kept_ca))
    assert sorted(p.name for p in kept_ca.iterdir()) == ["client.key", "client.pem", "gateway-ca.pem"]
    assert (kept_ca / "client.pem").read_bytes() != held["client.pem"]
    assert len(on_record()) == 2


def test_bank_journey_with_cli_issued_certificates(served: tuple[ServeProcess, Path, str], tmp_path: Path) -> None:
    """The operator registers a bank with the CLI; the bank's engineer uses the files it wrote."""
    server, data, database_url = served
    db = ["--data-dir", str(data), "--database-url", database_url]
    added = veilgate("institution", "add", "--id", "bank-e2e", "--kind", "bank", "--name", "E2E Bank", *db)
    assert "registered bank bank-e2e" in added.stdout
    listed = veilgate("institution", "list", *db).stdout
    assert "bank-e2e                 bank     enabled   E2E Bank  [certificate expires 20" in listed
    creds = data / "institutions" / "bank-e2e"
    assert (creds / "client.key").stat().st_mode & 0o077 == 0
    with Store.open(database_url) as store:
        citizen = store.records.citizen_ids(limit=1)[0]
    wallet = CitizenWallet.generate(citizen)
    (tmp_path / "id.json").write_text(json.dumps(wallet.public_identity()))
    veilgate("enroll", "--identity", str(tmp_path / "id.json"), *db)
    ca = (creds / "gateway-ca.pem").read_bytes()
    with InstitutionClient(
        f"localhost:{server.mtls_port}",
        certificate_chain=(creds / "client.pem").read_bytes(),
        private_key=(creds / "client.key").read_bytes(),
        root_certificates=ca,
        institution_id="bank-e2e",
    ) as bank:
        policies = {p.id: p for p in bank.list_policies()}
        with CitizenClient(f"localhost:{server.port}", wallet, root_certificates=ca) as citizen_client:
            token, _ = citizen_client.grant_consent(
                institution_id="bank-e2e",
                purpose="credit.mortgage",
                policies=[PolicyPin("credit.mortgage_prequal", policies["credit.mortgage_prequal"].sha256)],
            )
        result = bank.evaluate("credit.mortgage_prequal", token, {"home_type": "first_home"})
        assert result.decision in {"ELIGIBLE", "NOT_ELIGIBLE", "REFER"}
        # The certificate is renewed before it expires: both work until the bank has moved over.
        renewed = veilgate("institution", "renew", "--id", "bank-e2e", *db).stdout
        old_serial = veilgate("institution", "certificates", "--id", "bank-e2e", *db).stdout.splitlines()[1].split()[0]
        assert f"--id bank-e2e --serial {old_serial}" in renewed
        [new_dir] = creds.glob("renewed-*")
        assert (new_dir / "client.key").stat().st_mode & 0o077 == 0
        with InstitutionClient(
            f"localhost:{server.mtls_port}",
            certificate_chain=(new_dir / "client.pem").read_bytes(),
            private_key=(new_dir / "client.key").read_bytes(),
            root_certificates=ca,
            institution_id="bank-e2e",
        ) as moved:
            assert {p.id for p in moved.list_policies()} == set(policies)
            assert {p.id for p in bank.list_policies()} == set(policies)
            revoked = veilgate("institution", "revoke-certificate", "--id", "bank-e2e", "--serial", old_serial, *db)
            assert f"certificate {old_serial} of institution bank-e2e is revoked since" in revoked.stdout
            with pytest.raises(CertificateNotAccepted):
                bank.list_policies()
            assert {p.id for p in moved.list_policies()} == set(policies)
        listed = veilgate("institution", "certificates", "--id", "bank-e2e", *db).stdout.splitlines()
        assert [line.split()[1] for line in listed] == ["accepted", "REVOKED"]
        assert all(" expires 20" in line and "(in 39" in line for line in listed)  # 397 days from issue
        assert listed[1].startswith(old_serial)
        wrong = veilgate("institution", "revoke-certificate", "--id", "bank-e2e", "--serial", "0xABC", *db, check=False)
        assert wrong.returncode == 1
        assert "no certificate with serial '0xABC' is on record for institution bank-e2e" in wrong.stderr
        unknown = veilgate("institution", "disable", "--id", "bank-e2f", *db, check=False)
        assert unknown.returncode == 1
        assert "no institution 'bank-e2f' is registered" in unknown.stderr
        veilgate("institution", "disable", "--id", "bank-e2e", *db)
        with pytest.raises(InstitutionDisabled):
            bank.list_policies()
    assert set(policies) == {"credit.consumer_loan", "credit.sme_loan", "credit.mortgage_prequal"}
    assert server.stop() == 0
    logs = "".join(server.stdout + server.stderr)
    assert "EligibilityService/Evaluate -> OK" in logs
    assert "INSTITUTION_DISABLED" in logs
    assert "CERTIFICATE_NOT_ACCEPTED" in logs
    assert citizen not in logs


def test_department_journey_with_cli_issued_certificates(
    served: tuple[ServeProcess, Path, str], tmp_path: Path
) -> None:
    """The operator registers a department with the CLI; the department's engineer pushes with the
    files it wrote; the citizen reads the record; disabling the department stops its pushes."""
    server, data, database_url = served
    db = ["--data-dir", str(data), "--database-url", database_url]
    added = veilgate("department", "add", "--id", "social_insurance", *db)
    assert "registered department social_insurance (" in added.stdout
    assert "it may push its 8 catalog items" in added.stdout
    again = veilgate("department", "add", "--id", "social_insurance", *db, check=False)
    assert (again.returncode, again.stderr.strip()) == (1, "veilgate: error: department is already registered")
    assert "social_insurance         enabled" in veilgate("department", "list", *db).stdout
    creds = data / "departments" / "social_insurance"
    assert (creds / "client.key").stat().st_mode & 0o077 == 0
    with Store.open(database_url) as store:
        citizen = store.records.citizen_ids(limit=1)[0]
    canary = "CANARY-department-e2e-7a21"
    today = datetime.now(UTC).date()
    client = DepartmentClient(
        f"localhost:{server.mtls_port}",
        certificate_chain=(creds / "client.pem").read_bytes(),
        private_key=(creds / "client.key").read_bytes(),
        root_certificates=(creds / "gateway-ca.pem").read_bytes(),
    )
    with client:
        receipt = client.push([Record(citizen, "social_insurance.current_employer", today, canary)])
        assert receipt.stored == 1
        with AuditClient.connect(
            f"localhost:{server.port}",
            root_certificates=(creds / "gateway-ca.pem").read_bytes(),
            log_verifier_key=(data / "log.vkey").read_text().strip(),
        ) as audit:
            entry, _ = audit.verify_push(receipt)
        assert (entry.caller_kind, entry.caller_id) == ("department", "social_insurance")
        veilgate("department", "disable", "--id", "social_insurance", *db)
        with pytest.raises(DepartmentDisabled):
            client.push([Record(citizen, "social_insurance.current_employer", today, "later")])
    wallet = CitizenWallet.generate(citizen)
    (tmp_path / "id.json").write_text(json.dumps(wallet.public_identity()))
    veilgate("enroll", "--identity", str(tmp_path / "id.json"), *db)
    with CitizenClient(
        f"localhost:{server.port}", wallet, root_certificates=(creds / "gateway-ca.pem").read_bytes()
    ) as me:
        [item] = me.get_my_data(items=["social_insurance.current_employer"]).items
    assert (item.value, item.as_of) == (canary, today)
    assert server.stop() == 0
    logs = "".join(server.stdout + server.stderr)
    assert "IngestService/PushRecords -> OK" in logs
    assert "DEPARTMENT_DISABLED" in logs
    assert canary not in logs
    assert citizen not in logs


def test_a_citizen_consents_watches_and_revokes_with_the_cli(
    served: tuple[ServeProcess, Path, str], tmp_path: Path
) -> None:
    """What the SDK lets a citizen app do, from the command line: read what a policy reads, consent
    to it for one bank, see the bank's evaluation and the log's entries, and revoke."""
    server, data, database_url = served
    db = ["--data-dir", str(data), "--database-url", database_url]
    env = {"VEILGATE_WALLET_PASSPHRASE": PASSPHRASE}
    with Store.open(database_url) as store:
        citizen = store.records.citizen_ids(limit=1)[0]
    wallet = tmp_path / "me.wallet"
    veilgate("wallet", "create", "--citizen-id", citizen, "--out", str(wallet), env=env)
    veilgate("enroll", "--identity", str(tmp_path / "me.wallet.identity.json"), *db)
    veilgate("institution", "add", "--id", "bank-c", "--kind", "bank", "--name", "Bank C", *db)
    gateway = ["--target", f"localhost:{server.port}", "--ca", str(data / "tls" / "ca.pem")]
    mine = [*gateway, "--wallet", str(wallet)]

    policies = veilgate("wallet", "policies", *gateway).stdout  # public: no wallet, no passphrase
    assert "credit.consumer_loan v1  purpose credit.consumer_loan, asked by: bank" in policies
    assert "reads: social_insurance.insured_status, " in policies
    unknown = veilgate("wallet", "grant", *mine, "--institution", "bank-c", "--purpose", "credit.consumer_loan",
                       "--policy", "credit.payday", env=env, check=False)  # fmt: skip
    assert (unknown.returncode, unknown.stderr) == (
        1,
        "veilgate: error: this gateway has no policy credit.payday (see `veilgate wallet policies`)\n",
    )
    granted = veilgate("wallet", "grant", *mine, "--institution", "bank-c", "--purpose", "credit.consumer_loan",
                       "--policy", "credit.consumer_loan", "--max-uses", "2", env=env)  # fmt: skip
    token = granted.stdout.strip()  # the token alone on stdout, for the bank
    consent_id = jose.unverified_claims(token, typ=CONSENT_TYP).claims["jti"]
    assert f"consent {consent_id} registered: bank-c may ask up to 2 time(s)" in granted.stderr
    assert f"revoke with `veilgate wallet revoke --consent={consent_id}`" in granted.stderr
    assert "which reads:\n  social_insurance.insured_status, " in granted.stderr

    creds = data / "institutions" / "bank-c"
    with InstitutionClient(
        f"localhost:{server.mtls_port}",
        certificate_chain=(creds / "client.pem").read_bytes(),
        private_key=(creds / "client.key").read_bytes(),
        root_certificates=(creds / "gateway-ca.pem").read_bytes(),
    ) as bank:
        decision = bank.evaluate("credit.consumer_loan", token, {"requested_amount_band": "up_to_50k"}).decision
        seen = veilgate("wallet", "evaluations", *mine, env=env).stdout
        assert re.search(rf"  bank-c  credit.consumer_loan  {decision}  \(consent {consent_id}\)", seen)
        listed = veilgate("wallet", "consents", *mine, env=env).stdout
        assert re.search(rf"^{consent_id}  bank-c  .* 1/2 uses  active until ", listed)
        revoked = veilgate("wallet", "revoke", *mine, "--consent", consent_id, env=env).stdout
        assert revoked.startswith(f"consent {consent_id} of bank-c revoked as of ")
        with pytest.raises(ConsentRevoked):
            bank.evaluate("credit.consumer_loan", token, {"requested_amount_band": "up_to_50k"})
    assert f"{consent_id}  bank-c  " in veilgate("wallet", "consents", *mine, env=env).stdout
    assert " revoked " in veilgate("wallet", "consents", *mine, env=env).stdout
    history = veilgate("wallet", "history", *mine, env=env).stdout
    assert "entries about you in the audit log, each proven included under a signed checkpoint" in history
    assert re.search(rf"  bank-c  Evaluate  {decision}", history)
    assert re.search(r"  bank-c  Evaluate  CONSENT_REVOKED", history)
    assert citizen not in history


def test_an_auditor_follows_the_log_from_visit_to_visit_and_catches_a_rewrite(
    served: tuple[ServeProcess, Path, str], tmp_path: Path
) -> None:
    """`audit follow` keeps the checkpoint of each visit and proves the next one extends it. A
    checkpoint the gateway's own key signed for a history it no longer has (a larger log rolled
    back, or another root at the same size: a fork) is reported, and the evidence kept."""
    server, data, database_url = served
    log_key = (data / "log.vkey").read_text().strip()
    kept = tmp_path / "kept.checkpoint"
    follow = ["audit", "follow", "--target", f"localhost:{server.port}", "--ca", str(data / "tls" / "ca.pem")]
    follow += ["--log-key", log_key, "--checkpoint", str(kept)]
    ca = (data / "tls" / "ca.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials(ca)

    def calls(count: int) -> None:
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            for _ in range(count):
                citizen_pb2_grpc.CitizenServiceStub(channel).GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest())

    calls(2)
    first = veilgate(*follow).stdout
    size = int(re.search(r"at (\d+) entries in", first).group(1))  # type: ignore[union-attr]
    assert first.startswith("first visit: kept the checkpoint of ")
    calls(3)
    with AuditClient.connect(f"localhost:{server.port}", root_certificates=ca, log_verifier_key=log_key) as audit:
        audit.checkpoint(min_tree_size=size + 3)  # signed now, rather than within the next second
    second = veilgate(*follow).stdout
    grown = re.search(r"the log at (\d+) entries extends the one kept at (\d+) \((\d+) more\)", second)
    assert grown is not None
    assert int(grown.group(2)) == size
    assert int(grown.group(1)) >= size + 3
    size = int(grown.group(1))

    signer = Settings.from_env(data_dir=str(data), database_url=database_url).load_log_signer()
    for forged_size, what in ((size + 100, f"the log holds {size} entries, fewer than"), (size, "the log forked")):
        forged = signer.sign(checkpoint_body(signer.name, forged_size, b"\x07" * 32))
        kept.write_text(forged)
        refused = veilgate(*follow, check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            f"veilgate: error: the gateway's log does not extend the checkpoint kept in {kept}"
        )
        assert what in refused.stderr
        assert kept.read_text() == forged  # the evidence is not replaced
    kept.write_text(NoteSigner.generate(signer.name).sign(checkpoint_body(signer.name, 1, b"\x07" * 32)))
    wrong_key = veilgate(*follow, check=False)
    assert (wrong_key.returncode, "does not verify with the pinned log key" in wrong_key.stderr) == (1, True)


def test_policy_test_command(tmp_path: Path) -> None:
    passed = veilgate("policy", "test")
    assert re.search(r"5 policies, \d+ cases passed, 0 failed", passed.stdout)
    policies = tmp_path / "policies"
    shutil.copytree(default_policies_dir(), policies, ignore=shutil.ignore_patterns("MANIFEST"))
    tests = policies / "credit" / "consumer_loan" / "v1" / "tests.yaml"
    tests.write_text(tests.read_text().replace("decision: ELIGIBLE", "decision: REFER", 1))
    failed = veilgate("policy", "test", "--policies-dir", str(policies), check=False)
    assert failed.returncode == 1
    assert "consumer_loan" in failed.stdout + failed.stderr


def test_server_refuses_to_start_without_a_valid_signed_manifest(tmp_path: Path) -> None:
    policies, vkey = signed_policies(tmp_path)
    data = ["--data-dir", str(tmp_path / "d"), "--policies-dir", str(policies)]
    no_key = veilgate("serve", *data, check=False)
    assert no_key.returncode == 1
    assert "no trusted policy governance key" in no_key.stderr
    policy = policies / "credit" / "sme_loan" / "v1" / "policy.yaml"
    policy.write_text(policy.read_text().replace("up_to_300k", "up_to_301k"))
    changed = veilgate("serve", *data, "--governance-key", vkey, check=False)
    assert changed.returncode == 1
    assert "credit/sme_loan/v1/policy.yaml was changed since the manifest was signed" in changed.stderr
    policy.write_text(policy.read_text().replace("up_to_301k", "up_to_300k"))  # as signed again
    catalog = policies / "catalog.yaml"
    catalog.write_text(catalog.read_text().replace("sensitivity: 4", "sensitivity: 1", 1))
    recatalogued = veilgate("serve", *data, "--governance-key", vkey, check=False)
    assert recatalogued.returncode == 1
    assert "catalog.yaml was changed since the manifest was signed" in recatalogued.stderr
    (policies / "MANIFEST").unlink()
    missing = veilgate("serve", *data, "--governance-key", vkey, check=False)
    assert missing.returncode == 1
    assert "veilgate policy sign" in missing.stderr
    for result in (no_key, changed, recatalogued, missing):
        assert "Traceback" not in result.stderr


def test_audit_verify_and_export_after_the_demo(tmp_path: Path) -> None:
    data = tmp_path / "kept"
    veilgate("demo", "--citizens", "3", "--data-dir", str(data))
    verified = veilgate("audit", "verify", "--data-dir", str(data))
    assert re.search(
        r"log verified: \d+ entries, \d+ stored subtree hashes, [1-9]\d* signed checkpoints", verified.stdout
    )
    alone = veilgate("audit", "verify", "--data-dir", str(data), "--workers", "1")
    assert alone.stdout == verified.stdout  # a log this short is verified in one pass either way
    for where in (data, tmp_path / "no-such-data"):  # the range is named before any file is looked for
        for workers in ("0", "17"):
            refused = veilgate("audit", "verify", "--data-dir", str(where), "--workers", workers, check=False)
            assert refused.returncode == 1
            assert refused.stderr == "veilgate: error: --workers must be from 1 to 16 processes\n"
    exported = veilgate("audit", "export", "--data-dir", str(data), "--out", str(tmp_path / "export"))
    assert "exported" in exported.stdout
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"entries.jsonl", "checkpoint", "log.vkey"}

    # The auditor's side: the export alone, the gateway's published key, and a checkpoint kept from
    # before (here the export's own, then one from a later export).
    export, key = tmp_path / "export", (data / "log.vkey").read_text().strip()
    (tmp_path / "kept.checkpoint").write_text((export / "checkpoint").read_text())
    checked = veilgate("audit", "verify-export", str(export), "--log-key", key)
    assert re.search(r"export verified: \d+ entries hash to the root signed by veilgate.local/log", checked.stdout)
    assert re.search(r"outcomes: OK \d+", checked.stdout)
    veilgate("demo", "--data-dir", str(data))  # the log grows
    veilgate("audit", "export", "--data-dir", str(data), "--out", str(tmp_path / "later"))
    grown = veilgate("audit", "verify-export", str(tmp_path / "later"), "--since", str(tmp_path / "kept.checkpoint"))
    kept_size = int((tmp_path / "kept.checkpoint").read_text().splitlines()[1])
    assert f"the log only grew since the earlier checkpoint at size {kept_size}" in grown.stdout
    assert int((tmp_path / "later" / "checkpoint").read_text().splitlines()[1]) > kept_size
    assert "pin the gateway's published key with --log-key" in grown.stdout
    lines = (export / "entries.jsonl").read_text().splitlines()
    (export / "entries.jsonl").write_text("\n".join([*lines[:2], *lines[3:]]) + "\n")
    gap = veilgate("audit", "verify-export", str(export), "--log-key", key, check=False)
    assert gap.returncode == 1
    assert gap.stderr == "veilgate: error: line 3: entry 3 where entry 2 was due\n"

    with sqlite3.connect(data / "veilgate.db") as db:
        db.execute("UPDATE log_entries SET entry = ? WHERE idx = 3", (b'{"forged":true}',))
    tampered = veilgate("audit", "verify", "--data-dir", str(data), check=False)
    assert tampered.returncode == 1
    assert "entry 3 was changed" in tampered.stderr
    assert "Traceback" not in tampered.stderr
