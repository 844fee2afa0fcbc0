"""EligibilityService over real mutual TLS, on every storage backend: consents, results, refusals."""

from __future__ import annotations

import dataclasses
import itertools
import json
import secrets
import threading
from datetime import UTC, datetime
from typing import Any

import grpc
import nacl.signing
import pytest
from conftest import GatewayHarness, InstitutionCredentials
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from veilgate import CitizenWallet, GatewayKey, verify_result
from veilgate._internal import jose
from veilgate.audit import parse_entry
from veilgate.consent import CONSENT_TYP
from veilgate.errors import (
    CertificateNotAccepted,
    CitizenBudgetExhausted,
    ConfigurationError,
    ConsentExhausted,
    ConsentExpired,
    ConsentNotYetValid,
    ConsentPolicyChanged,
    ConsentPolicyNotCovered,
    ConsentPurposeNotAllowed,
    ConsentRevoked,
    ConsentUnknown,
    ConsentWrongInstitution,
    GatewayUnavailable,
    InstitutionDisabled,
    InstitutionUnknown,
    PolicyParameterInvalid,
    PolicyUnknown,
    RequestIdReused,
    RequestInvalid,
    ResultInvalid,
    StorageError,
    TokenInvalid,
)
from veilgate.result import RESULT_TYP
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc, eligibility_pb2, eligibility_pb2_grpc
from veilgate_server.core.policy import Policy
from veilgate_server.crypto.institutions import InstitutionCA
from veilgate_server.crypto.keys import GatewaySigner
from veilgate_server.gateway import REGISTER_CONSENT, REVOKE_CONSENT
from veilgate_server.rpc.errors import status_name
from veilgate_server.storage import StoredRecord

LOAN = "credit.consumer_loan"
LOAN_PARAMS = {"requested_amount_band": "up_to_50k"}


@dataclasses.dataclass
class Scene:
    """A citizen with a wallet, a bank and an insurer, on a running gateway."""

    gw: GatewayHarness
    citizen: str
    wallet: CitizenWallet
    bank: InstitutionCredentials
    insurer: InstitutionCredentials

    def consent(self, policies: list[str] | None = None, **kw: Any) -> str:
        args: dict[str, Any] = dict(institution_id="bank-a", purpose="credit.consumer_loan", max_uses=5, valid_for=3600)
        args.update(kw)
        pins = [self.gw.pin(p) for p in policies or [LOAN]]
        with self.gw.client(self.wallet) as client:
            token, _ = client.grant_consent(policies=pins, **args)
        return token


@pytest.fixture
def scene(gateway_harness: GatewayHarness) -> Scene:
    citizen = gateway_harness.citizen_ids[0]
    wallet = gateway_harness.enroll(citizen)
    return Scene(
        gw=gateway_harness,
        citizen=citizen,
        wallet=wallet,
        bank=gateway_harness.register_institution("bank-a", "bank"),
        insurer=gateway_harness.register_institution("insurer-a", "insurer"),
    )


def _reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return error.code(), info.reason  # type: ignore[attr-defined]


def test_a_citizen_reads_every_policy_and_consents_to_the_text_it_read(scene: Scene) -> None:
    """Before signing, a citizen's app shows what a policy reads and who may ask it; the pin it
    consents with is the one the gateway evaluates. Institutions see the same summary of theirs."""
    loaded = scene.gw.gateway.policies
    with scene.gw.client(scene.wallet) as citizen:
        policies = {p.id: p for p in citizen.list_policies()}
        assert set(policies) == set(loaded)
        for policy_id, policy in policies.items():
            assert policy.inputs == tuple(item.id for item in loaded[policy_id].inputs)
            assert policy.institution_kinds == loaded[policy_id].institution_kinds
            assert policy.pin == scene.gw.pin(policy_id)
        assert policies[LOAN].institution_kinds == ("bank",)
        assert "taxation.monthly_income_history" in policies[LOAN].inputs
        token, _ = citizen.grant_consent(
            institution_id="bank-a", purpose="credit.consumer_loan", policies=[policies[LOAN].pin]
        )
    with scene.gw.institution_client(scene.bank) as bank:
        assert {p.id: p for p in bank.list_policies()}[LOAN] == policies[LOAN]
        assert bank.evaluate(LOAN, token, LOAN_PARAMS).policy_sha256 == policies[LOAN].sha256
    with scene.gw.audit() as audit:
        size = audit.checkpoint(min_tree_size=scene.gw.store.log.tree_size()).tree_size
        methods = [parse_entry(raw).method for _, raw in audit.entries(0, size)]
    assert "/veilgate.v1.CitizenService/ListPolicies" in methods  # public, and logged like every call


