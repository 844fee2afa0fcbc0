"""Storage contract for institutions, consents and evaluations, on SQLite and PostgreSQL.

The ledger is where a consent's ``max_uses``, its revocation, the per-citizen daily budget and the
idempotency of ``request_id`` are enforced, so the races matter as much as the happy path: N callers
racing on a consent with k uses left must see exactly k successes, on every backend.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

from veilgate.errors import (
    CertificateUnknown,
    CitizenBudgetExhausted,
    ConfigurationError,
    ConsentAlreadyRegistered,
    ConsentExhausted,
    ConsentRevoked,
    ConsentUnknown,
    ConsentWrongInstitution,
    DepartmentNotRegistered,
    InstitutionAlreadyRegistered,
    InstitutionUnknown,
    VeilgateError,
)
from veilgate_server.storage import (
    ConsentPosition,
    ConsentRow,
    EvaluationPosition,
    EvaluationRow,
    Institution,
    Store,
    db,
)
from veilgate_server.storage.models import Base, Evaluation
from veilgate_server.storage.repositories import CertificateRenewal, IssuedCertificate

T0 = dt.datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
CST = dt.timezone(dt.timedelta(hours=8))
THREADS = 8
CITIZEN = "370102199001011234"
OTHER_CITIZEN = "370102198505054321"
BANK = "bank.qilu"
POLICY = ("credit.consumer_loan/v1", "a" * 64)
BUDGET = 50
SIGNING_KEY = bytes(range(32))


def _hex(tag: int) -> str:
    return f"{tag:064x}"


def _consent(store: Store, consent_id: str = "consent-1", **overrides: Any) -> ConsentRow:
    values: dict[str, Any] = {
        "consent_id": consent_id,
        "citizen_id": CITIZEN,
        "institution_id": BANK,
        "purpose": "credit.consumer_loan",
        "policies": [POLICY],
        "not_before": T0,
        "expires_at": T0 + dt.timedelta(days=30),
        "max_uses": 3,
        "token": f"header.{consent_id}.signature",
        "signing_key": SIGNING_KEY,
        "at": T0,
    }
    values.update(overrides)
    return store.consents.register(store.consents.new_consent(**values))


def _spend(store: Store, request_id: str, consent_id: str = "consent-1", /, **overrides: Any) -> EvaluationRow:
    values: dict[str, Any] = {
        "consent_id": consent_id,
        "institution_id": BANK,
        "request_id": request_id,
        "citizen_id": CITIZEN,
        "policy_id": POLICY[0],
        "policy_sha256": POLICY[1],
        "decision": "ELIGIBLE",
        "result_jws": f"result.{request_id}.sig",
        "request_hash": _hex(len(request_id)),
        "at": T0 + dt.timedelta(hours=1),
        "daily_budget": BUDGET,
    }
    values.update(overrides)
    return store.consents.spend_use_and_record(**values)


def _race(actions: list[Callable[[], object]]) -> list[object]:
    """Run the actions on threads released together; each one's return value or VeilgateError."""
    barrier = threading.Barrier(len(actions))

    def attempt(action: Callable[[], object]) -> object:
        barrier.wait(timeout=30)
        try:
            return action()
        except VeilgateError as e:
            return e

    with ThreadPoolExecutor(max_workers=len(actions)) as pool:
        futures = [pool.submit(attempt, action) for action in actions]
        return [f.result(timeout=60) for f in futures]


def _evaluation_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Evaluation)).scalar_one())


# --- institutions ---------------------------------------------------------------------------------


def test_register_and_get_institution(store: Store) -> None:
    registered = store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0)

    assert registered == Institution(
        institution_id=BANK,
        kind="bank",
        name="Qilu Bank",
        enabled=True,
        registered_at=T0,
    )
    assert store.institutions.get(BANK) == registered
    assert store.certificates.list("institution", BANK) == []


def test_an_institution_registers_with_its_certificate_in_one_write(store: Store) -> None:
    expires = T0 + dt.timedelta(days=397)
    store.institutions.register(
        BANK, kind="bank", name="Qilu Bank", at=T0, certificate_serial="0a1b", certificate_not_after=expires
    )
    assert store.certificates.list("institution", BANK) == [
        IssuedCertificate("0a1b", "institution", BANK, T0, expires, None)
    ]
    assert store.institutions.get_for_certificate(BANK, "0a1b")[1]
    with pytest.raises(ValueError, match="certificate_serial"):
        store.institutions.register("bank-2", kind="bank", name="B", at=T0, certificate_serial="0A1B")
    with pytest.raises(InstitutionUnknown):
        store.institutions.get("bank-2")
    # A serial on record already fails the whole registration: neither row is written.
    with pytest.raises(ConfigurationError, match="on record already"):
        store.institutions.register("bank-3", kind="bank", name="C", at=T0, certificate_serial="0a1b")
    with pytest.raises(InstitutionUnknown):
        store.institutions.get("bank-3")


