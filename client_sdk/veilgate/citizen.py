"""The citizen side of the SDK: talk to a gateway with a wallet.

    wallet = CitizenWallet.load("me.wallet", passphrase)
    with CitizenClient("gateway.example:7443", wallet, root_certificates=ca_pem) as client:
        delivery = client.get_my_data(departments=["medical_insurance"])
        for item in delivery.items: ...

Every call has a deadline; every failure is a :class:`veilgate.errors.VeilgateError` subclass.
Gateway keys: pass the keys you trust (``gateway_keys``) to pin them. Without them the client takes the
keys the gateway publishes over the TLS channel on first use (trust on first use, bound to the server
certificate you chose to trust).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc

from veilgate._internal import jose
from veilgate._internal.pem import require_certificate
from veilgate._internal.status import call
from veilgate.audit import AuditEntry, LogVerifier, parse_entry
from veilgate.consent import CONSENT_TYP, PolicyInfo, PolicyPin
from veilgate.delivery import DataDelivery, GatewayKey
from veilgate.errors import ConfigurationError, DeliveryInvalid, InternalError, ProofInvalid
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc, eligibility_pb2
from veilgate.wallet import CitizenWallet

__all__ = ["GET_MY_DATA", "CitizenClient", "ConsentInfo", "EvaluationRecord", "GatewayInfo"]

_SERVICE = "/veilgate.v1.CitizenService/"
GET_MY_DATA = _SERVICE + "GetMyData"
_log = logging.getLogger(__name__)
_Reply = TypeVar("_Reply")
_Row = TypeVar("_Row")


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """The gateway's identity (the ``aud`` of request tokens) and the signing keys this client trusts."""

    gateway_id: str
    signing_keys: tuple[GatewayKey, ...]
    log_verifier_key: str = ""


@dataclass(frozen=True, slots=True)
class ConsentInfo:
    """A consent as the gateway holds it: who may ask, what, until when, and how often it was used."""

    consent_id: str
    institution_id: str
    purpose: str
    policies: tuple[PolicyPin, ...]
    not_before: int
    expires_at: int
    max_uses: int
    uses: int
    revoked_at: int | None
    registered_at: int

    @classmethod
    def from_proto(cls, c: citizen_pb2.Consent) -> ConsentInfo:
        return cls(
            consent_id=c.consent_id,
            institution_id=c.institution_id,
            purpose=c.purpose,
            policies=tuple(PolicyPin(p.id, p.sha256) for p in c.policies),
            not_before=c.not_before,
            expires_at=c.expires_at,
            max_uses=c.max_uses,
            uses=c.uses,
            revoked_at=c.revoked_at or None,
            registered_at=c.registered_at,
        )


@dataclass(frozen=True, slots=True)
class EvaluationRecord:
    """One evaluation made under the citizen's consents: who asked which policy, when, and the answer."""

    institution_id: str
    consent_id: str
    policy_id: str
    decision: str
    evaluated_at: int
    request_id: str


