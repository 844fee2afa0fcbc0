"""A first look at the PEM bytes handed to the SDK's TLS channels.

gRPC reads certificates and keys only when it connects, and a file that holds none (a path mixed up,
a truncated copy) then fails every call as UNAVAILABLE, as if the gateway were down, with the reason
only in its C core's log. The clients refuse such bytes when they are made instead. This checks
that a complete PEM block of the right kind is there, not that it parses: gRPC decides that.
"""

from __future__ import annotations

import re
from typing import Final

from veilgate.errors import ConfigurationError

__all__ = ["require_certificate", "require_private_key"]

_CERTIFICATE: Final = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\n-----END CERTIFICATE-----", re.DOTALL)
_PRIVATE_KEY: Final = re.compile(rb"-----BEGIN ((?:[A-Z]+ )?PRIVATE KEY)-----\r?\n.+?\n-----END \1-----", re.DOTALL)


def require_certificate(value: bytes, what: str) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` holds a PEM certificate block."""
    if not isinstance(value, bytes) or _CERTIFICATE.search(value) is None:
        raise ConfigurationError(f"{what} holds no complete PEM certificate")


def require_private_key(value: bytes, what: str) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` holds a PEM private key block."""
    if not isinstance(value, bytes) or _PRIVATE_KEY.search(value) is None:
        raise ConfigurationError(f"{what} holds no complete PEM private key")