@pytest.mark.parametrize("name", ["", "Qilu\nBank", "Qilu \x1b[31mBank", "Qilu\u200bBank", "x" * 201])
def test_an_institution_name_is_printable_text(store: Store, name: str) -> None:
    """It is shown in listings and on terminals, where a control character could rewrite them."""
    with pytest.raises(ValueError, match="name must be 1 to 200 printable characters"):
        store.institutions.register(BANK, kind="bank", name=name, at=T0)
    assert store.institutions.list() == []


@pytest.mark.parametrize("citizen_id", ["", "a b", "a\nb", "a\tb", "x" * 65])
def test_a_citizen_id_is_printable_and_without_spaces(store: Store, citizen_id: str) -> None:
    with pytest.raises(ValueError, match="citizen_id"):
        store.citizens.enroll(citizen_id, signing_key=b"\1" * 32, encryption_key=b"\2" * 32, at=T0)


def test_register_institution_twice_is_refused(store: Store) -> None:
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0)
    with pytest.raises(InstitutionAlreadyRegistered):
        store.institutions.register(BANK, kind="insurer", name="Impostor", at=T0)
    assert store.institutions.get(BANK).name == "Qilu Bank"


def test_concurrent_registration_of_one_id_has_one_winner(store: Store) -> None:
    outcomes = _race(
        [
            lambda i=i: store.institutions.register(BANK, kind="bank", name=f"bank {i}", at=T0)  # type: ignore[misc]
            for i in range(THREADS)
        ]
    )
    assert sum(isinstance(o, Institution) for o in outcomes) == 1
    assert sum(isinstance(o, InstitutionAlreadyRegistered) for o in outcomes) == THREADS - 1


@pytest.mark.parametrize(
    "institution_id", ["", "Bank", "-bank", ".bank", "bank/x", "bank qilu", "b" * 65, "bänk", "bank\n"]
)
def test_register_refuses_malformed_ids(store: Store, institution_id: str) -> None:
    with pytest.raises(ValueError, match="id must match"):
        store.institutions.register(institution_id, kind="bank", name="x", at=T0)


def test_register_refuses_unknown_kind_and_bad_name(store: Store) -> None:
    with pytest.raises(ValueError, match="kind"):
        store.institutions.register(BANK, kind="broker", name="x", at=T0)
    with pytest.raises(ValueError, match="name"):
        store.institutions.register(BANK, kind="bank", name="", at=T0)
    with pytest.raises(ValueError, match="name"):
        store.institutions.register(BANK, kind="bank", name="n" * 201, at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.institutions.register(BANK, kind="bank", name="x", at=T0.replace(tzinfo=None))
    assert store.institutions.list() == []


def test_get_unknown_institution(store: Store) -> None:
    with pytest.raises(InstitutionUnknown):
        store.institutions.get("nobody")
    with pytest.raises(InstitutionUnknown):
        store.institutions.set_enabled("nobody", False)
    with pytest.raises(InstitutionUnknown):
        store.certificates.record("institution", "nobody", "ab12", at=T0)
    with pytest.raises(InstitutionUnknown):
        store.institutions.get_for_certificate("nobody", "ab12")


def test_enable_and_disable(store: Store) -> None:
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0)

    disabled = store.institutions.set_enabled(BANK, False)
    assert not disabled.enabled
    assert not store.institutions.set_enabled(BANK, False).enabled  # idempotent
    assert store.institutions.set_enabled(BANK, True).enabled


# --- client certificates ----------------------------------------------------------------------------


