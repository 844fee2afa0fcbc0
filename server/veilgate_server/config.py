"""Where a gateway keeps its state, and how it finds its catalog.

Everything lives under one data directory (``--data-dir`` / ``VEILGATE_DATA_DIR``, default
``./veilgate-data``)::

    veilgate.db               the embedded SQLite store (unless --database-url / VEILGATE_DATABASE_URL)
    keys/gateway-signing.key  the gateway's Ed25519 signing key (PKCS#8 PEM, 0600)
    gateway-keys.json         the public signing keys, for clients to pin (JWKS, RFC 7517/8037)
    tls/                      local CA and server certificate, made on first ``serve`` if none given
    tls/institution-ca.*      the CA that issues institutions' client certificates
    institutions/<id>/        client certificates issued by ``veilgate institution add``
    governance.vkey           verifier key(s) of the policy governance key, one per line
    keys/log-signing.key      the audit log's checkpoint key (Go sumdb/note private key string, 0600)
    keys/records.key          the key that wraps each citizen's data key (0600; never in the database)
    log.vkey                  its verifier key, for auditors to pin

Policies come from ``--policies-dir`` (``VEILGATE_POLICIES_DIR``; default: the packaged ones) and are
served only when ``MANIFEST`` there is signed by a governance key the gateway trusts
(``--governance-key`` / ``VEILGATE_GOVERNANCE_KEY``, or ``governance.vkey``). There is no unsigned mode.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from veilgate._internal.jose import b64url_encode
from veilgate.errors import ConfigurationError
from veilgate_server.core.catalog import Catalog, load_catalog
from veilgate_server.core.manifest import require_catalog, require_listed
from veilgate_server.core.policy import Policy, load_policies
from veilgate_server.crypto import GatewaySigner
from veilgate_server.crypto.keys import (
    load_retired_keys,
    replace_durably,
    rotate_gateway_key,
    warn_if_others_can_read,
    write_private_file,
)
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.crypto.records import RecordsKey
from veilgate_server.governance import verify_manifest
from veilgate_server.storage import Store, sqlite_url

_log = logging.getLogger("veilgate.config")

__all__ = ["DEFAULT_GATEWAY_ID", "Settings", "default_policies_dir", "ensure_data_dir"]

DEFAULT_GATEWAY_ID = "veilgate.local"
GATEWAY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
"""A gateway id: the ``aud`` citizens sign for, the ``iss`` of its results and the name of its log's
checkpoints (``<gateway id>/log``): a host name or a URL, with no space or '+'."""


def ensure_data_dir(path: Path) -> None:
    """Create a data directory, private to its owner (0700): it holds the records, the citizens' log
    keys and the gateway's private keys, and SQLite makes its files by the umask."""
    if path.exists() and not path.is_dir():
        raise ConfigurationError(f"data directory {path} is a file, not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(f"cannot create data directory {path}: {e.strerror}") from e


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
    governance_keys: tuple[str, ...] = ()

    @classmethod
    def from_env(
        cls,
        *,
        data_dir: str | None = None,
        database_url: str | None = None,
        policies_dir: str | None = None,
        governance_key: str | None = None,
        gateway_id: str | None = None,
    ) -> Settings:
        policies = policies_dir or os.environ.get("VEILGATE_POLICIES_DIR")
        governance = governance_key or os.environ.get("VEILGATE_GOVERNANCE_KEY")
        gateway = gateway_id or os.environ.get("VEILGATE_GATEWAY_ID") or DEFAULT_GATEWAY_ID
        if GATEWAY_ID_PATTERN.fullmatch(gateway) is None:
            raise ConfigurationError(
                f"the gateway id (--gateway-id, VEILGATE_GATEWAY_ID) must match {GATEWAY_ID_PATTERN.pattern}"
            )
        return cls(
            data_dir=Path(data_dir or os.environ.get("VEILGATE_DATA_DIR") or "veilgate-data"),
            database_url=database_url or os.environ.get("VEILGATE_DATABASE_URL") or None,
            policies_dir=Path(policies) if policies else None,
            gateway_id=gateway,
            governance_keys=(governance,) if governance else (),
        )

    @property
    def policies_path(self) -> Path:
        return self.policies_dir or default_policies_dir()

    @property
    def governance_keys_path(self) -> Path:
        return self.data_dir / "governance.vkey"

    @property
    def institutions_dir(self) -> Path:
        return self.data_dir / "institutions"

    @property
    def departments_dir(self) -> Path:
        return self.data_dir / "departments"

    def trusted_governance_keys(self) -> tuple[str, ...]:
        if self.governance_keys:
            return self.governance_keys
        try:
            lines = self.governance_keys_path.read_text().split()
        except FileNotFoundError:
            lines = []
        except OSError as e:
            raise ConfigurationError(f"cannot read {self.governance_keys_path}: {e.strerror}") from e
        if not lines:
            raise ConfigurationError(
                "no trusted policy governance key: pass --governance-key VKEY or write it to "
                f"{self.governance_keys_path} (see `veilgate policy keygen`)"
            )
        return tuple(lines)

    def load_reviewed_policies(self, catalog: Catalog) -> dict[str, Policy]:
        """The policies, only if the signed manifest lists the catalog and every policy with the exact
        bytes loaded (``catalog`` as :meth:`load_catalog` read it)."""
        directory = self.policies_path
        manifest = verify_manifest(directory, self.trusted_governance_keys())
        require_catalog(manifest, sha256=catalog.sha256)
        policies = load_policies(directory, catalog)
        for policy in policies.values():
            path = policy.source.resolve().relative_to(directory.resolve()).as_posix()
            require_listed(manifest.policies, path=path, sha256=policy.sha256)
        return policies

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
        ensure_data_dir(self.data_dir)

    def load_catalog(self) -> Catalog:
        return load_catalog(self.policies_path / "catalog.yaml")

    def open_store(self, *, migrate: bool = True, existing: bool = False, records: bool = True) -> Store:
        """The store, its schema brought up to date unless ``migrate`` is False. ``existing``: refuse
        an SQLite file that is not there yet, for the commands that read or change a gateway's
        state (a mistyped ``--data-dir`` must not answer "no institutions" from a database it just
        made). ``records``: with the records key (made on first use), which the commands that
        never touch a record (the auditor's) do without."""
        if existing:
            database = make_url(self.store_url).database if self.store_url.startswith("sqlite") else None
            if database and not Path(database).is_file():
                raise ConfigurationError(
                    f"no gateway state at {database}: check --data-dir or --database-url "
                    "(`veilgate migrate` creates an empty one)"
                )
        if self.database_url is None:  # the embedded store lives in the data directory
            self.ensure_data_dir()
        if not records:
            return Store.open(self.store_url, migrate=migrate)
        return Store.open(
            self.store_url,
            migrate=migrate,
            records_key=self.load_records_key,
            reload_records_keys=self.records_keys_on_disk,
        )

    @property
    def records_key_path(self) -> Path:
        return self.data_dir / "keys" / "records.key"

    @property
    def next_records_key_path(self) -> Path:
        return self.data_dir / "keys" / "records.key.next"

    def load_records_key(self) -> RecordsKey:
        """The key that wraps every citizen's data key (created on first use; see
        :mod:`veilgate_server.crypto.records`). Gateways serving one database share this file."""
        self.ensure_data_dir()
        if self.next_records_key_path.exists():
            _log.warning(
                "%s is present: a records key rotation is staged, or was interrupted; "
                "`veilgate keys --rotate-records-key` completes it",
                self.next_records_key_path,
            )
        return RecordsKey.load_or_create(self.records_key_path)

    def records_keys_on_disk(self) -> list[RecordsKey]:
        """The records keys in the data directory now, read again: ``records.key`` and, while a
        rotation is under way (or was interrupted), ``records.key.next``. For a serving gateway to
        take up the key another process rotated to; a file that does not read is left out, and said."""
        keys = []
        for path in (self.records_key_path, self.next_records_key_path):
            if not path.exists():
                continue
            try:
                keys.append(RecordsKey.load(path))
            except ConfigurationError as e:
                _log.error("%s", e)
        return keys

    def stage_records_key(self) -> RecordsKey:
        """The next records key, made (``records.key.next``) but not used: for the operator to copy
        to every other host serving the database before the rotation, so that no gateway meets a
        data key under a key it does not hold. A key staged before is kept as it is."""
        if not self.records_key_path.exists():
            raise ConfigurationError(f"no records key at {self.records_key_path} to rotate")
        return RecordsKey.load_or_create(self.next_records_key_path)

    def rotate_records_key(self) -> tuple[RecordsKey, str, int]:
        """Wrap every data key under a new records key and make it ``keys/records.key``; returns it,
        the old key's id and how many data keys were rewrapped. The old key is destroyed.

        The new key is written (``records.key.next``, fsynced) before any data key depends on it, the
        data keys are rewrapped in one transaction, and only then does the new file replace the old
        one: interrupted anywhere, running it again finishes the rotation."""
        if not self.records_key_path.exists():
            raise ConfigurationError(f"no records key at {self.records_key_path} to rotate")
        old = RecordsKey.load_or_create(self.records_key_path)
        new = RecordsKey.load_or_create(self.next_records_key_path)  # made now, or left by an interrupted run
        store = self.open_store(existing=True, records=False)
        try:
            rewrapped = store.records.rewrap(old, new)
        finally:
            store.close()
        try:
            replace_durably(self.next_records_key_path, self.records_key_path)
        except OSError as e:
            raise ConfigurationError(
                f"the data keys are rewrapped, but {self.next_records_key_path} could not replace "
                f"{self.records_key_path}: {e.strerror}; move it there by hand"
            ) from e
        return new, old.key_id, rewrapped

    @property
    def log_key_path(self) -> Path:
        return self.data_dir / "keys" / "log-signing.key"

    @property
    def log_vkey_path(self) -> Path:
        return self.data_dir / "log.vkey"

    def load_log_signer(self) -> NoteSigner:
        """The audit log's checkpoint key (created on first use), named ``<gateway id>/log``: that name
        is the checkpoints' origin line. Its verifier key is written to ``log.vkey``."""
        self.ensure_data_dir()
        path = self.log_key_path
        try:
            if not path.exists():
                signer = NoteSigner.generate(f"{self.gateway_id}/log")
                with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
                    write_private_file(path, signer.private_key_string().encode() + b"\n")
            signer = NoteSigner.from_private_key_string(path.read_text().strip())
            warn_if_others_can_read(path, "log signing key")
        except OSError as e:
            raise ConfigurationError(f"cannot read or create the log key {path}: {e.strerror}") from e
        try:
            self.log_vkey_path.write_text(signer.verifier_key_string() + "\n")
        except OSError as e:
            raise ConfigurationError(f"cannot write the log verifier key {self.log_vkey_path}: {e.strerror}") from e
        return signer

    @property
    def retired_keys_path(self) -> Path:
        return self.data_dir / "keys" / "gateway-retired-keys.json"

    def load_signer(self) -> GatewaySigner:
        """The gateway key (created on first use), with the retired keys, and the published JWKS of
        them all next to it (the current key first)."""
        self.ensure_data_dir()
        signer = GatewaySigner.load_or_create(self.signing_key_path, load_retired_keys(self.retired_keys_path))
        self.publish_keys(signer)
        return signer

    def reload_signer(self) -> GatewaySigner:
        """The gateway key as the key file has it now, with the retired keys: for a serving gateway to
        take up a key rotated by another process. Never makes a key; ConfigurationError when the
        file is gone or does not read."""
        return GatewaySigner.load(self.signing_key_path, load_retired_keys(self.retired_keys_path))

    def rotate_signer(self, *, now: dt.datetime) -> tuple[GatewaySigner, str]:
        """A new current gateway key (see :func:`~veilgate_server.crypto.keys.rotate_gateway_key`),
        published with the retired ones; returns it and the old key's id."""
        signer, old_key_id = rotate_gateway_key(self.signing_key_path, self.retired_keys_path, now=now)
        self.publish_keys(signer)
        return signer, old_key_id

    def publish_keys(self, signer: GatewaySigner) -> None:
        keys = [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url_encode(public_key),
                "kid": key_id,
                "alg": "EdDSA",
                "use": "sig",
            }
            for key_id, public_key in signer.published
        ]
        self.public_keys_path.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
