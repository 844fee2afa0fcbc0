"""The gateway's operations, between the thin gRPC servicers and the pure core.

Each operation takes already-decoded request values, runs the core rules against the store and the
keys, and returns values for the servicer to encode. Nothing here knows about gRPC.

Citizen operations share one shape: verify the request token (signature by the enrolled key, audience,
operation, time), do the work, and only then spend the token's ``jti`` — so a refused request leaves
nothing behind, and a replayed one is refused by the ledger's unique key.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from veilgate._internal import jose
from veilgate._internal.jose import b64url_decode
from veilgate.citizen import GET_MY_DATA
from veilgate.consent import CONSENT_TYP
from veilgate.delivery import DELIVERY_TYP
from veilgate.errors import (
    CertificateNotAccepted,
    ConsentRevoked,
    ConsentUnknown,
    DepartmentDisabled,
    InstitutionDisabled,
    PolicyUnknown,
    RequestIdReused,
    RequestInvalid,
    TokenInvalid,
    VeilgateError,
)
from veilgate.result import RESULT_TYP, request_hash
from veilgate_server.audit import CallRecord, Checkpointer
from veilgate_server.core.catalog import Catalog
from veilgate_server.core.consent import (
    CONSENT_ID_PATTERN,
    ConsentClaims,
    VerifiedToken,
    check_use,
    consent_id_claimed,
    read_consent_token,
)
from veilgate_server.core.delivery import DeliveryEncoder, select_items
from veilgate_server.core.identity import CALLER_ID_PATTERN
from veilgate_server.core.ingest import Pushed, check_push
from veilgate_server.core.merkle import inclusion_proof
from veilgate_server.core.policy import Policy, evaluate_stored
from veilgate_server.core.tokens import CitizenId, RequestClaims, read_request_token
from veilgate_server.crypto import GatewaySigner, seal
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.storage import (
    CitizenKeys,
    ConsentLedger,
    ConsentPosition,
    ConsentRow,
    Department,
    EvaluationPosition,
    EvaluationRow,
    Institution,
    RecordStore,
    RegisteredConsent,
    RequestLedger,
    SealedPush,
    StateChange,
    Store,
    StoredRecord,
)

__all__ = [
    "CITIZEN_OPERATIONS",
    "DEFAULT_DAILY_BUDGET",
    "PUSH_RECORDS",
    "Clock",
    "Gateway",
    "PushOutcome",
    "SealedDelivery",
]

Clock = Callable[[], float]
DEFAULT_DAILY_BUDGET = 20
_SERVICE = "/veilgate.v1.CitizenService/"
_NOT_ACCEPTED = "this client certificate is not on record for its caller, or was revoked: use the current one"
REGISTER_CONSENT = _SERVICE + "RegisterConsent"
LIST_CONSENTS = _SERVICE + "ListConsents"
REVOKE_CONSENT = _SERVICE + "RevokeConsent"
LIST_EVALUATIONS = _SERVICE + "ListEvaluations"
LIST_MY_ACCESS_HISTORY = _SERVICE + "ListMyAccessHistory"
PUSH_RECORDS = "/veilgate.v1.IngestService/PushRecords"
CITIZEN_OPERATIONS = (
    GET_MY_DATA,
    REGISTER_CONSENT,
    LIST_CONSENTS,
    REVOKE_CONSENT,
    LIST_EVALUATIONS,
    LIST_MY_ACCESS_HISTORY,
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{8,128}")


@dataclass(frozen=True, slots=True)
class AccessHistory:
    checkpoint: str
    log_key: bytes
    entries: list[tuple[int, bytes, list[bytes]]]
    next_before: int  # the "before" claim of the next page; 0 when this one reaches the oldest entry


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A list's "page" claim names the last item of the page before: its time in microseconds since the
# epoch, then the ids that order items of the same instant, joined by "/" (which no id holds).
_EVALUATION_PAGE = re.compile(rf"([0-9]{{1,17}})/({CALLER_ID_PATTERN.pattern})/({_REQUEST_ID.pattern})")
_CONSENT_PAGE = re.compile(rf"([0-9]{{1,17}})/({CONSENT_ID_PATTERN.pattern})")


def _page_claim(at: datetime, *ids: str) -> str:
    """The "page" claim that asks for the items after the one at ``at`` with ``ids`` (opaque to
    citizens, who pass it back as it came)."""
    return "/".join((str((at - _EPOCH) // timedelta(microseconds=1)), *ids))


def _page_position(page: object, pattern: re.Pattern[str]) -> tuple[datetime, tuple[str, ...]]:
    """The instant and the ids a "page" claim names; RequestInvalid for anything else."""
    matched = pattern.fullmatch(page) if isinstance(page, str) else None
    if matched is None:
        raise RequestInvalid("claim 'page' is not a page of this list: pass next_page as the gateway gave it")
    micros, *ids = matched.groups()
    return _EPOCH + timedelta(microseconds=int(micros)), tuple(ids)


def _evaluation_position(page: object) -> EvaluationPosition:
    at, (institution_id, request_id) = _page_position(page, _EVALUATION_PAGE)
    return EvaluationPosition(at, institution_id, request_id)


def _consent_position(page: object) -> ConsentPosition:
    at, (consent_id,) = _page_position(page, _CONSENT_PAGE)
    return ConsentPosition(at, consent_id)


def _unrecorded(method: str) -> CallRecord:
    """A record for calls made outside the RPC layer (tests, tools); nothing commits it."""
    return CallRecord(method=method, request_hash="")


@dataclass(frozen=True, slots=True)
class SealedDelivery:
    sealed: bytes
    key_id: str
    item_count: int


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What a department's push did: how many records were stored, and the indexes of those not
    applied because a newer one was held."""

    stored: int
    stale: tuple[int, ...]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(slots=True)