def test_a_renewed_certificate_is_accepted_beside_the_old_one_until_that_is_revoked(store: Store) -> None:
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0, certificate_serial="1f" * 20)
    store.departments.register("taxation", at=T0, certificate_serial="0d")
    renewed = store.certificates.record(
        "institution", BANK, "2a", at=T0 + dt.timedelta(days=300), not_after=T0 + dt.timedelta(days=697)
    )
    assert renewed.not_after == T0 + dt.timedelta(days=697)

    accepted = store.institutions.get_for_certificate
    assert (accepted(BANK, "1f" * 20)[1], accepted(BANK, "2a")[1]) == (True, True)
    assert [c.serial for c in store.certificates.list("institution", BANK)] == ["2a", "1f" * 20]  # newest first

    revoked_at = T0 + dt.timedelta(days=301)
    revoked = store.certificates.revoke("institution", BANK, "1f" * 20, at=revoked_at)
    assert revoked == IssuedCertificate("1f" * 20, "institution", BANK, T0, None, revoked_at)
    assert (accepted(BANK, "1f" * 20)[1], accepted(BANK, "2a")[1]) == (False, True)
    # Revoking again keeps the first time.
    assert store.certificates.revoke("institution", BANK, "1f" * 20, at=revoked_at + HOUR).revoked_at == revoked_at
    assert store.certificates.list("institution", BANK) == [renewed, revoked]


def test_a_certificate_is_accepted_only_for_its_own_caller(store: Store) -> None:
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0, certificate_serial="0b")
    store.institutions.register("bank-2", kind="bank", name="B", at=T0, certificate_serial="0c")
    store.departments.register("taxation", at=T0, certificate_serial="0d")

    assert not store.institutions.get_for_certificate(BANK, "0c")[1]  # another bank's
    assert not store.institutions.get_for_certificate("bank-2", "0d")[1]  # a department's
    assert not store.departments.get_for_certificate("taxation", "0b")[1]
    assert store.departments.get_for_certificate("taxation", "0d") == (store.departments.get("taxation"), True)
    assert not store.institutions.get_for_certificate(BANK, "ff")[1]  # never issued
    with pytest.raises(CertificateUnknown):  # nobody revokes another caller's certificate
        store.certificates.revoke("institution", BANK, "0c", at=T0)
    with pytest.raises(CertificateUnknown):
        store.certificates.revoke("department", "taxation", "0b", at=T0)
    assert store.institutions.get_for_certificate("bank-2", "0c")[1]


def test_renewal_due_is_the_soonest_latest_expiry_of_the_enabled_callers(store: Store) -> None:
    days = [T0 + dt.timedelta(days=n) for n in range(400)]
    assert store.certificates.renewal_due("institution") == CertificateRenewal(None, 0)
    store.institutions.register("bank-1", kind="bank", name="A", at=T0, certificate_serial="01")  # expiry unknown
    store.institutions.register(
        "bank-2", kind="bank", name="B", at=T0, certificate_serial="02", certificate_not_after=days[30]
    )
    store.certificates.record("institution", "bank-2", "03", at=T0, not_after=days[390])  # renewed: its latest counts
    store.institutions.register(
        "bank-3", kind="bank", name="C", at=T0, certificate_serial="04", certificate_not_after=days[200]
    )
    store.institutions.register(
        "bank-4", kind="bank", name="D", at=T0, certificate_serial="05", certificate_not_after=days[10]
    )
    store.institutions.set_enabled("bank-4", False)  # a disabled bank needs no renewal
    store.institutions.register("bank-5", kind="bank", name="E", at=T0)  # nothing on record
    assert store.certificates.renewal_due("institution") == CertificateRenewal(days[200], 1)

    store.certificates.revoke("institution", "bank-3", "04", at=T0)  # bank-3 is now shut out
    assert store.certificates.renewal_due("institution") == CertificateRenewal(days[390], 2)
    store.certificates.revoke("institution", "bank-2", "03", at=T0)  # bank-2 falls back on its first
    assert store.certificates.renewal_due("institution") == CertificateRenewal(days[30], 2)
    assert store.certificates.renewal_due("department") == CertificateRenewal(None, 0)
    store.departments.register("taxation", at=T0)
    assert store.certificates.renewal_due("department") == CertificateRenewal(None, 1)


def test_certificate_records_refuse_bad_input(store: Store) -> None:
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0, certificate_serial="0b")
    with pytest.raises(ValueError, match="serial_hex"):
        store.certificates.record("institution", BANK, "0xAB", at=T0)
    with pytest.raises(ValueError, match="caller kind"):
        store.certificates.record("citizen", BANK, "0c", at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.certificates.record("institution", BANK, "0c", at=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="not_after"):
        store.certificates.record("institution", BANK, "0c", at=T0, not_after=T0.replace(tzinfo=None))
    with pytest.raises(ConfigurationError, match="on record already"):
        store.certificates.record("institution", BANK, "0b", at=T0)
    with pytest.raises(DepartmentNotRegistered):
        store.certificates.record("department", BANK, "0c", at=T0)
    assert [c.serial for c in store.certificates.list("institution", BANK)] == ["0b"]


def test_list_institutions_by_id(store: Store) -> None:
    store.institutions.register("insurer.taiping", kind="insurer", name="Taiping", at=T0)
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0)

    listed = store.institutions.list()

    assert [i.institution_id for i in listed] == [BANK, "insurer.taiping"]
    assert [i.kind for i in listed] == ["bank", "insurer"]