class CitizenClient:
    """A citizen's connection to one gateway."""

    def __init__(
        self,
        target: str,
        wallet: CitizenWallet,
        *,
        root_certificates: bytes | None = None,
        gateway_keys: Sequence[GatewayKey] | None = None,
        timeout: float = 10.0,
        insecure_plaintext: bool = False,
        log_verifier_key: str | None = None,
    ) -> None:
        if insecure_plaintext:
            _log.warning("insecure plaintext channel to %s: for local development only", target)
            self._channel = grpc.insecure_channel(target)
        else:
            if root_certificates is not None:  # None: the system's roots
                require_certificate(root_certificates, "root_certificates (the gateway's CA)")
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials)
        self._stub = citizen_pb2_grpc.CitizenServiceStub(self._channel)
        self._wallet = wallet
        self._timeout = timeout
        self._pinned = tuple(gateway_keys) if gateway_keys is not None else None
        self._log_key = log_verifier_key
        self._info: GatewayInfo | None = None

    def __enter__(self) -> CitizenClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a call after it raises :class:`~veilgate.errors.ConfigurationError`."""
        self._channel.close()

    def gateway_info(self) -> GatewayInfo:
        """Fetch (once) the gateway's id and keys. Pinned keys, when given, must be among them:
        otherwise nothing the gateway signs would verify, and a GetMyData would spend its request
        token and be logged before the delivery was refused."""
        if self._info is None:
            reply = call(self._stub.GetGatewayInfo, citizen_pb2.GetGatewayInfoRequest(), timeout=self._timeout)
            published = [GatewayKey(key_id=k.key_id, public_key=k.public_key) for k in reply.signing_keys]
            if self._pinned is not None and not set(self._pinned) & set(published):
                raise ConfigurationError("none of the pinned gateway keys is one this gateway publishes")
            keys = self._pinned if self._pinned is not None else tuple(published)
            self._info = GatewayInfo(reply.gateway_id, keys, reply.log_verifier_key)
        return self._info

    def list_policies(self) -> list[PolicyInfo]:
        """Every policy the gateway evaluates: which kinds of institution may ask it, which of the
        citizen's catalog items it reads, what it can answer, and what a consent pins
        (``policy.pin``). Show it before the citizen signs a consent; needs no request token."""
        reply = self._call(self._stub.ListPolicies, eligibility_pb2.ListPoliciesRequest())
        return [PolicyInfo.from_proto(p) for p in reply.policies]

    def get_my_data(
        self, *, items: Sequence[str] | None = None, departments: Sequence[str] | None = None
    ) -> DataDelivery:
        """Fetch, open and verify the citizen's records (all of them, or the named items/departments)."""
        info = self.gateway_info()
        claims: dict[str, list[str]] = {}
        if items is not None:
            claims["items"] = list(items)
        if departments is not None:
            claims["departments"] = list(departments)
        token = self._wallet.request_token(audience=info.gateway_id, operation=GET_MY_DATA, claims=claims)
        return self.send_get_my_data(token)

    def _token(self, operation: str, claims: dict[str, Any] | None = None) -> str:
        info = self.gateway_info()
        return self._wallet.request_token(audience=info.gateway_id, operation=_SERVICE + operation, claims=claims)

    def _call(self, method: Callable[..., _Reply], request: object) -> _Reply:
        return call(method, request, timeout=self._timeout)

    def grant_consent(
        self,
        *,
        institution_id: str,
        purpose: str,
        policies: Sequence[PolicyPin],
        max_uses: int = 1,
        valid_for: int = 7 * 24 * 3600,
    ) -> tuple[str, ConsentInfo]:
        """Sign a consent with the wallet, register it with the gateway, and return the token to hand
        to the institution (in real life, as a QR code) with the gateway's record of it."""
        token = self._wallet.consent_token(
            institution_id=institution_id, purpose=purpose, policies=policies, max_uses=max_uses, valid_for=valid_for
        )
        return token, self.register_consent(token)

    def register_consent(self, consent_token: str) -> ConsentInfo:
        """Register a consent the wallet signed. Safe to repeat with the same token (after a reply
        that was lost, say): the gateway answers with the consent as registered the first time."""
        consent_id = jose.unverified_claims(consent_token, typ=CONSENT_TYP).claims.get("jti")
        request = citizen_pb2.RegisterConsentRequest(
            request_token=self._token("RegisterConsent", {"consent": consent_id}), consent_token=consent_token
        )
        return ConsentInfo.from_proto(self._call(self._stub.RegisterConsent, request).consent)

    def list_consents(self) -> list[ConsentInfo]:
        """Every consent this citizen registered, with its uses and whether it was revoked, newest
        registration first: page by page (:meth:`list_consents_page`), each page with a request
        token of its own."""
        return _every_page(self.list_consents_page, "consents")

    def list_consents_page(self, page: str | None = None) -> tuple[list[ConsentInfo], str]:
        """One page of :meth:`list_consents`: the newest, or those after ``page`` (the ``next_page``
        of the page before, as it came); and the ``next_page`` of this one, "" when it reaches the
        oldest."""
        claims = None if page is None else {"page": page}
        request = citizen_pb2.ListConsentsRequest(request_token=self._token("ListConsents", claims))
        reply = self._call(self._stub.ListConsents, request)
        return [ConsentInfo.from_proto(c) for c in reply.consents], reply.next_page

    def revoke_consent(self, consent_id: str) -> ConsentInfo:
        """Revoke at once: the next evaluation under this consent is refused."""
        request = citizen_pb2.RevokeConsentRequest(request_token=self._token("RevokeConsent", {"consent": consent_id}))
        return ConsentInfo.from_proto(self._call(self._stub.RevokeConsent, request).consent)

    def list_evaluations(self) -> list[EvaluationRecord]:
        """Who asked what under my consents, newest first: every evaluation, page by page
        (:meth:`list_evaluations_page`), each page with a request token of its own."""
        return _every_page(self.list_evaluations_page, "evaluations")

    def list_evaluations_page(self, page: str | None = None) -> tuple[list[EvaluationRecord], str]:
        """One page of :meth:`list_evaluations`: the newest, or those after ``page`` (the ``next_page``
        of the page before, as it came); and the ``next_page`` of this one, "" when it reaches the
        oldest."""
        claims = None if page is None else {"page": page}
        request = citizen_pb2.ListEvaluationsRequest(request_token=self._token("ListEvaluations", claims))
        reply = self._call(self._stub.ListEvaluations, request)
        rows = [
            EvaluationRecord(
                institution_id=e.institution_id,
                consent_id=e.consent_id,
                policy_id=e.policy_id,
                decision=e.decision,
                evaluated_at=e.evaluated_at,
                request_id=e.request_id,
            )
            for e in reply.evaluations
        ]
        return rows, reply.next_page

    def send_get_my_data(self, request_token: str) -> DataDelivery:
        """Send a GetMyData request token made elsewhere (e.g. on a separate signing device)."""
        info = self.gateway_info()
        request = citizen_pb2.GetMyDataRequest(request_token=request_token)
        reply = self._call(self._stub.GetMyData, request)
        if reply.gateway_key_id not in {k.key_id for k in info.signing_keys}:
            raise DeliveryInvalid("delivery is signed by a key this client does not trust")
        delivery = self._wallet.open_delivery(
            reply.sealed_delivery, gateway_keys=info.signing_keys, request_token=request_token
        )
        return dataclasses.replace(delivery, log_index=reply.log_index, sealed=reply.sealed_delivery)

    def access_history(self) -> list[tuple[int, AuditEntry]]:
        """Every entry about me in the audit log (newest first), each proven included in a checkpoint
        signed by the log key and recognised as mine with my log key. The gateway returns them a
        page at a time (:meth:`access_history_page`); this asks for every page, each with a request
        token of its own, and each page is itself logged (as a newer entry, not in this list)."""
        history: list[tuple[int, AuditEntry]] = []
        before: int | None = None
        while True:
            page, before = self.access_history_page(before)
            history += page
            if not before:
                return history

    def access_history_page(self, before: int | None = None) -> tuple[list[tuple[int, AuditEntry]], int]:
        """One page of :meth:`access_history`: my newest entries, or with ``before`` those below
        that log index; and the ``before`` that asks for the next page, 0 when this one reaches my
        oldest entry. ProofInvalid when an entry is not proven, not mine, or not in its place."""
        info = self.gateway_info()
        claims = None if before is None else {"before": before}
        request = citizen_pb2.ListMyAccessHistoryRequest(request_token=self._token("ListMyAccessHistory", claims))
        reply = self._call(self._stub.ListMyAccessHistory, request)
        if not reply.entries:
            return [], 0
        verifier = LogVerifier(self._log_key or info.log_verifier_key)
        checkpoint = verifier.checkpoint(reply.checkpoint)
        history = []
        below = before if before is not None else checkpoint.tree_size
        for item in reply.entries:
            if item.index >= below:  # newest first, each page below the one before it
                raise ProofInvalid("the gateway returned the entries of the access history out of order")
            below = item.index
            verifier.inclusion(item.entry, index=item.index, proof=list(item.inclusion_proof), checkpoint=checkpoint)
            entry = parse_entry(item.entry)
            if not entry.is_about(reply.log_key):
                raise ProofInvalid("the gateway returned an entry that is not about this citizen")
            history.append((item.index, entry))
        if reply.next_before_index and reply.next_before_index != below:
            raise ProofInvalid("the gateway's next page of the access history does not follow this one")
        return history, reply.next_before_index


def _every_page(page_of: Callable[[str | None], tuple[list[_Row], str]], what: str) -> list[_Row]:
    """Every row of a paged list, walked from the newest page: ``page_of(page)`` gives a page's rows
    and the ``next_page`` after them ("" at the end). A next page that does not move on is refused
    rather than asked for again and again."""
    rows: list[_Row] = []
    page: str | None = None
    while True:
        found, following = page_of(page)
        if following and (following == page or not found):
            raise InternalError(f"the gateway's next page of {what} does not move on from this one")
        rows += found
        if not following:
            return rows
        page = following
