"""The one exception hierarchy of Veilgate, shared by the SDK and the gateway.

Every failure that crosses the wire is a ``google.rpc.Status`` whose ``ErrorInfo`` carries
``domain="veilgate"`` and a stable UPPER_SNAKE ``reason`` from ``veilgate.v1.ErrorReason``. The
gateway raises these classes; its error interceptor turns them into statuses; the SDK turns statuses
back into the same classes (:func:`error_for_reason`). So a caller catches ``TokenExpired`` whether the
check failed locally or on the gateway.

Messages are written for the caller: they say what was wrong and never echo secret or personal
values. Cryptographic failures deliberately look alike (``TOKEN_INVALID``) so that a caller cannot
learn which byte or which check failed; the detail goes to the server log only.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CatalogError",
    "CertificateNotAccepted",
    "CertificateUnknown",
    "CitizenAlreadyEnrolled",
    "CitizenBudgetExhausted",
    "CitizenNotEnrolled",
    "ClientCertificateRequired",
    "ConfigurationError",
    "ConsentAlreadyRegistered",
    "ConsentError",
    "ConsentExhausted",
    "ConsentExpired",
    "ConsentNotYetValid",
    "ConsentPolicyChanged",
    "ConsentPolicyNotCovered",
    "ConsentPurposeNotAllowed",
    "ConsentRevoked",
    "ConsentUnknown",
    "ConsentWrongInstitution",
    "DeliveryInvalid",
    "DepartmentAlreadyRegistered",
    "DepartmentDisabled",
    "DepartmentNotRegistered",
    "DepartmentUnknown",
    "GatewayUnavailable",
    "InstitutionAlreadyRegistered",
    "InstitutionDisabled",
    "InstitutionUnknown",
    "InternalError",
    "ItemNotOwned",
    "ItemUnknown",
    "MethodUnknown",
    "PeerIdentityInvalid",
    "PolicyInvalid",
    "PolicyParameterInvalid",
    "PolicyUnknown",
    "ProofInvalid",
    "RecordValueInvalid",
    "RequestIdReused",
    "RequestInvalid",
    "RequestMalformed",
    "RequestTooLarge",
    "ResultInvalid",
    "StorageError",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenLifetimeTooLong",
    "TokenNotYetValid",
    "TokenReplayed",
    "TokenWrongAudience",
    "VeilgateError",
    "WalletError",
    "error_for_reason",
]

ERROR_DOMAIN = "veilgate"


class VeilgateError(Exception):
    """Root of every Veilgate error. ``reason`` is the stable ErrorInfo reason.

    ``request_id``: on an error from :meth:`veilgate.InstitutionClient.evaluate`, the request id the
    call was sent with. Evaluating again with it is safe whatever happened (the gateway answers a
    request id it has seen with the result it recorded, spending nothing), so a caller that gave
    none can still retry without spending another use of the consent."""

    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.request_id: str | None = None


class InternalError(VeilgateError):
    """An unexpected failure on the gateway; the details are only in the server log."""

    reason = "INTERNAL"


class GatewayUnavailable(VeilgateError):
    """The gateway could not be reached, or a dependency of it was down."""

    reason = "UNAVAILABLE"


class StorageError(VeilgateError):
    """The store could not complete an operation; nothing was changed.

    ``cause`` is the database's own words for an operational failure ("unable to open database
    file", "connection refused"), for the operator: the server log and the CLI show it, a caller
    never sees it. None when the failure's text could hold values (a constraint or a data error)."""

    reason = "STORAGE_UNAVAILABLE"

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ConfigurationError(VeilgateError):
    """Operator-side configuration (files, keys, flags) is missing or wrong."""

    reason = "CONFIGURATION_INVALID"


class CatalogError(ConfigurationError):
    """The data catalog file is malformed; the message names the file and the entry."""

    reason = "CATALOG_INVALID"


class WalletError(VeilgateError):
    """A wallet file could not be read, decrypted or written (wrong passphrase looks the same)."""

    reason = "WALLET_INVALID"