# --- consents -------------------------------------------------------------------------------------


def test_register_and_get_consent(store: Store) -> None:
    at_local = dt.datetime(2025, 3, 1, 17, 30, tzinfo=CST)
    registered = _consent(
        store,
        policies=[POLICY, ("credit.mortgage/v2", "b" * 64)],
        not_before=at_local,
        expires_at=at_local + dt.timedelta(days=7),
        at=at_local,
    )

    assert registered.policies == (POLICY, ("credit.mortgage/v2", "b" * 64))
    assert (registered.uses, registered.max_uses, registered.revoked_at) == (0, 3, None)
    assert registered.token == "header.consent-1.signature"
    fetched = store.consents.get("consent-1")
    assert fetched == registered
    for instant in (fetched.not_before, fetched.expires_at, fetched.registered_at):
        assert instant.utcoffset() == dt.timedelta(0)
    assert fetched.not_before == at_local


def test_register_consent_twice_is_refused(store: Store) -> None:
    _consent(store)
    with pytest.raises(ConsentAlreadyRegistered):
        _consent(store, citizen_id=OTHER_CITIZEN)
    assert store.consents.get("consent-1").citizen_id == CITIZEN


def test_registering_the_same_token_again_returns_the_consent_as_it_stands(store: Store) -> None:
    _consent(store, max_uses=3)
    _spend(store, "req-1")
    again = _consent(store, max_uses=3, at=T0 + dt.timedelta(hours=1))  # a retry, later
    assert again == store.consents.get("consent-1")
    assert (again.uses, again.registered_at) == (1, T0)


def test_concurrent_registrations_of_one_consent_id_have_one_winner(store: Store) -> None:
    outcomes = _race(
        [
            lambda i=i: _consent(store, token=f"header.consent-1.signature-{i}")  # type: ignore[misc]
            for i in range(THREADS)
        ]
    )
    assert sum(isinstance(o, ConsentRow) for o in outcomes) == 1
    assert sum(isinstance(o, ConsentAlreadyRegistered) for o in outcomes) == THREADS - 1
    [winner] = [o for o in outcomes if isinstance(o, ConsentRow)]
    assert store.consents.get("consent-1") == winner