def test_bank_gets_a_signed_verifiable_result_and_never_a_record_value(scene: Scene) -> None:
    token = scene.consent()
    with scene.gw.institution_client(scene.bank) as bank:
        policies = {p.id: p for p in bank.list_policies()}
        result = bank.evaluate(LOAN, token, LOAN_PARAMS)
        keys = bank.gateway_keys()
    assert set(policies) == {"credit.consumer_loan", "credit.sme_loan", "credit.mortgage_prequal"}
    assert policies[LOAN].sha256 == scene.gw.gateway.policies[LOAN].sha256
    assert result.decision in {"ELIGIBLE", "NOT_ELIGIBLE", "REFER"}
    assert set(result.bands) == {"credit_limit"}
    assert len(result.reasons) <= 4
    assert result.institution_id == "bank-a"
    assert result.policy_sha256 == scene.gw.gateway.policies[LOAN].sha256
    assert set(result.data_as_of) <= {"social_insurance", "taxation", "court_enforcement"}
    # Offline: anyone with the gateway key can check it; a changed byte fails.
    assert verify_result(result.signed_result, gateway_keys=keys).decision == result.decision
    header, payload, signature = result.signed_result.split(".")
    forged = jose.b64url_encode(
        json.dumps({**json.loads(jose.b64url_decode(payload)), "decision": "ELIGIBLE"}).encode()
    )
    with pytest.raises(ResultInvalid):
        verify_result(f"{header}.{forged}.{signature}", gateway_keys=keys)
    with pytest.raises(ResultInvalid):
        verify_result(result.signed_result, gateway_keys=keys, institution_id="bank-b")


def test_insurer_sees_only_insurance_policies_and_checks_a_claim(scene: Scene) -> None:
    stays = scene.gw.store.records.for_citizen(scene.citizen, ["medical_insurance.inpatient_stays"])[0]
    stay = {
        "admission_date": "2026-03-02",
        "discharge_date": "2026-03-09",
        "hospital_code": "H37010200101",
        "hospital_name": "Jinan Central Hospital",
        "diagnosis_category": json.loads(stays.value_json)[0]["diagnosis_category"]
        if json.loads(stays.value_json)
        else "respiratory",
        "total_amount": "23000.00",
        "fund_paid_amount": "15000.00",
        "self_paid_amount": "8000.00",
    }
    row = {k: stay[k] for k in stay}
    scene.gw.store.records.put_many(
        [StoredRecord(scene.citizen, stays.item_id, stays.department, stays.as_of, json.dumps([row]))]
    )
    token = scene.consent(["insurance.inpatient_claim"], institution_id="insurer-a", purpose="insurance.claim")
    claim = {
        "claimed_admission_date": "2026-03-02",
        "claimed_discharge_date": "2026-03-09",
        "hospital_code": "H37010200101",
    }
    with scene.gw.institution_client(scene.insurer) as insurer:
        assert {p.id for p in insurer.list_policies()} == {"insurance.inpatient_claim", "insurance.health_underwriting"}
        matched = insurer.evaluate("insurance.inpatient_claim", token, claim)
        unmatched = insurer.evaluate("insurance.inpatient_claim", token, {**claim, "hospital_code": "H99999999999"})
    assert matched.decision == "ELIGIBLE"
    assert matched.bands == {"self_paid": "5k_to_20k"}
    assert unmatched.decision == "NOT_ELIGIBLE"
    assert unmatched.reasons == ("NO_MATCHING_STAY",)
    for result in (matched, unmatched):
        payload = jose.b64url_decode(result.signed_result.split(".")[1]).decode()
        assert "8000" not in payload
        assert "Jinan Central" not in payload


