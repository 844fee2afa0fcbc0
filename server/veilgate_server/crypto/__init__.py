"""The only part of the gateway that touches cryptographic primitives. Everyone else calls these
recipes; the wire-format recipes themselves (JWS, sealed boxes) are shared with the SDK."""

from veilgate._internal.jose import canonical_json, jwk_thumbprint
from veilgate._internal.sealed import seal
from veilgate_server.crypto.keys import GatewaySigner
from veilgate_server.crypto.tls import (
    CertificateAuthority,
    PeerCertificate,
    TlsFiles,
    ensure_local_tls,
    peer_certificate,
)

__all__ = [
    "CertificateAuthority",
    "GatewaySigner",
    "PeerCertificate",
    "TlsFiles",
    "canonical_json",
    "ensure_local_tls",
    "jwk_thumbprint",
    "peer_certificate",
    "seal",
]