def test_get_unknown_consent(store: Store) -> None:
    with pytest.raises(ConsentUnknown):
        store.consents.get("nope")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policies": []}, "at least one policy"),
        ({"policies": [("p", "A" * 64)]}, "sha256"),
        ({"policies": [("p", "a" * 63)]}, "sha256"),
        ({"policies": [POLICY, POLICY]}, "only once"),
        ({"expires_at": T0}, "later than not_before"),
        ({"max_uses": 0}, "max_uses"),
        ({"token": ""}, "token"),
        ({"consent_id": "c" * 129}, "consent_id"),
        ({"institution_id": "Bad Bank"}, "id must match"),
        ({"not_before": T0.replace(tzinfo=None)}, "timezone-aware"),
    ],
)
def test_register_consent_refuses_malformed_values(store: Store, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _consent(store, **overrides)
    assert store.consents.for_citizen(CITIZEN) == []


def test_for_citizen_lists_own_consents_newest_first(store: Store) -> None:
    _consent(store, "c-old", at=T0)
    _consent(store, "c-new", at=T0 + dt.timedelta(hours=2))
    _consent(store, "c-mid", at=T0 + dt.timedelta(hours=1))
    _consent(store, "c-other", citizen_id=OTHER_CITIZEN, at=T0 + dt.timedelta(hours=3))

    assert [c.consent_id for c in store.consents.for_citizen(CITIZEN)] == ["c-new", "c-mid", "c-old"]
    assert [c.consent_id for c in store.consents.for_citizen(OTHER_CITIZEN)] == ["c-other"]
    assert store.consents.for_citizen("nobody") == []


def test_for_citizen_page_after_page_with_ties_on_time(store: Store) -> None:
    """Pages follow the listing's order (newest registration first, then id descending) from any
    consent on, so consents registered at the same instant are neither lost nor listed twice."""
    same = T0 + dt.timedelta(hours=5, microseconds=123_456)
    for n in range(4):
        _consent(store, f"c-same-{n}", at=same)
        _consent(store, f"c-before-{n}", at=T0 + dt.timedelta(hours=1, minutes=n))
    _consent(store, "c-other", citizen_id=OTHER_CITIZEN, at=same)
    everything = store.consents.for_citizen(CITIZEN)
    assert [c.consent_id for c in everything] == [f"c-same-{n}" for n in (3, 2, 1, 0)] + [
        f"c-before-{n}" for n in (3, 2, 1, 0)
    ]
    assert store.consents.for_citizen(CITIZEN, limit=3) == everything[:3]

    walked: list[ConsentRow] = []
    after = None
    for _ in range(4):  # three pages of three, two and none (bounded, so that a page that repeats fails)
        page = store.consents.for_citizen(CITIZEN, limit=3, after=after)
        walked += page
        if not page:
            break
        after = ConsentPosition(page[-1].registered_at, page[-1].consent_id)
    assert walked == everything
    with pytest.raises(ValueError, match="limit must not be negative"):
        store.consents.for_citizen(CITIZEN, limit=-1)


def test_revoke_is_idempotent_and_keeps_the_first_time(store: Store) -> None:
    _consent(store)
    first = store.consents.revoke("consent-1", citizen_id=CITIZEN, at=T0 + dt.timedelta(hours=1))
    again = store.consents.revoke("consent-1", citizen_id=CITIZEN, at=T0 + dt.timedelta(hours=5))

    assert first.revoked_at == T0 + dt.timedelta(hours=1)
    assert again == first
    assert store.consents.get("consent-1").revoked_at == T0 + dt.timedelta(hours=1)


def test_revoke_another_citizens_consent_looks_unknown(store: Store) -> None:
    _consent(store)
    with pytest.raises(ConsentUnknown) as other:
        store.consents.revoke("consent-1", citizen_id=OTHER_CITIZEN, at=T0)
    with pytest.raises(ConsentUnknown) as missing:
        store.consents.revoke("no-such-consent", citizen_id=OTHER_CITIZEN, at=T0)

    assert str(other.value) == str(missing.value)
    assert store.consents.get("consent-1").revoked_at is None


# --- evaluations ----------------------------------------------------------------------------------


def test_spend_records_the_evaluation_and_counts_a_use(store: Store) -> None:
    _consent(store)
    row = _spend(store, "req-1")

    assert row == EvaluationRow(
        institution_id=BANK,
        request_id="req-1",
        consent_id="consent-1",
        citizen_id=CITIZEN,
        policy_id=POLICY[0],
        policy_sha256=POLICY[1],
        decision="ELIGIBLE",
        result_jws="result.req-1.sig",
        request_hash=_hex(5),
        created_at=T0 + dt.timedelta(hours=1),
    )
    assert store.consents.get("consent-1").uses == 1
    assert store.consents.find_evaluation(BANK, "req-1") == row
    assert store.consents.find_evaluation(BANK, "req-2") is None
    assert store.consents.find_evaluation("bank.other", "req-1") is None


def test_retry_returns_the_stored_row_and_spends_nothing(store: Store) -> None:
    _consent(store, max_uses=1)
    first = _spend(store, "req-1")

    # Even with different inputs, after the consent is used up and revoked, and over budget.
    store.consents.revoke("consent-1", citizen_id=CITIZEN, at=T0 + dt.timedelta(hours=2))
    retry = _spend(
        store,
        "req-1",
        decision="REFER",
        result_jws="other",
        at=T0 + dt.timedelta(hours=3),
        daily_budget=0,
    )

    assert retry == first
    assert store.consents.get("consent-1").uses == 1
    assert _evaluation_count(store) == 1


def test_request_ids_are_scoped_per_institution(store: Store) -> None:
    _consent(store)
    _consent(store, "consent-2", institution_id="insurer.taiping")

    a = _spend(store, "req-1")
    b = _spend(store, "req-1", consent_id="consent-2", institution_id="insurer.taiping")

    assert (a.institution_id, b.institution_id) == (BANK, "insurer.taiping")
    assert _evaluation_count(store) == 2


def test_spend_beyond_max_uses_is_refused(store: Store) -> None:
    _consent(store, max_uses=2)
    _spend(store, "req-1")
    _spend(store, "req-2")

    with pytest.raises(ConsentExhausted):
        _spend(store, "req-3")

    assert store.consents.get("consent-1").uses == 2
    assert store.consents.find_evaluation(BANK, "req-3") is None


def test_spend_after_revocation_is_refused(store: Store) -> None:
    _consent(store)
    _spend(store, "req-1")
    store.consents.revoke("consent-1", citizen_id=CITIZEN, at=T0 + dt.timedelta(hours=2))

    with pytest.raises(ConsentRevoked):
        _spend(store, "req-2", at=T0 + dt.timedelta(hours=3))

    assert store.consents.get("consent-1").uses == 1


def test_revoked_wins_over_exhausted(store: Store) -> None:
    _consent(store, max_uses=1)
    _spend(store, "req-1")
    store.consents.revoke("consent-1", citizen_id=CITIZEN, at=T0 + dt.timedelta(hours=2))
    with pytest.raises(ConsentRevoked):
        _spend(store, "req-2")


def test_spend_on_unknown_or_foreign_consent(store: Store) -> None:
    _consent(store)
    with pytest.raises(ConsentUnknown):
        _spend(store, "req-1", consent_id="nope")
    with pytest.raises(ConsentWrongInstitution):
        _spend(store, "req-1", institution_id="bank.other")
    with pytest.raises(ValueError, match="citizen"):
        _spend(store, "req-1", citizen_id=OTHER_CITIZEN)
    assert store.consents.get("consent-1").uses == 0
    assert _evaluation_count(store) == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"policy_sha256": "xyz"}, "policy_sha256"),
        ({"request_hash": "A" * 64}, "request_hash"),
        ({"decision": "D" * 17}, "decision"),
        ({"result_jws": ""}, "result_jws"),
        ({"daily_budget": -1}, "daily_budget"),
        ({"at": T0.replace(tzinfo=None)}, "timezone-aware"),
    ],
)
def test_spend_refuses_malformed_values(store: Store, overrides: dict[str, Any], message: str) -> None:
    _consent(store)
    with pytest.raises(ValueError, match=message):
        _spend(store, "req-1", **overrides)
    assert store.consents.get("consent-1").uses == 0