class Gateway:
    """Everything one gateway process serves with. Stateless apart from the store, so several
    replicas can share one PostgreSQL database."""

    gateway_id: str
    catalog: Catalog
    store: Store
    signer: GatewaySigner
    log_signer: NoteSigner
    policies: Mapping[str, Policy] = field(default_factory=dict)
    daily_budget: int = DEFAULT_DAILY_BUDGET
    history_page: int = 256  # a citizen's log entries per ListMyAccessHistory page
    evaluations_page: int = 100  # evaluations per ListEvaluations page
    consents_page: int = 100  # consents per ListConsents page
    clock: Clock = field(default=time.time)
    _deliveries: DeliveryEncoder = field(init=False)

    def __post_init__(self) -> None:
        if self.daily_budget < 0:  # refused here, not by every evaluation's spend
            raise ValueError("daily_budget must not be negative")
        if min(self.history_page, self.evaluations_page, self.consents_page) < 1:
            raise ValueError("a page holds at least one item")
        self._deliveries = DeliveryEncoder(self.catalog)

    # --- citizens ---------------------------------------------------------------------------------

    def _public_key_of(self, citizen_id: CitizenId) -> bytes:
        return self.store.citizens.keys_of(citizen_id).signing_key

    def _authenticate_citizen(
        self, token: str, operation: str, optional_claims: Collection[str] = (), *, now: float, call: CallRecord
    ) -> tuple[RequestClaims, CitizenKeys]:
        enrolled: dict[CitizenId, CitizenKeys] = {}

        def public_key_of(citizen_id: CitizenId) -> bytes:
            # Keep the whole enrollment so that a reply is sealed to the key enrolled together with
            # the signing key that verified, even if the citizen rotates keys meanwhile.
            enrolled[citizen_id] = self.store.citizens.keys_of(citizen_id)
            return enrolled[citizen_id].signing_key

        claims = read_request_token(
            token,
            public_key_of=public_key_of,
            gateway_id=self.gateway_id,
            operation=operation,
            optional_claims=optional_claims,
            now=int(now),
        )
        call.about_citizen(claims.citizen_id, as_caller=True)
        return claims, enrolled[claims.citizen_id]

    def _commit(self, call: CallRecord, change: StateChange) -> None:
        """Make the call's state change: for a call over RPC, in the transaction of its audit log
        entry (the two commit together, and a refused change is logged as the call's outcome); for
        a call in process (tools, tests), in a transaction of its own. Raises the change's refusal."""
        if call.auditor is not None:
            call.auditor.commit(call, change=change)
        else:
            self.store.apply(change)

    def _spend(self, claims: RequestClaims, *, now: float, call: CallRecord, then: StateChange | None = None) -> None:
        """Spend the request token's jti (the call's last step: a refused request leaves nothing),
        and make the call's own change, ``then``, in the same transaction."""
        self._commit(call, _SpendRequestToken(claims, now=_utc(now), then=then))

    def get_my_data(self, request_token: str, *, call: CallRecord | None = None) -> SealedDelivery:
        """The citizen's records, signed by the gateway and sealed to the citizen's X25519 key."""
        call = call or _unrecorded(GET_MY_DATA)
        now = self.clock()
        claims, keys = self._authenticate_citizen(
            request_token, GET_MY_DATA, ("items", "departments"), now=now, call=call
        )
        selected = select_items(
            self.catalog, items=claims.string_list("items"), departments=claims.string_list("departments")
        )
        everything = len(selected) == len(self.catalog.items)  # read all rows; no 188-value IN list
        records = self.store.records.for_delivery(
            claims.citizen_id, None if everything else [item.id for item in selected]
        )
        call.watermark = f"wm_{secrets.token_hex(12)}"
        payload, item_count = self._deliveries.payload(
            gateway_id=self.gateway_id,
            citizen_id=claims.citizen_id,
            selected=selected,
            records=records,
            request_token=request_token,
            delivery_id=secrets.token_urlsafe(16),
            watermark=call.watermark,
            issued_at=int(now),
        )
        signer = self.signer  # once: a key rotation may swap it meanwhile (serving.SigningKeyFollower)
        signed = signer.sign_payload(payload, typ=DELIVERY_TYP)
        sealed = seal(signed.encode("ascii"), recipient_public_key=keys.encryption_key)
        call.result(sealed)
        self._spend(claims, now=now, call=call)
        return SealedDelivery(sealed=sealed, key_id=signer.key_id, item_count=item_count)

    def register_consent(self, request_token: str, consent_token: str, *, call: CallRecord | None = None) -> ConsentRow:
        """Record a consent the citizen signed. Checked now against the institution and the loaded
        policies, so that a consent that could never be used is refused while the citizen is there."""
        call = call or _unrecorded(REGISTER_CONSENT)
        now = self.clock()
        claims, keys = self._authenticate_citizen(request_token, REGISTER_CONSENT, ("consent",), now=now, call=call)

        def public_key_of(citizen_id: CitizenId) -> bytes:  # the key the request just verified with
            if citizen_id != claims.citizen_id:  # refused before a lookup that would say who is enrolled
                raise TokenInvalid("the request must name the consent it registers, signed by the same citizen")
            return keys.signing_key

        consent = read_consent_token(consent_token, public_key_of=public_key_of)
        call.consent = consent.consent_id
        if consent.citizen_id != claims.citizen_id or claims.extra.get("consent") != consent.consent_id:
            raise TokenInvalid("the request must name the consent it registers, signed by the same citizen")
        institution = self.store.institutions.get(consent.institution_id)
        if not institution.enabled:  # it could not use the consent: say so while the citizen is there
            raise InstitutionDisabled(f"institution {institution.institution_id} is disabled and cannot use consents")
        for pin in consent.policies:
            policy = self._policy(pin.id)
            check_use(
                consent,
                institution_id=institution.institution_id,
                institution_kind=institution.kind,
                policy_id=pin.id,
                policy_sha256=policy.sha256,
                policy_purpose=policy.purpose,
                now=max(int(now), consent.not_before),
            )
        registration = _RegisterConsent(
            ConsentLedger.new_consent(
                consent_id=consent.consent_id,
                citizen_id=consent.citizen_id,
                institution_id=consent.institution_id,
                purpose=consent.purpose,
                policies=[(pin.id, pin.sha256) for pin in consent.policies],
                not_before=_utc(consent.not_before),
                expires_at=_utc(consent.expires_at),
                max_uses=consent.max_uses,
                token=consent_token,
                signing_key=keys.signing_key,  # what verified it: an Evaluate need not verify it again
                at=_utc(now),
            )
        )
        # Stored with the request token's spend and the call's log entry, or not at all. The very
        # same token again (a retry after a lost reply) is answered as the first time was.
        self._spend(claims, now=now, call=call, then=registration)
        assert registration.stored is not None  # set by apply, which returned
        return registration.stored

    def list_consents(self, request_token: str, *, call: CallRecord | None = None) -> tuple[list[ConsentRow], str]:
        """A page of the citizen's consents (``consents_page``, newest registration first, after the
        token's "page" claim when it has one), and the "page" claim of the next page ("" when this
        one reaches the oldest)."""
        call = call or _unrecorded(LIST_CONSENTS)
        now = self.clock()
        claims, _ = self._authenticate_citizen(request_token, LIST_CONSENTS, ("page",), now=now, call=call)
        page = claims.extra.get("page")
        after = None if page is None else _consent_position(page)
        rows = self.store.consents.for_citizen(claims.citizen_id, limit=self.consents_page + 1, after=after)
        self._spend(claims, now=now, call=call)
        if len(rows) <= self.consents_page:
            return rows, ""
        rows = rows[: self.consents_page]
        return rows, _page_claim(rows[-1].registered_at, rows[-1].consent_id)

    def revoke_consent(self, request_token: str, *, call: CallRecord | None = None) -> ConsentRow:
        call = call or _unrecorded(REVOKE_CONSENT)
        now = self.clock()
        claims, _ = self._authenticate_citizen(request_token, REVOKE_CONSENT, ("consent",), now=now, call=call)
        consent_id = claims.extra.get("consent")
        if not isinstance(consent_id, str):
            raise RequestInvalid("claim 'consent' must name the consent id to revoke")
        call.consent = consent_id
        revocation = _RevokeConsent(consent_id, citizen_id=claims.citizen_id, at=_utc(now))
        self._spend(claims, now=now, call=call, then=revocation)
        assert revocation.stored is not None  # set by apply, which returned
        return revocation.stored

    def list_evaluations(
        self, request_token: str, *, call: CallRecord | None = None
    ) -> tuple[list[EvaluationRow], str]:
        """A page of the evaluations under the citizen's consents (``evaluations_page``, newest
        first, after the token's "page" claim when it has one), and the "page" claim of the next
        page ("" when this one reaches the oldest)."""
        call = call or _unrecorded(LIST_EVALUATIONS)
        now = self.clock()
        claims, _ = self._authenticate_citizen(request_token, LIST_EVALUATIONS, ("page",), now=now, call=call)
        page = claims.extra.get("page")
        after = None if page is None else _evaluation_position(page)
        rows = self.store.consents.evaluations_for_citizen(
            claims.citizen_id, limit=self.evaluations_page + 1, after=after
        )
        self._spend(claims, now=now, call=call)
        if len(rows) <= self.evaluations_page:
            return rows, ""
        rows = rows[: self.evaluations_page]
        return rows, _page_claim(rows[-1].created_at, rows[-1].institution_id, rows[-1].request_id)

    def access_history(
        self, request_token: str, *, checkpointer: Checkpointer, call: CallRecord | None = None
    ) -> AccessHistory:
        """A page of the citizen's entries in the audit log (``history_page``, newest first, below
        the token's "before" claim when it has one), each with an inclusion proof against one
        signed checkpoint, and the citizen's log key to recognise them with."""
        call = call or _unrecorded(LIST_MY_ACCESS_HISTORY)
        now = self.clock()
        claims, _ = self._authenticate_citizen(request_token, LIST_MY_ACCESS_HISTORY, ("before",), now=now, call=call)
        before = claims.positive_integer("before")
        log = self.store.log
        key = log.pseudonym_key(claims.citizen_id, create=True)
        assert key is not None
        indices = log.indices_for_citizen(claims.citizen_id, limit=self.history_page + 1, before=before)
        older = len(indices) > self.history_page
        indices = indices[: self.history_page]
        checkpoint = checkpointer.covering(max(indices, default=-1) + 1)
        entries: list[tuple[int, bytes, list[bytes]]] = []
        if checkpoint is not None:
            for index in indices:
                if index < checkpoint.tree_size:
                    [entry] = log.entries(index, 1)
                    entries.append((index, entry.entry, inclusion_proof(index, checkpoint.tree_size, log)))
        self._spend(claims, now=now, call=call)
        return AccessHistory(
            checkpoint=checkpoint.note if checkpoint else "",
            log_key=key,
            entries=entries,
            next_before=indices[-1] if older else 0,
        )

    # --- institutions -------------------------------------------------------------------------------

    def _policy(self, policy_id: str) -> Policy:
        policy = self.policies.get(policy_id)
        if policy is None:
            raise PolicyUnknown(f"no policy {policy_id!r} is loaded")
        return policy

    def authenticate_institution(self, institution_id: str, certificate_serial: str) -> Institution:
        """The registered, enabled institution behind a verified client certificate, which must be
        one of its certificates on record and not revoked."""
        institution, accepted = self.store.institutions.get_for_certificate(institution_id, certificate_serial)
        if not institution.enabled:
            raise InstitutionDisabled(f"institution {institution_id} is disabled")
        if not accepted:
            raise CertificateNotAccepted(_NOT_ACCEPTED)
        return institution

    # --- departments ------------------------------------------------------------------------------

    def authenticate_department(self, department_id: str, certificate_serial: str) -> Department:
        """The registered, enabled department behind a verified client certificate, which must be
        one of its certificates on record and not revoked."""
        department, accepted = self.store.departments.get_for_certificate(department_id, certificate_serial)
        if not department.enabled:
            raise DepartmentDisabled(f"department {department_id} is disabled")
        if not accepted:
            raise CertificateNotAccepted(_NOT_ACCEPTED)
        return department

    def push_records(
        self, department: Department, records: Sequence[Pushed], *, call: CallRecord | None = None
    ) -> PushOutcome:
        """Check a department's batch against the catalog (:func:`~veilgate_server.core.ingest.check_push`)
        and store it sealed, in the transaction of the call's log entry: the records and the entry
        that says they were pushed commit together or not at all."""
        now = self.clock()
        checked = check_push(records, catalog=self.catalog, department=department.department_id, today=_utc(now).date())
        store = self.store.records
        sealed = store.seal_push(  # before the log's transaction: it holds every other call's entry
            [StoredRecord(r.citizen_id, r.item_id, r.department, r.as_of, r.value_json) for r in checked],
            now=_utc(now),
        )
        push = _PushRecords(store, sealed)
        self._commit(call or _unrecorded(PUSH_RECORDS), push)
        return PushOutcome(stored=len(checked) - len(push.stale), stale=tuple(push.stale))

    def policies_for(self, institution: Institution) -> list[Policy]:
        return [p for p in self.policies.values() if institution.kind in p.institution_kinds]

    def _read_consent(self, consent_token: str) -> tuple[ConsentClaims, RegisteredConsent | None]:
        """The consent token's claims, checked, and the consent as registered (None if it is not),
        with its citizen's enrolled key: one read for both. A token byte-identical to the registered
        one, whose citizen still has the key that verified it then, is not verified again (see
        :func:`~veilgate_server.core.consent.read_consent_token`)."""
        parsed = jose.unverified_claims(consent_token, typ=CONSENT_TYP)
        consent_id = consent_id_claimed(parsed)
        registered = None if consent_id is None else self.store.consents.registered(consent_id)
        if registered is None or registered.enrolled_key is None:
            return read_consent_token(parsed, public_key_of=self._public_key_of), registered
        row, enrolled_key = registered.consent, registered.enrolled_key

        def public_key_of(citizen_id: CitizenId) -> bytes:
            return enrolled_key if citizen_id == row.citizen_id else self._public_key_of(citizen_id)

        verified = None if row.signing_key is None else VerifiedToken(row.token, row.signing_key)
        return read_consent_token(parsed, public_key_of=public_key_of, verified=verified), registered

    @staticmethod
    def _registered_consent(
        consent: ConsentClaims, consent_token: str, registered: RegisteredConsent | None
    ) -> ConsentRow:
        row = None if registered is None else registered.consent
        if row is None or row.citizen_id != consent.citizen_id or row.token != consent_token:
            raise ConsentUnknown("this consent is not registered; the citizen must register it first")
        if row.revoked_at is not None:
            raise ConsentRevoked("the citizen revoked this consent")
        return row

    def evaluate(
        self,
        institution: Institution,
        *,
        policy_id: str,
        consent_token: str,
        request_id: str,
        parameters: Mapping[str, str],
        call: CallRecord | None = None,
    ) -> str:
        """Evaluate a policy under a consent; returns the gateway-signed result (JWS).

        Every consent rule is enforced here, and the use is spent in the same transaction that records
        the evaluation; a repeated ``request_id`` returns the recorded result and spends nothing.
        """
        call = call or _unrecorded("Evaluate")
        now = self.clock()
        if not _REQUEST_ID.fullmatch(request_id):
            raise RequestInvalid("request_id must be 8-128 characters of [A-Za-z0-9_.:-]")
        policy = self._policy(policy_id)
        call.policy_id, call.policy_sha256 = policy.id, policy.sha256
        consent, registered = self._read_consent(consent_token)
        call.about_citizen(consent.citizen_id, as_caller=False)
        call.consent = consent.consent_id
        asked = request_hash(
            consent_id=consent.consent_id, policy_id=policy_id, request_id=request_id, parameters=parameters
        )
        asked_hex = b64url_decode(asked).hex()  # the store keeps digests in hex
        recorded = self.store.consents.find_evaluation(institution.institution_id, request_id)
        if recorded is not None:
            return _replay(recorded, asked_hex, call)
        self._registered_consent(consent, consent_token, registered)
        check_use(
            consent,
            institution_id=institution.institution_id,
            institution_kind=institution.kind,
            policy_id=policy.id,
            policy_sha256=policy.sha256,
            policy_purpose=policy.purpose,
            now=int(now),
        )
        outcome = evaluate_stored(
            policy,
            records=self._inputs_of(consent.citizen_id, policy),
            params=parameters,
            as_of=_utc(now).date(),
        )
        result: dict[str, Any] = {
            "iss": self.gateway_id,
            "aud": institution.institution_id,
            "jti": secrets.token_urlsafe(16),
            "iat": int(now),
            "request_id": request_id,
            "request": asked,
            "consent": consent.consent_id,
            "policy": {"id": policy.id, "version": policy.version, "sha256": policy.sha256},
            "decision": outcome.decision,
            "bands": dict(outcome.bands),
            "reasons": list(outcome.reasons),
            "data_as_of": dict(outcome.data_as_of),
        }
        change = _RecordEvaluation(
            EvaluationRow(
                institution_id=institution.institution_id,
                request_id=request_id,
                consent_id=consent.consent_id,
                citizen_id=consent.citizen_id,
                policy_id=policy.id,
                policy_sha256=policy.sha256,
                decision=outcome.decision,
                result_jws=self.signer.sign(result, typ=RESULT_TYP),
                request_hash=asked_hex,
                created_at=_utc(now),
            ),
            daily_budget=self.daily_budget,
            call=call,
        )
        self._commit(call, change)
        assert change.result_jws is not None  # set by apply, which returned
        return change.result_jws

    def _inputs_of(self, citizen_id: str, policy: Policy) -> dict[str, tuple[date, str]]:
        """Only the records the policy declares: nothing else is read or handed to CEL. Their values
        stay the stored JSON text, which the policy reads (see ``evaluate_stored``)."""
        records = self.store.records.for_citizen(citizen_id, [item.id for item in policy.inputs])
        return {r.item_id: (r.as_of, r.value_json) for r in records}