def test_mtls_identity_is_required_and_checked(scene: Scene, tmp_path: Any) -> None:
    # No client certificate at all.
    with scene.gw.channel() as channel:
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListPolicies(eligibility_pb2.ListPoliciesRequest(), timeout=5)
    assert _reason(info.value) == (grpc.StatusCode.UNAUTHENTICATED, "CLIENT_CERTIFICATE_REQUIRED")
    # A certificate from the right CA for an institution that is not registered.
    cert, key, _ = scene.gw.institution_ca.issue_client_certificate("bank-ghost", now=datetime.now(UTC))
    ghost = InstitutionCredentials("bank-ghost", cert, key)
    with scene.gw.institution_client(ghost) as client, pytest.raises(InstitutionUnknown):
        client.list_policies()
    # A disabled institution.
    scene.gw.store.institutions.set_enabled("bank-a", False)
    with scene.gw.institution_client(scene.bank) as bank, pytest.raises(InstitutionDisabled):
        bank.list_policies()
    # A citizen is told so when consenting to it, not when the institution first tries.
    with pytest.raises(InstitutionDisabled, match="bank-a is disabled"):
        scene.consent()
    assert scene.gw.store.consents.for_citizen(scene.citizen) == []
    scene.gw.store.institutions.set_enabled("bank-a", True)
    # A certificate from another CA never gets past the TLS handshake.
    rogue = InstitutionCA.create(now=datetime.now(UTC))
    cert, key, _ = rogue.issue_client_certificate("bank-a", now=datetime.now(UTC))
    impostor = InstitutionCredentials("bank-a", cert, key)
    with scene.gw.institution_client(impostor, timeout=3) as client, pytest.raises(GatewayUnavailable):
        client.list_policies()
    # A certificate with another certificate's key never starts one; the SDK says so (no retry).
    mixed = InstitutionCredentials("bank-a", scene.bank.certificate_pem, key)
    token = scene.consent()
    with (
        scene.gw.institution_client(mixed, timeout=3) as client,
        pytest.raises(ConfigurationError, match="client certificate and key belong together"),
    ):
        client.evaluate(LOAN, token, LOAN_PARAMS)
    with scene.gw.institution_client(scene.bank) as bank:
        assert bank.list_policies()


def test_a_renewed_certificate_works_beside_the_old_one_and_a_revoked_one_is_refused_and_logged(
    scene: Scene,
) -> None:
    gw = scene.gw
    now = datetime.now(UTC)
    cert, key, serial = gw.institution_ca.issue_client_certificate("bank-a", now=now)
    renewed = InstitutionCredentials("bank-a", cert, key)
    # Signed by the client CA for a registered bank, but never put on record: refused.
    with gw.institution_client(renewed) as client, pytest.raises(CertificateNotAccepted):
        client.list_policies()
    gw.store.certificates.record("institution", "bank-a", serial, at=now)
    [old] = [c.serial for c in gw.store.certificates.list("institution", "bank-a") if c.serial != serial]
    with gw.institution_client(scene.bank) as bank, gw.institution_client(renewed) as client:
        assert bank.list_policies() == client.list_policies()  # both, while the bank moves over
        gw.store.certificates.revoke("institution", "bank-a", old, at=now)
        token = scene.consent()
        size = gw.store.log.tree_size()
        with pytest.raises(CertificateNotAccepted, match="not on record for its caller, or was revoked"):
            bank.evaluate(LOAN, token, LOAN_PARAMS)  # on the same connection, at its next call
        assert client.evaluate(LOAN, token, LOAN_PARAMS).decision in {"ELIGIBLE", "NOT_ELIGIBLE", "REFER"}
    with gw.audit() as audit:
        entries = [parse_entry(raw) for _, raw in audit.entries(size, gw.store.log.tree_size() - size)]
    assert [(e.caller_id, e.code, e.reason) for e in entries if e.method.endswith("/Evaluate")] == [
        ("bank-a", "PERMISSION_DENIED", "CERTIFICATE_NOT_ACCEPTED"),
        ("bank-a", "OK", ""),
    ]
    [consent] = gw.store.consents.for_citizen(scene.citizen)
    assert consent.uses == 1


def test_a_citizen_cannot_register_anothers_consent_nor_learn_whether_they_are_enrolled(scene: Scene) -> None:
    """The other citizen's key is never looked up: an enrolled and an unenrolled other citizen get
    the same refusal."""
    gw = scene.gw
    other_enrolled = gw.enroll(gw.citizen_ids[1])
    other_unenrolled = CitizenWallet.generate(gw.citizen_ids[2])
    refusals = []
    for other in (other_enrolled, other_unenrolled):
        theirs = other.consent_token(
            institution_id="bank-a", purpose="credit.consumer_loan", policies=[gw.pin(LOAN)], max_uses=1, valid_for=60
        )
        with gw.client(scene.wallet) as client, pytest.raises(TokenInvalid) as info:
            client.register_consent(theirs)
        refusals.append(info.value.message)
    assert refusals[0] == refusals[1] == "the request must name the consent it registers, signed by the same citizen"


def test_one_institution_cannot_use_anothers_consent(scene: Scene) -> None:
    token = scene.consent()
    other = scene.gw.register_institution("bank-b", "bank")
    with scene.gw.institution_client(other) as bank_b, pytest.raises(ConsentWrongInstitution):
        bank_b.evaluate(LOAN, token, LOAN_PARAMS)