def test_daily_budget_counts_the_citizens_evaluations_across_consents(store: Store) -> None:
    _consent(store, "c-bank", max_uses=10)
    _consent(store, "c-insurer", institution_id="insurer.taiping", max_uses=10)
    _consent(store, "c-other-citizen", citizen_id=OTHER_CITIZEN, max_uses=10)
    start = T0 + dt.timedelta(hours=1)

    _spend(store, "r1", "c-bank", at=start, daily_budget=3)
    _spend(store, "r2", "c-insurer", institution_id="insurer.taiping", at=start, daily_budget=3)
    _spend(store, "r3", "c-bank", at=start + dt.timedelta(hours=1), daily_budget=3)
    # Another citizen's evaluations do not count against this one.
    _spend(store, "r4", "c-other-citizen", citizen_id=OTHER_CITIZEN, at=start, daily_budget=1)

    with pytest.raises(CitizenBudgetExhausted):
        _spend(store, "r5", "c-bank", at=start + dt.timedelta(hours=23), daily_budget=3)
    assert store.consents.get("c-bank").uses == 2

    # 24 h after the first two, they leave the window: two evaluations free up.
    later = start + dt.timedelta(hours=24)
    _spend(store, "r6", "c-bank", at=later, daily_budget=3)
    _spend(store, "r7", "c-bank", at=later, daily_budget=3)
    with pytest.raises(CitizenBudgetExhausted):
        _spend(store, "r8", "c-bank", at=later, daily_budget=3)


def test_zero_budget_refuses_everything(store: Store) -> None:
    _consent(store)
    with pytest.raises(CitizenBudgetExhausted):
        _spend(store, "req-1", daily_budget=0)


def test_evaluations_for_citizen_newest_first_with_limit(store: Store) -> None:
    _consent(store, max_uses=5)
    _consent(store, "c-other", citizen_id=OTHER_CITIZEN)
    for hour in (1, 3, 2):
        _spend(store, f"req-{hour}", at=T0 + dt.timedelta(hours=hour))
    _spend(store, "req-x", "c-other", citizen_id=OTHER_CITIZEN)

    listed = store.consents.evaluations_for_citizen(CITIZEN)

    assert [e.request_id for e in listed] == ["req-3", "req-2", "req-1"]
    assert [e.request_id for e in store.consents.evaluations_for_citizen(CITIZEN, limit=2)] == ["req-3", "req-2"]
    assert store.consents.evaluations_for_citizen(CITIZEN, limit=0) == []
    assert [e.request_id for e in store.consents.evaluations_for_citizen(OTHER_CITIZEN)] == ["req-x"]
    with pytest.raises(ValueError, match="limit"):
        store.consents.evaluations_for_citizen(CITIZEN, limit=-1)