# --- tokens ---------------------------------------------------------------------------------------


class TokenError(VeilgateError):
    """Family of token failures: the request's signed token was not acceptable."""

    reason = "TOKEN_INVALID"


class TokenInvalid(TokenError):
    """Malformed, wrongly signed, or using a forbidden algorithm or header. Deliberately vague."""

    reason = "TOKEN_INVALID"


class TokenExpired(TokenError):
    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(TokenError):
    reason = "TOKEN_NOT_YET_VALID"


class TokenLifetimeTooLong(TokenError):
    """``exp - iat`` is longer than the gateway accepts for this kind of token."""

    reason = "TOKEN_LIFETIME_TOO_LONG"


class TokenWrongAudience(TokenError):
    reason = "TOKEN_WRONG_AUDIENCE"


class TokenReplayed(TokenError):
    """The token's ``jti`` was already used; request tokens are single-use."""

    reason = "TOKEN_REPLAYED"


# --- citizens -------------------------------------------------------------------------------------


class CitizenNotEnrolled(VeilgateError):
    reason = "CITIZEN_NOT_ENROLLED"


class CitizenAlreadyEnrolled(VeilgateError):
    reason = "CITIZEN_ALREADY_ENROLLED"


# --- requests -------------------------------------------------------------------------------------


class RequestInvalid(VeilgateError):
    """The request is well signed but asks for something malformed."""

    reason = "REQUEST_INVALID"


class RequestTooLarge(RequestInvalid):
    reason = "REQUEST_TOO_LARGE"


class RequestMalformed(RequestInvalid):
    """The request bytes do not parse as the method's protobuf request message."""

    reason = "REQUEST_MALFORMED"


class MethodUnknown(VeilgateError):
    """The gateway has no such method (an older gateway, or a misspelt method name)."""

    reason = "METHOD_UNKNOWN"


class ItemUnknown(RequestInvalid):
    reason = "ITEM_UNKNOWN"


class DepartmentUnknown(RequestInvalid):
    reason = "DEPARTMENT_UNKNOWN"


class RecordValueInvalid(RequestInvalid):
    """A record value does not have the shape its catalog item declares; the message names the
    record, item, row and field, never the value."""

    reason = "RECORD_VALUE_INVALID"


# --- institutions and consents ---------------------------------------------------------------------


class PeerIdentityInvalid(VeilgateError):
    """The TLS client certificate does not carry exactly one acceptable SPIFFE identity."""

    reason = "PEER_IDENTITY_INVALID"


class ClientCertificateRequired(VeilgateError):
    """Institutions call over mutual TLS; this call presented no client certificate."""

    reason = "CLIENT_CERTIFICATE_REQUIRED"


class InstitutionUnknown(VeilgateError):
    reason = "INSTITUTION_UNKNOWN"


class InstitutionAlreadyRegistered(VeilgateError):
    reason = "INSTITUTION_ALREADY_REGISTERED"


class InstitutionDisabled(VeilgateError):
    reason = "INSTITUTION_DISABLED"


class DepartmentNotRegistered(VeilgateError):
    """The calling department's certificate is valid, but the operator has not registered it."""

    reason = "DEPARTMENT_NOT_REGISTERED"


class DepartmentAlreadyRegistered(VeilgateError):
    reason = "DEPARTMENT_ALREADY_REGISTERED"


class DepartmentDisabled(VeilgateError):
    reason = "DEPARTMENT_DISABLED"


class CertificateNotAccepted(VeilgateError):
    """The client certificate is signed by the gateway's client CA, but the operator has no record
    of it for this caller, or revoked it: use the caller's current certificate."""

    reason = "CERTIFICATE_NOT_ACCEPTED"


class CertificateUnknown(VeilgateError):
    reason = "CERTIFICATE_UNKNOWN"


class ItemNotOwned(VeilgateError):
    """A department pushed a record of an item that another department owns in the catalog."""

    reason = "ITEM_NOT_OWNED"


