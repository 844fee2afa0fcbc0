"""The wire contracts from another language: a Node.js client (``tests/interop/node``), written from
the protos and their documented formats alone, drives a real gateway over TLS and mutual TLS.

It pushes a record as a department, fetches and opens the citizen's sealed delivery, signs and
registers a consent, evaluates as a bank, revokes, and checks every receipt as an auditor: JWS
signatures with Node's own Ed25519, the sealed box with libsodium, checkpoints as C2SP signed notes,
RFC 9162 proofs. What it reports is compared here with what the Python side knows.

Needs Node.js 18+ and npm (the client's packages are installed from its lock file on first use).
Skipped with the reason when they are missing; CI sets ``VEILGATE_REQUIRE_NODE=1`` to fail instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import pytest
from conftest import GatewayHarness

from veilgate import CitizenWallet, GatewayKey, verify_result
from veilgate._internal import jose
from veilgate.delivery import DELIVERY_TYP, MAX_DELIVERY_BYTES
from veilgate.result import request_hash
from veilgate.v1 import ingest_pb2

NODE_DIR = Path(__file__).parent / "node"
REQUIRE_NODE_ENV = "VEILGATE_REQUIRE_NODE"
POLICY = "credit.consumer_loan"
PARAMETERS = {"requested_amount_band": "up_to_50k"}
PUSHED_ITEM = "social_insurance.current_employer"
FOREIGN_ITEM = "taxation.annual_income_last_year"

pytestmark = pytest.mark.node


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_NODE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_NODE_ENV}=1 requires the Node.js interop tests")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    """The command that runs the Node.js client, its packages installed from the lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("Node.js and npm are not on PATH")
    assert node is not None
    assert npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        _unavailable(f"Node.js {version} is older than 18")
    lock = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE_DIR / "node_modules" / ".veilgate-lock-sha256"
    if not stamp.is_file() or stamp.read_text() != lock:
        try:
            installed = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _unavailable("npm did not install the Node.js client's packages within 300 s")
        if installed.returncode != 0:
            lines = [line for line in installed.stderr.splitlines() if line.startswith("npm error ")]
            why = next((line for line in lines if "Error" in line), lines[0] if lines else "(no output)")
            _unavailable(f"npm could not install the Node.js client's packages: {why}")
        stamp.write_text(lock)
    return [node, str(NODE_DIR / "client.mjs")]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _run(command: list[str], job: dict[str, Any]) -> dict[str, Any]:
    ran = subprocess.run(command, input=json.dumps(job), capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, f"the Node.js client failed:\n{ran.stderr}"
    report: dict[str, Any] = json.loads(ran.stdout)
    return report


def test_a_node_client_uses_every_service_and_checks_every_signature_and_proof(
    gateway_harness: GatewayHarness, node_client: list[str]
) -> None:
    gw = gateway_harness
    citizen = gw.citizen_ids[0]
    signing, encryption = nacl.signing.SigningKey.generate(), nacl.public.PrivateKey.generate()
    wallet = gw.enroll(citizen, CitizenWallet(citizen, signing_key=signing, encryption_key=encryption))
    bank = gw.register_institution("bank-node", "bank")
    department = gw.register_department("social_insurance")
    canary = "Canary Works 7f3c9e21"
    record = {
        "citizen_id": citizen,
        "item_id": PUSHED_ITEM,
        "as_of": datetime.now(UTC).date().isoformat(),
        "value_json": json.dumps(canary),
    }
    keys = [{"key_id": kid, "public_key": _b64(raw)} for kid, raw in gw.gateway.signer.published]
    job = {
        "target": gw.target,
        "mtls_target": gw.mtls_target,
        "ca_pem": gw.ca_pem.decode("ascii"),
        "gateway_keys": keys,
        "log_verifier_key": gw.gateway.log_signer.verifier_key_string(),
        "citizen": {
            "id": citizen,
            "key_id": jose.jwk_thumbprint(wallet.signing_public_key),
            "signing_seed": _b64(bytes(signing)),
            "signing_public_key": _b64(wallet.signing_public_key),
            "encryption_secret": _b64(bytes(encryption)),
        },
        "bank": {
            "id": bank.institution_id,
            "cert_pem": bank.certificate_pem.decode("ascii"),
            "key_pem": bank.private_key_pem.decode("ascii"),
        },
        "department": {
            "record": record,
            "foreign_item": FOREIGN_ITEM,
            "cert_pem": department.certificate_pem.decode("ascii"),
            "key_pem": department.private_key_pem.decode("ascii"),
        },
        "policy_id": POLICY,
        "parameters": PARAMETERS,
    }

    report = _run(node_client, job)

    assert report["gateway"] == {"id": gw.gateway.gateway_id, "keys_match_pins": True, "log_key_matches_pin": True}

    # The push: stored, and its public entry's request hash is salted as documented, byte for byte.
    push = report["push"]
    assert (push["stored"], push["stale"]) == (1, [])
    request = ingest_pb2.PushRecordsRequest(records=[ingest_pb2.PushedRecord(**record)])
    python_bytes = request.SerializeToString(deterministic=True)
    assert push["unsalted_request"] == jose.b64url_encode(hashlib.sha256(python_bytes).digest())
    assert report["audit"]["push_entry"]["request"] == push["salted_request"] != push["unsalted_request"]
    assert report["audit"]["push_entry"]["caller"] == {"kind": "department", "id": "social_insurance"}
    assert report["push_of_another_department"] == {"code": "PERMISSION_DENIED", "reason": "ITEM_NOT_OWNED"}

    # The delivery Node opened is the one the Python wallet sees, the pushed value among its items.
    delivery = report["delivery"]
    assert (delivery["sub"], delivery["iss"], delivery["bound_to_request"]) == (citizen, gw.gateway.gateway_id, True)
    with gw.client(wallet) as client:
        python_delivery = client.get_my_data()
        consents = client.list_consents()
    python_items = jose.unverified_claims(
        python_delivery.signed_jws, typ=DELIVERY_TYP, max_bytes=MAX_DELIVERY_BYTES
    ).claims["items"]
    assert delivery["items"] == python_items
    assert {"id": PUSHED_ITEM, "value": canary}.items() <= next(
        i for i in delivery["items"] if i["id"] == PUSHED_ITEM
    ).items()
    assert delivery["watermark"] != python_delivery.watermark
    assert report["delivery_replayed"] == {"code": "ALREADY_EXISTS", "reason": "TOKEN_REPLAYED"}

    # The consent Node signed was accepted, used once and revoked.
    (consent,) = [c for c in consents if c.consent_id == report["consent"]["id"]]
    assert (consent.institution_id, consent.uses, consent.revoked_at is not None) == ("bank-node", 1, True)

    # The result Node verified is one the Python SDK verifies too, answering the request Node hashed.
    result = report["result"]
    assert (result["bank_sees_policy"], result["answers_this_request"], result["pins_the_consented_text"]) == (
        True,
        True,
        True,
    )
    verified = verify_result(
        result["signed_result"],
        gateway_keys=[GatewayKey(k["key_id"], base64.b64decode(k["public_key"])) for k in keys],
        institution_id="bank-node",
        expected_request=request_hash(
            consent_id=consent.consent_id,
            policy_id=POLICY,
            request_id=result["claims"]["request_id"],
            parameters=PARAMETERS,
        ),
    )
    assert verified.decision == result["claims"]["decision"]
    assert report["refusals"] == {
        "unknown_policy": {"code": "NOT_FOUND", "reason": "POLICY_UNKNOWN"},
        "forged_consent": {"code": "UNAUTHENTICATED", "reason": "TOKEN_INVALID"},
        "after_revocation": {"code": "PERMISSION_DENIED", "reason": "CONSENT_REVOKED"},
    }
    assert report["citizen_sees"] == [
        {"institution": "bank-node", "policy": POLICY, "request_id": result["claims"]["request_id"]}
    ]

    # The auditor's view: the receipts are entries under a checkpoint, in a log that only grew.
    audit = report["audit"]
    assert (audit["result_entry_is_the_result"], audit["data_entry_is_the_delivery"]) == (True, True)
    assert audit["result_entry"]["caller"] == {"kind": "institution", "id": "bank-node"}
    assert audit["result_entry"]["decision"] == verified.decision
    assert audit["result_entry"]["consent"] == consent.consent_id
    assert int(audit["first"]["tree_size"]) < int(audit["last"]["tree_size"])
    mine = {h["index"]: h["method"] for h in report["history"] if h["mine"]}
    assert mine[result["log_index"]] == "/veilgate.v1.EligibilityService/Evaluate"
    assert mine[delivery["log_index"]] == "/veilgate.v1.CitizenService/GetMyData"
    assert report["audit"]["push_entry"].get("subject") is None
    assert all(h["mine"] for h in report["history"])

    # Every check Node made also refused a tampered copy.
    assert report["tampered_rejected"] == dict.fromkeys(
        [
            "result_signature",
            "result_as_delivery",
            "checkpoint_root",
            "inclusion_proof",
            "entry_bytes",
            "subject_under_another_key",
            "consistency_proof",
            "sealed_box",
        ],
        True,
    )

    # The pushed value reached the citizen and nothing the bank or the public log holds.
    bank_visible = json.dumps([result, report["refusals"], audit, report["history"]])
    assert canary not in bank_visible
