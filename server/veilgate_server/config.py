"""Where a gateway keeps its state, and how it finds its catalog.

Everything lives under one data directory (``--data-dir`` / ``VEILGATE_DATA_DIR``, default
``./veilgate-data``)::

    veilgate.db               the embedded SQLite store (unless --database-url / VEILGATE_DATABASE_URL)
    keys/gateway-signing.key  the gateway's Ed25519 signing key (PKCS#8 PEM, 0600)
    gateway-keys.json         the public signing keys, for clients to pin (JWKS, RFC 7517/8037)
    tls/                      local CA and server certificate, made on first ``serve`` if none given
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from veilgate._internal.jose import b64url_encode
from veilgate.errors import ConfigurationError
from veilgate_server.core.catalog import Catalog, load_catalog
from veilgate_server.crypto import GatewaySigner
from veilgate_server.storage import Store, sqlite_url

__all__ = ["DEFAULT_GATEWAY_ID", "Settings", "default_policies_dir"]

DEFAULT_GATEWAY_ID = "veilgate.local"


def default_policies_dir() -> Path:
    """The catalog and policies: packaged with the wheel, or the repository's ``policies/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_policies", here.parent.parent / "policies"):
        if (candidate / "catalog.yaml").is_file():
            return candidate
    raise ConfigurationError("cannot find the policies directory; pass --policies-dir")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    policies_dir: Path | None = None
    gateway_id: str = DEFAULT_GATEWAY_ID

    @classmethod
    def from_env(cls, *, data_dir: str | None = None, database_url: str | None = None) -> Settings:
        return cls(
            data_dir=Path(data_dir or os.environ.get("VEILGATE_DATA_DIR") or "veilgate-data"),
            database_url=database_url or os.environ.get("VEILGATE_DATABASE_URL") or None,
            gateway_id=os.environ.get("VEILGATE_GATEWAY_ID") or DEFAULT_GATEWAY_ID,
        )

    @property
    def store_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "keys" / "gateway-signing.key"

    @property
    def public_keys_path(self) -> Path:
        return self.data_dir / "gateway-keys.json"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    def ensure_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigurationError(f"cannot create data directory {self.data_dir}: {e.strerror}") from e

    def load_catalog(self) -> Catalog:
        return load_catalog((self.policies_dir or default_policies_dir()) / "catalog.yaml")

    def open_store(self, *, migrate: bool = True) -> Store:
        self.ensure_data_dir()
        return Store.open(self.store_url, migrate=migrate)

    def load_signer(self) -> GatewaySigner:
        """The gateway key (created on first use) and its published JWKS next to it."""
        self.ensure_data_dir()
        signer = GatewaySigner.load_or_create(self.signing_key_path)
        jwks = {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": b64url_encode(signer.public_key),
                    "kid": signer.key_id,
                    "alg": "EdDSA",
                    "use": "sig",
                }
            ]
        }
        self.public_keys_path.write_text(json.dumps(jwks, indent=2) + "\n")
        return signer
