"""The SDK as an integrator meets it: safe retries, specific errors for their own mistakes, no
exception that is not a VeilgateError. Real gateway, real mutual TLS."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import GatewayHarness
from sqlalchemy import text

from veilgate import AuditClient, CitizenClient, CitizenWallet, GatewayKey, InstitutionClient, verify_result
from veilgate._internal import jose
from veilgate.consent import CONSENT_TYP
from veilgate.errors import (
    ConfigurationError,
    ConsentAlreadyRegistered,
    GatewayUnavailable,
    PolicyParameterInvalid,
    ProofInvalid,
    RequestInvalid,
    ResultInvalid,
    TokenInvalid,
)
from veilgate_server.storage._session import write_session

LOAN = "credit.consumer_loan"
LOAN_PARAMS = {"requested_amount_band": "up_to_50k"}


def _citizen_and_consent(gw: GatewayHarness, *, max_uses: int = 5) -> tuple[CitizenWallet, str]:
    wallet = gw.enroll(gw.citizen_ids[0])
    with gw.client(wallet) as citizen:
        token, _ = citizen.grant_consent(
            institution_id="bank-a", purpose=LOAN, policies=[gw.pin(LOAN)], max_uses=max_uses, valid_for=3600
        )
    return wallet, token


def _uses(gw: GatewayHarness, wallet: CitizenWallet) -> int:
    with gw.client(wallet) as citizen:
        [consent] = citizen.list_consents()
    return consent.uses


def test_an_evaluation_that_timed_out_is_retried_by_its_request_id_without_spending_again(
    gateway_harness: GatewayHarness,
) -> None:
    """The gateway takes the call but answers too late (its log is held by a writer here): the
    client's deadline passes while the use is being spent. The error carries the request id the SDK
    made, and evaluating again with it returns the recorded answer without spending again."""
    gw = gateway_harness
    bank = gw.register_institution("bank-a", "bank")
    wallet, token = _citizen_and_consent(gw)
    hurried = gw.institution_client(bank, timeout=0.5, max_attempts=2)
    with write_session(gw.store._sessions) as held:  # SQLite: the writer lock; PostgreSQL: the head row
        if gw.store.engine.dialect.name == "postgresql":
            held.execute(text("SELECT tree_size FROM log_head FOR UPDATE"))
        with hurried, pytest.raises(GatewayUnavailable, match="DEADLINE_EXCEEDED") as late:
            hurried.evaluate(LOAN, token, LOAN_PARAMS)
    request_id = late.value.request_id
    assert request_id is not None
    assert request_id.startswith("req-")
    with gw.institution_client(bank) as patient:
        first = patient.evaluate(LOAN, token, LOAN_PARAMS, request_id=request_id)
        again = patient.evaluate(LOAN, token, LOAN_PARAMS, request_id=request_id)
    assert again.result_id == first.result_id
    assert _uses(gw, wallet) == 1  # two late attempts and two answers: one use


def test_retries_back_off_instead_of_hammering_a_gateway_that_is_down(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    bank = gw.register_institution("bank-a", "bank")
    _, token = _citizen_and_consent(gw)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    client = InstitutionClient(
        f"127.0.0.1:{port}",
        certificate_chain=bank.certificate_pem,
        private_key=bank.private_key_pem,
        root_certificates=gw.ca_pem,
        max_attempts=3,
    )
    started = time.monotonic()
    with client, pytest.raises(GatewayUnavailable) as down:
        client.evaluate(LOAN, token, LOAN_PARAMS)
    assert time.monotonic() - started >= 0.05 + 0.1  # two waits, each at least half of 0.1 s and 0.2 s
    assert down.value.request_id is not None


def test_an_integrators_own_mistakes_get_their_own_errors(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    bank = gw.register_institution("bank-a", "bank")
    wallet, token = _citizen_and_consent(gw)
    with gw.institution_client(bank) as client:
        for garbage in ("garbage", "", None):
            with pytest.raises(TokenInvalid, match="not a Veilgate consent"):
                client.evaluate(LOAN, garbage, LOAN_PARAMS)  # type: ignore[arg-type]
        with pytest.raises(PolicyParameterInvalid, match="each a string"):
            client.evaluate(LOAN, token, {"requested_amount_band": 5})  # type: ignore[dict-item]
        scanned = client.evaluate(LOAN, token + "\n", LOAN_PARAMS)  # as read from a file or a QR code
        assert scanned.decision
        # The result as stored, with a newline, or as bytes, verifies; what is no result says so.
        keys = client.gateway_keys()
        assert verify_result(scanned.signed_result + "\n", gateway_keys=keys).result_id == scanned.result_id
        assert verify_result(scanned.signed_result.encode(), gateway_keys=keys).result_id == scanned.result_id
        with pytest.raises(ResultInvalid, match="not a signed eligibility result"):
            verify_result("garbage", gateway_keys=keys)
    with pytest.raises(ConfigurationError, match="this client is closed"):
        client.list_policies()
    with gw.client(wallet) as citizen:
        for bad, message in (
            ({"purpose": "credit.car"}, "purpose must be one of"),
            ({"max_uses": 0}, "max_uses must be from 1 to 100"),
            ({"valid_for": -10}, "valid_for must be from 1 second to 90 days"),
            ({"policies": []}, "a consent pins 1 to 8 policies"),
        ):
            grant = {"institution_id": "bank-a", "purpose": LOAN, "policies": [gw.pin(LOAN)], "max_uses": 1}
            with pytest.raises(RequestInvalid, match=message):
                citizen.grant_consent(**{**grant, **bad})  # type: ignore[arg-type]
    with gw.client(wallet) as citizen:
        assert len(citizen.list_consents()) == 1  # none of them reached the gateway


def test_a_citizen_app_with_wrong_pinned_keys_is_stopped_before_it_spends_a_token(
    gateway_harness: GatewayHarness,
) -> None:
    gw = gateway_harness
    wallet = gw.enroll(gw.citizen_ids[0])
    stranger = CitizenWallet.generate("x").signing_public_key
    wrong = [GatewayKey(jose.jwk_thumbprint(stranger), stranger)]
    client = CitizenClient(gw.target, wallet, root_certificates=gw.ca_pem, gateway_keys=wrong)
    with client, pytest.raises(ConfigurationError, match="pinned gateway keys"):
        client.get_my_data()
    assert gw.used_token_rows() == 0


def test_audit_receipts_take_a_result_as_the_sdk_hands_it_over(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    bank = gw.register_institution("bank-a", "bank")
    _, token = _citizen_and_consent(gw)
    with gw.institution_client(bank) as client:
        result = client.evaluate(LOAN, token, LOAN_PARAMS)
    with gw.audit() as audit:
        assert result.log_index is not None
        entry, _ = audit.verify_receipt(result.log_index, result.signed_result)  # str, as it is held
        assert entry.method.endswith("/Evaluate")
        with pytest.raises(ProofInvalid, match="not negative"):
            audit.verify_receipt(-1, result.signed_result)
        with pytest.raises(RequestInvalid):
            audit.entries(-5, 3)
    with pytest.raises(ProofInvalid, match="malformed"):
        AuditClient.connect("localhost:1", root_certificates=gw.ca_pem, log_verifier_key="garbage")


def test_registering_the_same_consent_again_answers_as_the_first_time(gateway_harness: GatewayHarness) -> None:
    """A citizen app whose RegisterConsent reply was lost tries again with the same token: it gets
    the consent, not an error, and nothing changes. Another token under the same id is refused."""
    gw = gateway_harness
    gw.register_institution("bank-a", "bank")
    wallet, token = _citizen_and_consent(gw, max_uses=3)
    with gw.client(wallet) as citizen:
        first = citizen.list_consents()[0]
        again = citizen.register_consent(token)
        assert again == first
        claims = dict(jose.unverified_claims(token, typ=CONSENT_TYP).claims)
        claims["max_uses"] = 100  # the same id, other terms, signed by the same citizen
        kid = jose.jwk_thumbprint(wallet.signing_public_key)
        forged = jose.sign_jws(claims, signing_key=wallet._signing_key, typ=CONSENT_TYP, kid=kid)
        with pytest.raises(ConsentAlreadyRegistered):
            citizen.register_consent(forged)
        assert citizen.list_consents() == [first]
