"""``veilgate demo``: the whole product on one machine, told as a story.

An embedded gateway (real TLS and mutual TLS, real SQLite or PostgreSQL, real keys) on free ports; a
synthetic population; policies signed by a throwaway governance key; a citizen who creates a wallet,
is enrolled, fetches and verifies their records and grants consents; a bank that evaluates a consumer
loan and a mortgage pre-qualification; an insurer that verifies a claim; a revocation that stops the
next evaluation; and the citizen's view of who asked what.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from veilgate import (
    AuditClient,
    CitizenClient,
    CitizenWallet,
    DepartmentClient,
    EligibilityResult,
    InstitutionClient,
    Record,
    gateway_keys_from_jwks,
    verify_delivery,
)
from veilgate.citizen import GET_MY_DATA
from veilgate.errors import (
    CitizenAlreadyEnrolled,
    ConsentRevoked,
    DepartmentAlreadyRegistered,
    InstitutionAlreadyRegistered,
    InternalError,
    ItemNotOwned,
    TokenReplayed,
)
from veilgate_server.admin import CitizenIdentity, enroll, seed_population
from veilgate_server.config import Settings, default_policies_dir, ensure_data_dir
from veilgate_server.core.manifest import ManifestInvalid
from veilgate_server.crypto import canonical_json, ensure_local_tls, peer_certificate
from veilgate_server.crypto.institutions import InstitutionCA
from veilgate_server.gateway import Gateway
from veilgate_server.governance import (
    MANIFEST_NAME,
    catalog_digest,
    create_governance_key,
    policy_files,
    sign_manifest,
    verify_manifest,
)
from veilgate_server.rpc.server import ServerTls, build_server
from veilgate_server.storage import Store

__all__ = ["run_demo"]

PUSHING_DEPARTMENT = "social_insurance"
EMPLOYER_ITEM = "social_insurance.current_employer"
DEMO_PASSPHRASE = "correct horse battery staple"  # noqa: S105  (a throwaway demo wallet)
BANK, INSURER = "bank-of-jinan", "qilu-insurance"


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(*, data_dir: Path | None, database_url: str | None, citizens: int, seed: int) -> int:
    keep = data_dir is not None
    root = data_dir if data_dir is not None else Path(tempfile.mkdtemp(prefix="veilgate-demo-"))
    ensure_data_dir(root)
    try:
        _run(root, database_url=database_url, citizens=citizens, seed=seed)
    finally:
        if keep:
            _say(f"\nState kept in {root} (point other commands at it with --data-dir {root}).")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _reviewed_policies(root: Path) -> tuple[Path, str]:
    """A copy of the packaged policies, signed by a throwaway governance key (the demo's reviewer).

    Kept state (``--data-dir``) keeps its copy while it is still the packaged policies under a
    manifest this version accepts; a copy from another version (other policy files, or a manifest
    of an older format) is replaced and signed again, so that the demo runs on what it ships."""
    policies, vkey_path = root / "policies", root / "governance.vkey"
    if _kept_copy_is_current(policies, vkey_path):
        return policies, vkey_path.read_text().strip()
    shutil.rmtree(policies, ignore_errors=True)
    shutil.copytree(default_policies_dir(), policies, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    key_path = root / "governance.key"
    key_path.unlink(missing_ok=True)
    signer = create_governance_key(key_path)
    sign_manifest(policies, signer)
    vkey = signer.verifier_key_string()
    vkey_path.write_text(vkey + "\n")
    return policies, vkey


def _kept_copy_is_current(policies: Path, vkey_path: Path) -> bool:
    if not vkey_path.exists():
        return False
    try:
        verify_manifest(policies, [vkey_path.read_text().strip()])
        kept = policy_files(policies), catalog_digest(policies)
    except (ManifestInvalid, OSError):
        return False
    packaged = default_policies_dir()
    return kept == (policy_files(packaged), catalog_digest(packaged))


def _demo_citizen(store: Store) -> tuple[str, dict[str, str]]:
    """A seeded citizen with an inpatient stay, and that stay as an insurer's claim would state it."""
    for citizen_id in store.records.citizen_ids(limit=10_000):
        records = store.records.for_citizen(citizen_id, ["medical_insurance.inpatient_stays"])
        rows = json.loads(records[0].value_json) if records else []
        if rows:
            stay = rows[0]
            return citizen_id, {
                "claimed_admission_date": stay["admission_date"],
                "claimed_discharge_date": stay["discharge_date"],
                "hospital_code": stay["hospital_code"],
            }
    raise InternalError("no seeded citizen has an inpatient stay; seed more citizens")


def _sealed_at_rest(store: Store, citizen_id: str) -> str:
    """Say how records are kept, and on SQLite check it: none of the demo citizen's values (those
    long enough not to occur by chance) is anywhere in the database's files in the clear."""
    said = (
        "   Values are sealed at rest: AES-256-GCM under a data key per citizen, wrapped by records key "
        f"{store.records.key_id}"
    )
    database = store.engine.url.database
    if store.engine.dialect.name != "sqlite" or database is None:
        return said + "."
    values = [r.value_json.encode() for r in store.records.for_citizen(citizen_id) if len(r.value_json) >= 8]
    files = b"".join(path.read_bytes() for path in Path(database).parent.glob(Path(database).name + "*"))
    if any(value in files for value in values):
        raise InternalError("a record value is in the database file in the clear")
    return (
        said + f";\n   none of the demo citizen's {len(values)} longer values is in {Path(database).name} in the clear."
    )


def _show(result: EligibilityResult) -> str:
    bands = ", ".join(f"{k}={v}" for k, v in result.bands.items()) or "-"
    reasons = ", ".join(result.reasons) or "-"
    return f"{result.decision:<12} bands: {bands:<34} reasons: {reasons}"


def _run(root: Path, *, database_url: str | None, citizens: int, seed: int) -> None:
    started = time.perf_counter()
    _say("Veilgate demo\n=============")
    policies_dir, governance_key = _reviewed_policies(root)
    settings = Settings(
        data_dir=root, database_url=database_url, policies_dir=policies_dir, governance_keys=(governance_key,)
    )
    catalog = settings.load_catalog()
    policies = settings.load_reviewed_policies(catalog)
    store = settings.open_store()
    _say(
        f"1. Store: {store.engine.dialect.name}; catalog: {len(catalog.items)} data items from "
        f"{len(catalog.departments)} departments; {len(policies)} policies, signed by the governance key."
    )
    if store.records.count() == 0:
        t0 = time.perf_counter()
        summary = seed_population(store, catalog, citizens=citizens, seed=seed)
        _say(
            f"   Seeded {summary.citizens} synthetic citizens, {summary.records} records "
            f"in {time.perf_counter() - t0:.2f} s (seed {seed})."
        )
    citizen_id, claim = _demo_citizen(store)
    _say(_sealed_at_rest(store, citizen_id))

    signer = settings.load_signer()
    now = datetime.now(UTC)
    tls_files, _ = ensure_local_tls(settings.tls_dir, now=now)
    institution_ca = InstitutionCA.load_or_create(settings.tls_dir, now=now)
    chain, key = tls_files.load()
    gateway = Gateway(
        gateway_id=settings.gateway_id,
        catalog=catalog,
        store=store,
        signer=signer,
        log_signer=settings.load_log_signer(),
        policies=policies,
    )
    running = build_server(
        gateway,
        address="127.0.0.1:0",
        tls=ServerTls(chain, key, client_ca=institution_ca.certificate_pem),
        mtls_address="127.0.0.1:0",
    )
    target, mtls_target = f"localhost:{running.port}", f"localhost:{running.mtls_port}"
    _say(
        f"2. Gateway {settings.gateway_id}: citizens on {target} (TLS), institutions and departments on "
        f"{mtls_target} (mutual TLS); signing key {signer.key_id[:16]}..."
    )
    root_ca = tls_files.ca_certificate.read_bytes()
    try:
        employer = "Jinan Rail Transit Group"
        with _department(mtls_target, root_ca, store, institution_ca, PUSHING_DEPARTMENT) as pusher:
            receipt = pusher.push([Record(citizen_id, EMPLOYER_ITEM, datetime.now(UTC).date(), employer)])
            try:
                pusher.push([Record(citizen_id, "taxation.annual_income_last_year", now.date(), "1.00")])
            except ItemNotOwned as e:
                refused = e.reason
            else:
                raise InternalError("a department pushed an item it does not own")
        _say(
            f"3. The {PUSHING_DEPARTMENT} department pushed the citizen's current employer over mutual TLS: "
            f"{receipt.stored} record checked against the catalog and sealed (log entry {receipt.log_index}). "
            f"Pushing a taxation item was refused: {refused}."
        )
        wallet_path = settings.data_dir / "citizen.wallet"
        wallet = CitizenWallet.generate(citizen_id)
        wallet.save(wallet_path, DEMO_PASSPHRASE, kdf="interactive", overwrite=True)
        wallet = CitizenWallet.load(wallet_path, DEMO_PASSPHRASE)
        _say(f"4. Citizen {citizen_id[:6]}************ created a passphrase-protected wallet ({wallet_path.name}).")
        identity = CitizenIdentity.from_json(wallet.public_identity())
        try:
            keys = enroll(store, identity, rotate=False, at=datetime.now(UTC))
        except CitizenAlreadyEnrolled:  # a kept --data-dir from an earlier run: rotate to the new wallet
            keys = enroll(store, identity, rotate=True, at=datetime.now(UTC))
        _say(f"   The operator enrolled the wallet's public keys (key version {keys.key_version}).")

        pinned = gateway_keys_from_jwks(settings.public_keys_path.read_bytes())
        log_key = settings.log_vkey_path.read_text().strip()
        with CitizenClient(
            target, wallet, root_certificates=root_ca, gateway_keys=pinned, log_verifier_key=log_key
        ) as citizen:
            t0 = time.perf_counter()
            delivery = citizen.get_my_data()
            elapsed = (time.perf_counter() - t0) * 1000
            _say(
                f"5. GetMyData: {len(delivery.items)} items, sealed to the citizen's key, signed by the gateway, "
                f"verified by the SDK in {elapsed:.1f} ms."
            )
            _say(
                f"   Delivery {delivery.delivery_id}, watermark {delivery.watermark}; "
                f"signed document {len(delivery.signed_jws)} bytes."
            )
            pushed = next(item for item in delivery.items if item.id == EMPLOYER_ITEM)
            if pushed.value != employer:
                raise InternalError("the pushed record did not reach the citizen")
            _say(f"   Among them the employer the department pushed, as of {pushed.as_of}.")
            _say(f"   {'department':<24} {'items':>5} {'bytes':>7}  sensitivity  name")
            for department, items in delivery.by_department().items():
                size = sum(len(canonical_json(i.value)) for i in items)
                levels = ",".join(str(level) for level in sorted({i.sensitivity for i in items}))
                name = catalog.department(department).name_zh
                _say(f"   {department:<24} {len(items):>5} {size:>7}  {levels:<11}  {name}")
            with AuditClient.connect(target, root_certificates=root_ca, log_verifier_key=log_key) as audit:
                early = audit.checkpoint(min_tree_size=(delivery.log_index or 0) + 1)
            third_party = verify_delivery(delivery.signed_jws, gateway_keys=pinned)
            _say(
                f"   A third party checked the signed delivery offline with the published key: "
                f"{len(third_party.items)} items, issued at {third_party.issued_at}."
            )
            token = wallet.request_token(audience=settings.gateway_id, operation=GET_MY_DATA)
            citizen.send_get_my_data(token)
            try:
                citizen.send_get_my_data(token)
            except TokenReplayed as e:
                _say(f"   Replaying a spent request token is refused: {e.reason}.")
            else:
                raise InternalError("a replayed request token was accepted")

            bank_files = _register(store, institution_ca, BANK, "bank", "Bank of Jinan")
            insurer_files = _register(store, institution_ca, INSURER, "insurer", "Qilu Health Insurance")
            _say(f"6. The operator registered {BANK} (bank) and {INSURER} (insurer) with client certificates.")

            published = {policy.id: policy for policy in citizen.list_policies()}
            loan_token, loan = citizen.grant_consent(
                institution_id=BANK,
                purpose="credit.consumer_loan",
                policies=[published["credit.consumer_loan"].pin],
                max_uses=3,
                valid_for=7 * 86400,
            )
            mortgage_token, _ = citizen.grant_consent(
                institution_id=BANK,
                purpose="credit.mortgage",
                policies=[published["credit.mortgage_prequal"].pin],
                max_uses=1,
                valid_for=7 * 86400,
            )
            claim_token, _ = citizen.grant_consent(
                institution_id=INSURER,
                purpose="insurance.claim",
                policies=[published["insurance.inpatient_claim"].pin],
                max_uses=1,
                valid_for=7 * 86400,
            )
            reads = published["credit.consumer_loan"].inputs
            _say(
                f"7. Before signing, the citizen's app showed what each policy reads: the consumer loan reads "
                f"{len(reads)} of the {len(catalog.items)} items ({reads[0]}, ...)."
            )
            _say("   The citizen signed and registered three consents (shown to institutions as QR codes):")
            for consent in citizen.list_consents()[::-1]:
                _say(
                    f"   {consent.consent_id[:10]}...  {consent.institution_id:<15} {consent.purpose:<22} "
                    f"up to {consent.max_uses} use(s), policies {', '.join(p.id for p in consent.policies)}"
                )

            with _institution(mtls_target, root_ca, bank_files, BANK) as bank:
                loan_result = bank.evaluate(
                    "credit.consumer_loan", loan_token, {"requested_amount_band": "50k_to_200k"}
                )
                mortgage_result = bank.evaluate("credit.mortgage_prequal", mortgage_token, {"home_type": "first_home"})
            _say("8. The bank asked; it got signed answers, never records:")
            _say(f"   consumer loan (50k-200k):  {_show(loan_result)}")
            _say(f"   mortgage pre-qual (first): {_show(mortgage_result)}")
            _say(
                f"   data as of: {', '.join(f'{k} {v}' for k, v in loan_result.data_as_of.items())}; "
                f"result signed with key {loan_result.key_id[:16]}..., verified offline by the SDK."
            )
            with _institution(mtls_target, root_ca, insurer_files, INSURER) as insurer:
                claim_result = insurer.evaluate("insurance.inpatient_claim", claim_token, claim)
            _say(
                f"9. The insurer checked a claim ({claim['claimed_admission_date']} to "
                f"{claim['claimed_discharge_date']}, hospital {claim['hospital_code']}) against the "
                f"medical-insurance records without seeing them:\n   inpatient claim:           {_show(claim_result)}"
            )

            citizen.revoke_consent(loan.consent_id)
            with _institution(mtls_target, root_ca, bank_files, BANK) as bank:
                try:
                    bank.evaluate("credit.consumer_loan", loan_token, {"requested_amount_band": "up_to_50k"})
                except ConsentRevoked as e:
                    _say(
                        f"10. The citizen revoked the loan consent; the bank's next evaluation is refused: {e.reason}."
                    )
                else:
                    raise InternalError("an evaluation under a revoked consent was answered")

            _say("11. The citizen lists who asked what under their consents:")
            for evaluation in citizen.list_evaluations():
                when = datetime.fromtimestamp(evaluation.evaluated_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
                _say(f"   {when}  {evaluation.institution_id:<15} {evaluation.policy_id:<30} {evaluation.decision}")

            history = citizen.access_history()
            callers = sorted({entry.caller_id or entry.caller_kind for _, entry in history})
            _say(
                f"12. The citizen's trail in the audit log: {len(history)} entries about them (callers: "
                f"{', '.join(callers)}), each proven included under a checkpoint signed by the log key."
            )

        with AuditClient.connect(target, root_certificates=root_ca, log_verifier_key=log_key) as audit:
            if delivery.log_index is None or delivery.sealed is None:
                raise InternalError("the delivery carried no receipt")
            entry, latest = audit.verify_receipt(delivery.log_index, delivery.sealed)
            _say(
                f"13. Receipt: the delivery is entry {delivery.log_index} of the log (watermark {entry.watermark}), "
                f"proven under the latest checkpoint of {latest.tree_size} entries."
            )
            audit.prove_consistency(early, latest)
            _say(
                f"     An auditor holding only the log key checked that the log at {latest.tree_size} entries extends "
                f"the one signed at {early.tree_size}: nothing was rewritten. Entries hold no names and no values."
            )
    finally:
        running.stop(grace=1.0)
        store.close()
    _say(f"\nDemo finished in {time.perf_counter() - started:.2f} s.")


def _department(target: str, root_ca: bytes, store: Store, ca: InstitutionCA, department_id: str) -> DepartmentClient:
    """Register a department (as ``veilgate department add`` does) and connect as it."""
    now = datetime.now(UTC)
    cert, key, serial = ca.issue_client_certificate(department_id, kind="department", now=now)
    try:
        store.departments.register(
            department_id, at=now, certificate_serial=serial, certificate_not_after=peer_certificate(cert).not_after
        )
    except DepartmentAlreadyRegistered:  # a kept --data-dir from an earlier run: a certificate more
        store.certificates.record(
            "department", department_id, serial, at=now, not_after=peer_certificate(cert).not_after
        )
    return DepartmentClient(target, certificate_chain=cert, private_key=key, root_certificates=root_ca)


def _register(store: Store, ca: InstitutionCA, institution_id: str, kind: str, name: str) -> tuple[bytes, bytes]:
    now = datetime.now(UTC)
    with contextlib.suppress(InstitutionAlreadyRegistered):  # a kept --data-dir from an earlier run
        store.institutions.register(institution_id, kind=kind, name=name, at=now)
    cert, key, serial = ca.issue_client_certificate(institution_id, now=now)
    store.certificates.record("institution", institution_id, serial, at=now, not_after=peer_certificate(cert).not_after)
    return cert, key


def _institution(target: str, root_ca: bytes, files: tuple[bytes, bytes], institution_id: str) -> InstitutionClient:
    cert, key = files
    return InstitutionClient(
        target, certificate_chain=cert, private_key=key, root_certificates=root_ca, institution_id=institution_id
    )