def _replay(row: EvaluationRow, asked: str, call: CallRecord) -> str:
    """The recorded result for a request id, if it was recorded for this very request."""
    if row.request_hash != asked:
        raise RequestIdReused("this request_id was used for a different request; choose a new one")
    call.decision = row.decision
    call.result(row.result_jws.encode("ascii"))
    return row.result_jws


@dataclass(slots=True)
class _SpendRequestToken:
    """The state change of a citizen's call: its request token's jti spent and, with ``then``,
    the call's own change; if that is refused, the token is given back (a refused request leaves
    nothing)."""

    claims: RequestClaims
    now: datetime
    then: StateChange | None = None

    def apply(self, connection: Connection) -> None:
        claims = self.claims
        RequestLedger.consume_in(
            connection, claims.citizen_id, claims.jti, expires_at=_utc(claims.expires_at), now=self.now
        )
        if self.then is None:
            return
        try:
            self.then.apply(connection)
        except VeilgateError:
            RequestLedger.give_back_in(connection, claims.citizen_id, claims.jti)
            raise


@dataclass(slots=True)
class _PushRecords:
    """A department's checked records, stored (see :meth:`RecordStore.push_in`)."""

    records: RecordStore
    push: SealedPush
    stale: list[int] = field(default_factory=list)

    def apply(self, connection: Connection) -> None:
        self.stale = self.records.push_in(connection, self.push)