def test_consent_rules_each_with_their_own_reason(scene: Scene) -> None:
    gw = scene.gw
    token = scene.consent()
    with gw.institution_client(scene.bank) as bank:
        with pytest.raises(ConsentPolicyNotCovered):
            bank.evaluate("credit.sme_loan", token, {"requested_amount_band": "up_to_300k"})
        with pytest.raises(PolicyUnknown):
            bank.evaluate("credit.no_such_policy", token, LOAN_PARAMS)
        # A refusal that quotes a long input still fits a client's 8 KiB of trailers, wide
        # characters included: it arrives as itself, not as RESOURCE_EXHAUSTED.
        with pytest.raises(PolicyUnknown):
            bank.evaluate("\U0001f600" * 5000, token, LOAN_PARAMS)
        with pytest.raises(PolicyParameterInvalid):
            bank.evaluate(LOAN, token, {"requested_amount_band": "up_to_50k", "k" * 20000: "v"})
        with pytest.raises(PolicyParameterInvalid):
            bank.evaluate(LOAN, token, {"requested_amount_band": "1000000"})
        with pytest.raises(PolicyParameterInvalid):
            bank.evaluate(LOAN, token, {})
        # A consent that was never registered.
        unregistered = scene.wallet.consent_token(
            institution_id="bank-a", purpose="credit.consumer_loan", policies=[gw.pin(LOAN)], max_uses=1, valid_for=60
        )
        with pytest.raises(ConsentUnknown):
            bank.evaluate(LOAN, unregistered, LOAN_PARAMS)
        # Not yet valid, then expired (the clock is moved, never slept on).
        later = scene.consent(valid_for=600)
        gw.clock.advance(-1000)
        with pytest.raises(ConsentNotYetValid):
            bank.evaluate(LOAN, later, LOAN_PARAMS)
        gw.clock.advance(1000 + 601 + 30)
        with pytest.raises(ConsentExpired):
            bank.evaluate(LOAN, later, LOAN_PARAMS)
        gw.clock.advance(-(601 + 30))
        # The policy text changed since the citizen consented.
        original = gw.gateway.policies
        gw.gateway.policies = {**original, LOAN: dataclasses.replace(original[LOAN], sha256="0" * 64)}
        try:
            with pytest.raises(ConsentPolicyChanged):
                bank.evaluate(LOAN, token, LOAN_PARAMS)
        finally:
            gw.gateway.policies = original
        # The citizen rotated keys: consents signed with the old key stop working.
        bank.evaluate(LOAN, token, LOAN_PARAMS)
        new = scene.wallet.with_new_keys()
        gw.store.citizens.rotate_keys(
            scene.citizen,
            signing_key=new.signing_public_key,
            encryption_key=new.encryption_public_key,
            at=datetime.now(UTC),
        )
        with pytest.raises(TokenInvalid):
            bank.evaluate(LOAN, token, LOAN_PARAMS)