def test_evaluations_for_citizen_page_after_page_with_ties_on_time(store: Store) -> None:
    """Pages follow the listing's order (newest first, then institution and request id) from any
    evaluation on, so evaluations made at the same instant are neither lost nor listed twice."""
    _consent(store, max_uses=20)
    store.institutions.register("bank-b", kind="bank", name="B", at=T0)
    _consent(store, "consent-b", institution_id="bank-b", max_uses=20)
    same = T0 + dt.timedelta(hours=5, microseconds=123_456)
    for n in range(4):
        _spend(store, f"req-same-{n}", at=same)
        _spend(store, f"req-same-{n}", "consent-b", institution_id="bank-b", at=same)
        _spend(store, f"req-before-{n}", at=T0 + dt.timedelta(hours=1, minutes=n))
    everything = store.consents.evaluations_for_citizen(CITIZEN, limit=100)
    assert len(everything) == 12

    walked: list[EvaluationRow] = []
    after = None
    for _ in range(5):  # four pages of three, then none (bounded, so that a page that repeats fails)
        page = store.consents.evaluations_for_citizen(CITIZEN, limit=3, after=after)
        walked += page
        if not page:
            break
        after = EvaluationPosition(page[-1].created_at, page[-1].institution_id, page[-1].request_id)
    assert walked == everything
    assert [(e.institution_id, e.request_id) for e in everything[:8]] == sorted(
        (institution, f"req-same-{n}") for institution in (BANK, "bank-b") for n in range(4)
    )


# --- races ----------------------------------------------------------------------------------------


def test_racing_evaluations_spend_exactly_max_uses(store: Store) -> None:
    _consent(store, max_uses=3)

    outcomes = _race([lambda i=i: _spend(store, f"req-{i}") for i in range(THREADS)])  # type: ignore[misc]

    successes = [o for o in outcomes if isinstance(o, EvaluationRow)]
    assert len(successes) == 3
    assert all(isinstance(o, ConsentExhausted) for o in outcomes if not isinstance(o, EvaluationRow))
    assert store.consents.get("consent-1").uses == 3
    assert _evaluation_count(store) == 3


def test_racing_retries_of_one_request_id_record_one_evaluation(store: Store) -> None:
    _consent(store, max_uses=1)

    outcomes = _race(
        [lambda i=i: _spend(store, "req-1", result_jws=f"result-{i}") for i in range(THREADS)]  # type: ignore[misc]
    )

    assert all(isinstance(o, EvaluationRow) for o in outcomes), outcomes
    assert len(set(outcomes)) == 1
    assert store.consents.get("consent-1").uses == 1
    assert _evaluation_count(store) == 1


def test_racing_one_request_id_under_different_consents_records_one(store: Store) -> None:
    for i in range(THREADS):
        _consent(store, f"c-{i}", max_uses=1)

    outcomes = _race([lambda i=i: _spend(store, "req-1", consent_id=f"c-{i}") for i in range(THREADS)])  # type: ignore[misc]

    assert all(isinstance(o, EvaluationRow) for o in outcomes), outcomes
    assert len(set(outcomes)) == 1
    assert sum(store.consents.get(f"c-{i}").uses for i in range(THREADS)) == 1
    assert _evaluation_count(store) == 1


def test_racing_evaluations_across_consents_respect_the_daily_budget(store: Store) -> None:
    for i in range(THREADS):
        _consent(store, f"c-{i}", max_uses=5)

    outcomes = _race(
        [lambda i=i: _spend(store, f"req-{i}", consent_id=f"c-{i}", daily_budget=3) for i in range(THREADS)]  # type: ignore[misc]
    )

    assert sum(isinstance(o, EvaluationRow) for o in outcomes) == 3
    assert sum(isinstance(o, CitizenBudgetExhausted) for o in outcomes) == THREADS - 3
    assert _evaluation_count(store) == 3