@dataclass(slots=True)
class _RegisterConsent:
    """A citizen's consent, stored (see :meth:`ConsentLedger.register_in`)."""

    consent: ConsentRow
    stored: ConsentRow | None = None

    def apply(self, connection: Connection) -> None:
        self.stored = ConsentLedger.register_in(connection, self.consent)


@dataclass(slots=True)
class _RevokeConsent:
    """A citizen's consent, revoked (see :meth:`ConsentLedger.revoke_in`)."""

    consent_id: str
    citizen_id: str
    at: datetime
    stored: ConsentRow | None = None

    def apply(self, connection: Connection) -> None:
        self.stored = ConsentLedger.revoke_in(connection, self.consent_id, citizen_id=self.citizen_id, at=self.at)


@dataclass(slots=True)
class _RecordEvaluation:
    """The state change of an evaluation: one use of the consent spent and the signed result
    recorded. A racing call with the same request id may have recorded it first: then its result is
    the answer (or, if it asked something else, REQUEST_ID_REUSED), and nothing is spent."""

    evaluation: EvaluationRow
    daily_budget: int
    call: CallRecord
    result_jws: str | None = None

    def apply(self, connection: Connection) -> None:
        row = ConsentLedger.spend_use_and_record_in(connection, self.evaluation, daily_budget=self.daily_budget)
        self.result_jws = _replay(row, self.evaluation.request_hash, self.call)
