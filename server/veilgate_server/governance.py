"""Policy governance: the operator signs the catalog and the set of policy files; the gateway refuses any other set.

``policies/MANIFEST`` is a C2SP signed note (:mod:`veilgate_server.crypto.note`) whose text is the
policy manifest (:mod:`veilgate_server.core.manifest`): the SHA-256 of ``catalog.yaml`` and of every
``<domain>/<name>/v<N>/policy.yaml``. The governance key that signs it is an offline operator key in
Go ``sumdb/note`` format; the gateway is configured only with its verifier key string(s).

At start-up the gateway calls :func:`verify_manifest`. It raises :class:`ManifestInvalid` when the
manifest is missing, not signed by a configured governance key, malformed, or when the catalog or
any policy file was changed, added or removed since signing. There is deliberately no parameter or
mode that skips the check: an unsigned policy set is a configuration error, not a warning.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from veilgate.errors import ConfigurationError
from veilgate_server.core.manifest import (
    CATALOG_PATH,
    Manifest,
    ManifestEntry,
    ManifestInvalid,
    check_files_match,
    parse_manifest,
    policy_id_for_path,
    render_manifest,
)
from veilgate_server.core.policy import policy_sources
from veilgate_server.crypto.keys import write_private_file
from veilgate_server.crypto.note import NoteInvalid, NoteSigner, NoteVerifier, open_note

__all__ = [
    "DEFAULT_GOVERNANCE_KEY_NAME",
    "MANIFEST_NAME",
    "catalog_digest",
    "create_governance_key",
    "load_governance_key",
    "policy_files",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST_NAME: Final = "MANIFEST"
DEFAULT_GOVERNANCE_KEY_NAME: Final = "veilgate-governance"

_SIGN_HINT: Final = "run `veilgate policy sign` with the governance key after reviewing the policies"


def policy_files(policies_dir: Path) -> dict[str, str]:
    """``{relative posix path: sha256 hex of the file's bytes}`` for every policy file under ``policies_dir``."""
    found: dict[str, str] = {}
    # The loader's own list, so that every file it can load is covered; policy_id_for_path then
    # refuses any match outside the strict layout.
    for path in policy_sources(policies_dir):
        relative = path.relative_to(policies_dir).as_posix()
        policy_id_for_path(relative)  # refuses a file the loader would see but the manifest cannot name
        try:
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise ManifestInvalid(f"{path}: cannot read: {e.strerror}") from e
    return found


def catalog_digest(policies_dir: Path) -> str | None:
    """The sha256 hex of ``policies_dir/catalog.yaml``'s bytes; None when there is no such file."""
    path = policies_dir / CATALOG_PATH
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ManifestInvalid(f"{path}: cannot read: {e.strerror}") from e


def sign_manifest(policies_dir: Path, signer: NoteSigner) -> Path:
    """Hash the catalog and every policy file, sign the manifest and write ``policies_dir/MANIFEST``
    atomically."""
    catalog = catalog_digest(policies_dir)
    if catalog is None:
        raise ManifestInvalid(f"{policies_dir / CATALOG_PATH} is missing: the manifest signs the catalog too")
    entries = tuple(
        ManifestEntry(sha256=digest, policy_id=policy_id_for_path(path), path=path)
        for path, digest in policy_files(policies_dir).items()
    )
    note = signer.sign(render_manifest(Manifest(catalog_sha256=catalog, policies=entries)))
    target = policies_dir / MANIFEST_NAME
    try:
        _write_atomically(target, note.encode("utf-8"))
    except OSError as e:
        raise ConfigurationError(f"cannot write {target}: {e.strerror}") from e
    return target


def verify_manifest(policies_dir: Path, verifier_keys: Sequence[str]) -> Manifest:
    """The gateway's start-up check; returns the signed manifest or raises :class:`ManifestInvalid`.

    ``verifier_keys`` are the governance verifier key strings the gateway trusts (Go ``sumdb/note``
    format). The caller should also check the catalog and each policy it then loads with
    :func:`~veilgate_server.core.manifest.require_catalog` and
    :func:`~veilgate_server.core.manifest.require_listed`, using the hash of the bytes the loader read.
    """
    if isinstance(verifier_keys, str):
        raise TypeError("verifier_keys is a sequence of verifier key strings, not one string")
    if not verifier_keys:
        raise ManifestInvalid("no governance verifier key is configured: the policy manifest cannot be checked")
    verifiers: list[NoteVerifier] = []
    for number, vkey in enumerate(verifier_keys, start=1):
        try:
            verifiers.append(NoteVerifier.from_verifier_key_string(vkey.strip()))
        except NoteInvalid as e:
            raise ManifestInvalid(f"governance verifier key {number} is invalid: {e.message}") from e

    path = policies_dir / MANIFEST_NAME
    try:
        signed = path.read_bytes()
    except FileNotFoundError as e:
        raise ManifestInvalid(f"{path} is missing; the gateway serves only signed policies: {_SIGN_HINT}") from e
    except OSError as e:
        raise ManifestInvalid(f"{path}: cannot read: {e.strerror}") from e
    try:
        text = open_note(signed, verifiers=verifiers)
    except NoteInvalid as e:
        trusted = ", ".join(f"{v.name}+{v.key_hash:08x}" for v in verifiers)
        raise ManifestInvalid(
            f"{path}: signature check failed ({e.message}; trusted keys: {trusted}); {_SIGN_HINT}"
        ) from e
    try:
        manifest = parse_manifest(text)
    except ManifestInvalid as e:
        raise ManifestInvalid(f"{path}: {e.message}; {_SIGN_HINT}") from e
    try:
        catalog = catalog_digest(policies_dir)
        found = policy_files(policies_dir) | ({CATALOG_PATH: catalog} if catalog is not None else {})
        check_files_match(manifest, found)
    except ManifestInvalid as e:
        raise ManifestInvalid(f"{e.message}; {_SIGN_HINT}") from e
    return manifest


def create_governance_key(path: Path, name: str = DEFAULT_GOVERNANCE_KEY_NAME) -> NoteSigner:
    """Generate a governance key and write its private key string to ``path`` (mode 0600, never overwritten)."""
    try:
        signer = NoteSigner.generate(name)
    except NoteInvalid as e:
        raise ConfigurationError(f"governance key name {name!r} is invalid: {e.message}") from e
    try:
        write_private_file(path, (signer.private_key_string() + "\n").encode("ascii"))
    except FileExistsError as e:
        raise ConfigurationError(f"{path} already exists; refusing to overwrite a governance key") from e
    except OSError as e:
        raise ConfigurationError(f"cannot create governance key {path}: {e.strerror}") from e
    return signer


def load_governance_key(path: Path) -> NoteSigner:
    """Read a governance private key file; refuses files that group or others can read or write."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as e:
        raise ConfigurationError(f"cannot read governance key {path}: {e.strerror}") from e
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise ConfigurationError(f"governance key {path} is accessible by group or others: chmod 600 it")
    try:
        text = data.decode("ascii")
        return NoteSigner.from_private_key_string(text.removesuffix("\n"))
    except (UnicodeDecodeError, NoteInvalid) as e:
        raise ConfigurationError(
            f"governance key {path} is not a note signer key (PRIVATE+KEY+<name>+<hash>+<key>)"
        ) from e


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over ``target``, fsync the directory."""
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)  # the manifest is public; mkstemp made it 0600
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