def test_racing_revocation_and_evaluations(store: Store) -> None:
    """Every evaluation either commits before the revocation or is refused after it."""
    _consent(store, max_uses=THREADS)
    revoked_at = T0 + dt.timedelta(hours=1)
    actions: list[Callable[[], object]] = [lambda i=i: _spend(store, f"req-{i}") for i in range(THREADS - 1)]  # type: ignore[misc]
    actions.append(lambda: store.consents.revoke("consent-1", citizen_id=CITIZEN, at=revoked_at))

    outcomes = _race(actions)

    successes = sum(isinstance(o, EvaluationRow) for o in outcomes)
    assert successes + sum(isinstance(o, ConsentRevoked) for o in outcomes) == THREADS - 1
    final = store.consents.get("consent-1")
    assert final.revoked_at == revoked_at
    assert final.uses == successes == _evaluation_count(store)


# --- schema ---------------------------------------------------------------------------------------


def test_migration_matches_the_models(store: Store) -> None:
    """Revision 0002 creates exactly what the models declare (columns, types, indexes, nullability)."""
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_downgrade_to_0001_and_back(store: Store) -> None:
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0)
    with store.engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
        assert not inspect(conn).has_table("institutions")
        command.upgrade(config, "head")
    assert store.institutions.list() == []


def test_revision_0010_keeps_the_certificates_callers_had_on_record(store: Store) -> None:
    """Before 0010 each caller's row held its latest serial, and any certificate from the client CA
    was let in; after it, that serial is the caller's one accepted certificate, and back again."""
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=T0, certificate_serial="0b")
    store.institutions.register("bank-2", kind="bank", name="B", at=T0)
    store.departments.register("taxation", at=T0, certificate_serial="0d")
    store.certificates.record("department", "taxation", "0e", at=T0 + HOUR)
    with store.engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
        config.attributes["connection"] = conn
        command.downgrade(config, "0009")
        assert not inspect(conn).has_table("client_certificates")
        serials = conn.exec_driver_sql("SELECT institution_id, certificate_serial FROM institutions").all()
        assert dict(serials) == {BANK: "0b", "bank-2": None}  # type: ignore[arg-type]
        latest = conn.exec_driver_sql("SELECT certificate_serial FROM departments").scalar_one()
        assert latest == "0e"  # the newest of the department's two
        command.upgrade(config, "head")
    assert store.certificates.list("institution", BANK) == [
        IssuedCertificate("0b", "institution", BANK, T0, None, None)  # its expiry was never kept
    ]
    assert store.certificates.list("institution", "bank-2") == []
    assert [c.serial for c in store.certificates.list("department", "taxation")] == ["0e"]
    assert store.departments.get_for_certificate("taxation", "0e")[1]


def test_reads_on_the_driver_cursor_agree_with_sqlalchemys(store: Store) -> None:
    """The reads every call makes run on the driver's cursor (``DriverSql``), the rest through
    SQLAlchemy: both must give the same values, instants (with and without microseconds), flags
    and all, and the driver's own writes must read back through SQLAlchemy unchanged."""
    odd = T0 + dt.timedelta(seconds=1, microseconds=123_456)
    _consent(store, "consent-odd", not_before=odd, at=odd)
    store.consents.revoke("consent-odd", citizen_id=CITIZEN, at=odd + dt.timedelta(microseconds=1))
    _consent(store, "consent-1", max_uses=5)
    spent = _spend(store, "req-odd", at=odd + dt.timedelta(hours=1))
    _spend(store, "req-even", at=T0 + dt.timedelta(hours=2))
    store.institutions.register(BANK, kind="bank", name="Qilu Bank", at=odd)
    store.institutions.set_enabled(BANK, False)

    through_sqlalchemy = {row.consent_id: row for row in store.consents.for_citizen(CITIZEN)}
    assert store.consents.get("consent-odd") == through_sqlalchemy["consent-odd"]
    assert store.consents.get("consent-odd").revoked_at == odd + dt.timedelta(microseconds=1)
    assert store.consents.get("consent-1") == through_sqlalchemy["consent-1"]
    assert store.consents.get("consent-1").uses == 2
    assert store.institutions.get(BANK) == store.institutions.list()[0]
    assert store.institutions.get(BANK).enabled is False
    recorded = {row.request_id: row for row in store.consents.evaluations_for_citizen(CITIZEN)}
    assert recorded["req-odd"] == spent == store.consents.find_evaluation(BANK, "req-odd")
    assert recorded["req-odd"].created_at == odd + dt.timedelta(hours=1)
    assert recorded["req-even"] == store.consents.find_evaluation(BANK, "req-even")