class ConsentError(VeilgateError):
    """Family of consent failures: the consent does not allow this evaluation."""

    reason = "CONSENT_INVALID"


class ConsentUnknown(ConsentError):
    reason = "CONSENT_UNKNOWN"


class ConsentAlreadyRegistered(ConsentError):
    reason = "CONSENT_ALREADY_REGISTERED"


class ConsentRevoked(ConsentError):
    reason = "CONSENT_REVOKED"


class ConsentWrongInstitution(ConsentError):
    """The consent is addressed (``aud``) to another institution than the caller."""

    reason = "CONSENT_WRONG_INSTITUTION"


class ConsentPurposeNotAllowed(ConsentError):
    """The consent's purpose is not one the calling institution's kind may use."""

    reason = "CONSENT_PURPOSE_NOT_ALLOWED"


class ConsentPolicyNotCovered(ConsentError):
    """The policy asked for is not listed in the consent."""

    reason = "CONSENT_POLICY_NOT_COVERED"


class ConsentPolicyChanged(ConsentError):
    """The consent pins a different text (sha256) of the policy than the one loaded now."""

    reason = "CONSENT_POLICY_CHANGED"


class ConsentNotYetValid(ConsentError):
    reason = "CONSENT_NOT_YET_VALID"


class ConsentExpired(ConsentError):
    reason = "CONSENT_EXPIRED"


class ConsentExhausted(ConsentError):
    """Every use the citizen granted (``max_uses``) has been spent."""

    reason = "CONSENT_EXHAUSTED"


class CitizenBudgetExhausted(VeilgateError):
    """The citizen's daily evaluation budget, across all institutions, is spent."""

    reason = "CITIZEN_BUDGET_EXHAUSTED"


class PolicyInvalid(ConfigurationError):
    """A policy file (or the signed manifest) is malformed or does not type-check; the gateway will not
    start with it. The message names the file and line."""

    reason = "POLICY_INVALID"


class PolicyParameterInvalid(RequestInvalid):
    """A caller parameter is missing, undeclared, or outside the policy's own list of values."""

    reason = "POLICY_PARAMETER_INVALID"


class PolicyUnknown(VeilgateError):
    reason = "POLICY_UNKNOWN"


class RequestIdReused(RequestInvalid):
    """The idempotency key was used before for a different request."""

    reason = "REQUEST_ID_REUSED"


# --- replies (raised by the SDK only) ---------------------------------------------------------------


class DeliveryInvalid(VeilgateError):
    """A sealed delivery did not open, or its gateway signature or binding did not verify."""

    reason = "DELIVERY_INVALID"


class ResultInvalid(VeilgateError):
    """A signed eligibility result did not verify, or does not answer the request that was made."""

    reason = "RESULT_INVALID"


class ProofInvalid(VeilgateError):
    """A log checkpoint, entry, inclusion or consistency proof did not verify."""

    reason = "PROOF_INVALID"


def _all_subclasses(cls: type[VeilgateError]) -> list[type[VeilgateError]]:
    found: list[type[VeilgateError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def _reason_table() -> dict[str, type[VeilgateError]]:
    table: dict[str, type[VeilgateError]] = {}
    # The most specific class wins for a reason shared by a family and its member (TOKEN_INVALID).
    classes: list[type[VeilgateError]] = [VeilgateError, *_all_subclasses(VeilgateError)]
    for cls in classes:
        if cls.reason not in table or issubclass(cls, table[cls.reason]):
            table[cls.reason] = cls
    return table


def error_for_reason(reason: str, message: str) -> VeilgateError:
    """The exception a caller should see for a wire ``ErrorInfo.reason``; unknown reasons stay generic."""
    cls = _reason_table().get(reason)
    if cls is None:
        err = VeilgateError(message)
        err.reason = reason  # type: ignore[misc]  # keep the wire reason of a newer gateway visible
        return err
    return cls(message)