def test_a_registered_consent_is_not_verified_again_while_its_key_stands(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registration verified the token with the citizen's key and recorded it: an Evaluate that
    presents the very token, under the very key, does not verify it again. A consent registered
    before the key was recorded (revision 0005) is verified on every use, and still works."""
    token = scene.consent()
    citizen_key = scene.wallet.signing_public_key
    checked: list[bytes] = []
    verify = nacl.signing.VerifyKey.verify

    def counted(key: nacl.signing.VerifyKey, *args: Any, **kwargs: Any) -> Any:
        if bytes(key) == citizen_key:
            checked.append(bytes(key))
        return verify(key, *args, **kwargs)

    monkeypatch.setattr(nacl.signing.VerifyKey, "verify", counted)
    with scene.gw.institution_client(scene.bank) as bank:
        bank.evaluate(LOAN, token, LOAN_PARAMS)
        assert checked == []
        with scene.gw.store.engine.begin() as connection:
            connection.execute(text("UPDATE consents SET signing_key = NULL"))
        bank.evaluate(LOAN, token, LOAN_PARAMS)
        assert checked == [citizen_key]


def test_purpose_must_fit_the_institution_kind(scene: Scene) -> None:
    # The gateway refuses to register a consent that could never be used ...
    with pytest.raises(ConsentPurposeNotAllowed):
        scene.consent(institution_id="insurer-a", purpose="credit.consumer_loan")
    # ... and refuses it at evaluation too, should one be in the store.
    token = scene.wallet.consent_token(
        institution_id="insurer-a",
        purpose="credit.consumer_loan",
        policies=[scene.gw.pin(LOAN)],
        max_uses=1,
        valid_for=60,
    )
    claims = jose.unverified_claims(token, typ="veilgate-consent+jwt").claims
    new_consent = scene.gw.store.consents.new_consent(
        consent_id=claims["jti"],
        citizen_id=scene.citizen,
        institution_id="insurer-a",
        purpose=claims["purpose"],
        policies=[(LOAN, scene.gw.pin(LOAN).sha256)],
        not_before=datetime.fromtimestamp(claims["nbf"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        max_uses=1,
        token=token,
        signing_key=scene.wallet.signing_public_key,
        at=datetime.now(UTC),
    )
    scene.gw.store.consents.register(new_consent)
    with scene.gw.institution_client(scene.insurer) as insurer, pytest.raises(ConsentPurposeNotAllowed):
        insurer.evaluate(LOAN, token, LOAN_PARAMS)


def test_revocation_takes_effect_on_the_next_call(scene: Scene) -> None:
    token = scene.consent()
    with scene.gw.institution_client(scene.bank) as bank:
        bank.evaluate(LOAN, token, LOAN_PARAMS)
        with scene.gw.client(scene.wallet) as citizen:
            consent_id = citizen.list_consents()[0].consent_id
            revoked = citizen.revoke_consent(consent_id)
            assert revoked.revoked_at is not None
            assert citizen.revoke_consent(consent_id).revoked_at == revoked.revoked_at  # idempotent
        with pytest.raises(ConsentRevoked):
            bank.evaluate(LOAN, token, LOAN_PARAMS)


def test_a_citizen_sees_every_evaluation_page_by_page(scene: Scene) -> None:
    scene.gw.gateway.evaluations_page = 2
    token = scene.consent(max_uses=5)
    with scene.gw.institution_client(scene.bank) as bank:
        for n in range(5):
            bank.evaluate(LOAN, token, LOAN_PARAMS, request_id=f"paged-request-{n}")
    with scene.gw.client(scene.wallet) as citizen:
        first, page = citizen.list_evaluations_page()
        assert len(first) == 2
        assert page
        everything = citizen.list_evaluations()
        second, _ = citizen.list_evaluations_page(page)
        with pytest.raises(RequestInvalid, match="claim 'page' is not a page of this list"):
            citizen.list_evaluations_page("not-a-page")
    assert sorted(e.request_id for e in everything) == [f"paged-request-{n}" for n in range(5)]
    assert everything[:4] == first + second
    assert [e.evaluated_at for e in everything] == sorted((e.evaluated_at for e in everything), reverse=True)


def test_a_citizen_sees_every_consent_page_by_page(scene: Scene) -> None:
    scene.gw.gateway.consents_page = 2
    tokens = [scene.consent() for _ in range(5)]
    with scene.gw.client(scene.wallet) as citizen:
        first, page = citizen.list_consents_page()
        assert len(first) == 2
        assert page
        everything = citizen.list_consents()
        second, _ = citizen.list_consents_page(page)
        with pytest.raises(RequestInvalid, match="claim 'page' is not a page of this list"):
            citizen.list_consents_page("not-a-page")
        with pytest.raises(RequestInvalid, match="claim 'page' is not a page of this list"):
            citizen.list_consents_page(f"1/{'A' * 15}")  # too short for a consent id
    issued = {jose.unverified_claims(t, typ=CONSENT_TYP).claims["jti"] for t in tokens}
    assert len(everything) == 5
    assert {c.consent_id for c in everything} == issued
    assert everything[:4] == first + second
    assert [c.registered_at for c in everything] == sorted((c.registered_at for c in everything), reverse=True)


def test_idempotent_retry_spends_one_use(scene: Scene) -> None:
    token = scene.consent(max_uses=2)
    with scene.gw.institution_client(scene.bank) as bank:
        first = bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="loan-application-0001")
        again = bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="loan-application-0001")
        assert again.signed_result == first.signed_result
        with pytest.raises(RequestIdReused):
            bank.evaluate(LOAN, token, {"requested_amount_band": "200k_to_500k"}, request_id="loan-application-0001")
        bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="loan-application-0002")
        with pytest.raises(ConsentExhausted) as info:
            bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="loan-application-0003")
    assert "uses" in info.value.message
    with scene.gw.client(scene.wallet) as citizen:
        [consent] = citizen.list_consents()
        history = citizen.list_evaluations()
    assert (consent.uses, consent.max_uses) == (2, 2)
    assert [(e.institution_id, e.policy_id) for e in history] == [("bank-a", LOAN)] * 2


def test_a_retry_gets_its_recorded_answer_when_no_new_evaluation_would_be_allowed(scene: Scene) -> None:
    """A bank that lost a reply asks again with the same request id: it gets the answer it was given,
    even once the consent is used up, the citizen's budget is spent or the consent is revoked, and
    the retry spends nothing. Another request under that id is refused as a reused id, even with
    parameters the policy refuses."""
    scene.gw.gateway.daily_budget = 2
    token = scene.consent(max_uses=2)
    other = scene.consent(max_uses=5)
    with scene.gw.institution_client(scene.bank) as bank:
        first = bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="retry-first-0001")
        second = bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="retry-second-0002")
        # the consent is used up, and the citizen's daily budget with it
        again = bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="retry-first-0001")
        assert again.signed_result == first.signed_result
        with pytest.raises(CitizenBudgetExhausted):
            bank.evaluate(LOAN, other, LOAN_PARAMS, request_id="retry-other-0003")
        with pytest.raises(RequestIdReused):
            bank.evaluate(LOAN, token, {"requested_amount_band": "no_such_band"}, request_id="retry-first-0001")
        with scene.gw.client(scene.wallet) as citizen:
            consent_id = jose.unverified_claims(token, typ="veilgate-consent+jwt").claims["jti"]
            citizen.revoke_consent(consent_id)
        again = bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="retry-second-0002")
        assert again.signed_result == second.signed_result
        with pytest.raises(ConsentRevoked):
            bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="retry-third-0004")
    with scene.gw.client(scene.wallet) as citizen:
        uses = {c.consent_id: c.uses for c in citizen.list_consents()}
        history = citizen.list_evaluations()
    assert sorted(uses.values()) == [0, 2]
    assert len(history) == 2


def test_concurrent_callers_get_exactly_max_uses(scene: Scene) -> None:
    token = scene.consent(max_uses=3)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        with scene.gw.institution_client(scene.bank) as bank:
            try:
                bank.evaluate(LOAN, token, LOAN_PARAMS, request_id=f"concurrent-{n:04d}")
                outcome = "ok"
            except ConsentExhausted:
                outcome = "exhausted"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["exhausted"] * 5 + ["ok"] * 3
    # Uses are spent in the log's own transaction: each call left exactly one entry, with its outcome.
    with scene.gw.audit() as audit:
        size = audit.checkpoint(min_tree_size=scene.gw.store.log.tree_size()).tree_size
        entries = [parse_entry(raw) for _, raw in audit.entries(0, size)]
    evaluations = sorted((e.code, e.reason) for e in entries if e.method.endswith("/Evaluate"))
    assert evaluations == [("OK", "")] * 3 + [(status_name("CONSENT_EXHAUSTED"), "CONSENT_EXHAUSTED")] * 5


def test_a_use_is_spent_only_together_with_its_log_entry(scene: Scene) -> None:
    token = scene.consent(max_uses=2)
    with scene.gw.store.engine.begin() as conn:
        conn.execute(text("DROP TABLE log_entries"))
    with scene.gw.institution_client(scene.bank, max_attempts=1) as bank, pytest.raises(StorageError):
        bank.evaluate(LOAN, token, LOAN_PARAMS, request_id="never-logged-0001")
    [consent] = scene.gw.store.consents.for_citizen(scene.citizen)
    assert consent.uses == 0
    assert scene.gw.store.consents.find_evaluation("bank-a", "never-logged-0001") is None


def test_a_registration_and_a_revocation_stand_only_together_with_their_log_entries(scene: Scene) -> None:
    """A consent is registered, and revoked, in its call's log entry's transaction, with the request
    token: when the entry cannot be made durable, the citizen is told so and nothing stands."""
    registered = scene.consent()
    consent_id = jose.unverified_claims(registered, typ=CONSENT_TYP).claims["jti"]
    unregistered = scene.wallet.consent_token(
        institution_id="bank-a", purpose="credit.consumer_loan", policies=[scene.gw.pin(LOAN)], max_uses=1, valid_for=60
    )
    with scene.gw.client(scene.wallet) as citizen:
        citizen.gateway_info()  # known before the log fails: the calls below reach the store
        tokens_spent = scene.gw.used_token_rows()
        with scene.gw.store.engine.begin() as conn:
            conn.execute(text("DROP TABLE log_entries"))
        with pytest.raises(StorageError):
            citizen.register_consent(unregistered)
        with pytest.raises(StorageError):
            citizen.revoke_consent(consent_id)
    [consent] = scene.gw.store.consents.for_citizen(scene.citizen)
    assert (consent.consent_id, consent.revoked_at) == (consent_id, None)
    assert scene.gw.used_token_rows() == tokens_spent


def test_a_refused_registration_or_revocation_leaves_the_request_token_unspent(scene: Scene) -> None:
    """The token is spent and the consent stored in one change of the log's transaction, which the
    refusal's own entry shares: when the consent is refused, the token is given back there."""
    token = scene.consent()
    consent_id = jose.unverified_claims(token, typ=CONSENT_TYP).claims["jti"]
    claims = dict(jose.unverified_claims(token, typ=CONSENT_TYP).claims)
    claims["max_uses"] = 100  # the same id, other terms
    kid = jose.jwk_thumbprint(scene.wallet.signing_public_key)
    other = jose.sign_jws(claims, signing_key=scene.wallet._signing_key, typ=CONSENT_TYP, kid=kid)
    tokens_spent = scene.gw.used_token_rows()

    def request(operation: str, consent: str) -> str:
        return scene.wallet.request_token(audience="veilgate.test", operation=operation, claims={"consent": consent})

    registering = request(REGISTER_CONSENT, consent_id)
    with scene.gw.channel() as channel:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RegisterConsent(
                citizen_pb2.RegisterConsentRequest(request_token=registering, consent_token=other), timeout=10
            )
        assert _reason(refused.value)[1] == "CONSENT_ALREADY_REGISTERED"
        assert scene.gw.used_token_rows() == tokens_spent
        # The same request token, still unspent, registers the consent as it stands (and is spent).
        reply = stub.RegisterConsent(
            citizen_pb2.RegisterConsentRequest(request_token=registering, consent_token=token), timeout=10
        )
        assert reply.consent.max_uses == 5
        assert scene.gw.used_token_rows() == tokens_spent + 1
        with pytest.raises(grpc.RpcError) as unknown:
            stub.RevokeConsent(
                citizen_pb2.RevokeConsentRequest(request_token=request(REVOKE_CONSENT, "nope")), timeout=10
            )
        assert _reason(unknown.value)[1] == "CONSENT_UNKNOWN"
    assert scene.gw.used_token_rows() == tokens_spent + 1


def test_daily_budget_bounds_what_repeated_queries_reveal(scene: Scene) -> None:
    scene.gw.gateway.daily_budget = 2
    token = scene.consent(max_uses=10, valid_for=3 * 24 * 3600)
    with scene.gw.institution_client(scene.bank) as bank:
        bank.evaluate(LOAN, token, LOAN_PARAMS)
        bank.evaluate(LOAN, token, LOAN_PARAMS)
        with pytest.raises(CitizenBudgetExhausted):
            bank.evaluate(LOAN, token, LOAN_PARAMS)
    scene.gw.clock.advance(24 * 3600 + 1)
    with scene.gw.institution_client(scene.bank) as bank:
        bank.evaluate(LOAN, token, LOAN_PARAMS)


def _income_history(rows: int, amount: str, as_of: datetime) -> str:
    months = []
    year, month = as_of.year, as_of.month
    for _ in range(rows):
        month -= 1
        if month == 0:
            year, month = year - 1, 12
        months.append({"month": f"{year:04d}-{month:02d}-01", "gross_income": amount, "tax_withheld": "100.00"})
    return json.dumps(months)


def _parameter_sets(policy: Policy, claim: dict[str, str]) -> list[dict[str, str]]:
    """Every combination of a policy's enumerated parameters; for stated claim facts, a matching
    and a non-matching claim."""
    enums = {name: p.values for name, p in policy.parameters.items() if p.type == "enum"}
    stated = [name for name, p in policy.parameters.items() if p.type != "enum"]
    combos = [dict(zip(enums, values, strict=True)) for values in itertools.product(*enums.values())]
    if not stated:
        return combos
    other = {**claim, "hospital_code": "H99999999999"}
    return [{**combo, **{n: c[n] for n in stated}} for combo in combos for c in (claim, other)]


def test_privacy_canary_income_never_reaches_the_institution(scene: Scene) -> None:
    """For a citizen with a unique canary income, run every policy with every allowed parameter under a
    valid consent: the canary appears in no byte an institution receives, and two incomes in the same
    band give the same answers."""
    gw = scene.gw
    gw.gateway.daily_budget = 1000
    canary, twin = "87654.3219", "61234.5678"  # both far above every income threshold
    [income] = gw.store.records.for_citizen(scene.citizen, ["taxation.monthly_income_history"])
    [stays] = gw.store.records.for_citizen(scene.citizen, ["medical_insurance.inpatient_stays"])
    stay = {
        "admission_date": "2026-03-02",
        "discharge_date": "2026-03-09",
        "hospital_code": "H37010200101",
        "hospital_name": "Canary Hospital",
        "diagnosis_category": "respiratory",
        "total_amount": "23456.78",
        "fund_paid_amount": "11111.11",
        "self_paid_amount": "12345.67",
    }
    gw.store.records.put_many(
        [StoredRecord(scene.citizen, stays.item_id, stays.department, stays.as_of, json.dumps([stay]))]
    )
    claim = {
        "claimed_admission_date": "2026-03-02",
        "claimed_discharge_date": "2026-03-09",
        "hospital_code": "H37010200101",
    }
    now = datetime.fromtimestamp(gw.clock.now, UTC)

    def answers(amount: str) -> tuple[list[tuple[Any, ...]], bytes]:
        history = _income_history(14, amount, now)
        gw.store.records.put_many(
            [StoredRecord(scene.citizen, income.item_id, income.department, income.as_of, history)]
        )
        seen = bytearray()
        out = []
        for policy in gw.gateway.policies.values():
            credentials = scene.bank if "bank" in policy.institution_kinds else scene.insurer
            token = scene.consent(
                [policy.id], institution_id=credentials.institution_id, purpose=policy.purpose, max_uses=100
            )
            seen += token.encode()
            with gw.institution_client(credentials) as institution:
                for listed in institution.list_policies():
                    seen += f"{listed}".encode()
                for params in _parameter_sets(policy, claim):
                    result = institution.evaluate(policy.id, token, params)
                    seen += result.signed_result.encode() + jose.b64url_decode(result.signed_result.split(".")[1])
                    out.append((policy.id, sorted(params.items()), result.decision, dict(result.bands), result.reasons))
        return out, bytes(seen)

    first, seen = answers(canary)
    second, _ = answers(twin)
    for secret in (canary, canary.replace(".", ""), "12345.67", "Canary Hospital", "23456.78"):
        assert secret.encode() not in seen, secret
    assert first == second
    covered = {policy_id for policy_id, *_ in first}
    assert covered == set(gw.gateway.policies)
    assert len(first) == sum(len(_parameter_sets(p, claim)) for p in gw.gateway.policies.values())


def test_a_retried_evaluation_names_the_key_that_signed_its_recorded_result(scene: Scene) -> None:
    """The gateway key was rotated between a request and its retry: the retry gets the result recorded
    at the first call, and the reply names the key that signed that result, not the current one."""
    token = scene.consent(max_uses=3)
    bank = scene.bank
    credentials = grpc.ssl_channel_credentials(
        root_certificates=scene.gw.ca_pem, private_key=bank.private_key_pem, certificate_chain=bank.certificate_pem
    )

    def request(request_id: str) -> eligibility_pb2.EvaluateRequest:
        return eligibility_pb2.EvaluateRequest(
            policy_id=LOAN, consent_token=token, request_id=request_id, parameters=LOAN_PARAMS
        )

    old = scene.gw.gateway.signer
    rotated = GatewaySigner.from_seed(secrets.token_bytes(32))
    with grpc.secure_channel(scene.gw.mtls_target, credentials) as channel:
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        first = stub.Evaluate(request("before-rotation-01"), timeout=5)
        scene.gw.gateway.signer = rotated  # as a serving gateway takes up a rotated key (SigningKeyFollower)
        again = stub.Evaluate(request("before-rotation-01"), timeout=5)
        fresh = stub.Evaluate(request("after-rotation-002"), timeout=5)
    assert again.signed_result == first.signed_result
    assert (first.gateway_key_id, again.gateway_key_id, fresh.gateway_key_id) == (
        old.key_id,
        old.key_id,
        rotated.key_id,
    )
    keys = [GatewayKey(old.key_id, old.public_key), GatewayKey(rotated.key_id, rotated.public_key)]
    for reply in (again, fresh):
        assert jose.unverified_claims(reply.signed_result, typ=RESULT_TYP).kid == reply.gateway_key_id
        verify_result(reply.signed_result, gateway_keys=keys)


def test_results_from_the_raw_rpc_carry_error_info(scene: Scene) -> None:
    token = scene.consent()
    bank = scene.bank
    credentials = grpc.ssl_channel_credentials(
        root_certificates=scene.gw.ca_pem, private_key=bank.private_key_pem, certificate_chain=bank.certificate_pem
    )
    with grpc.secure_channel(scene.gw.mtls_target, credentials) as channel:
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        request = eligibility_pb2.EvaluateRequest(policy_id=LOAN, consent_token=token, request_id="short")
        with pytest.raises(grpc.RpcError) as info:
            stub.Evaluate(request, timeout=5)
        assert _reason(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID")
        reply = stub.Evaluate(
            eligibility_pb2.EvaluateRequest(
                policy_id=LOAN, consent_token=token, request_id="raw-request-01", parameters=LOAN_PARAMS
            ),
            timeout=5,
        )
    key = GatewayKey(scene.gw.gateway.signer.key_id, scene.gw.gateway.signer.public_key)
    assert verify_result(reply.signed_result, gateway_keys=[key]).request_id == "raw-request-01"
