"""The policy manifest: the data catalog and the policy files, by SHA-256, that the governance key signed.

The manifest is the text of a C2SP signed note (``policies/MANIFEST``). Its text is exactly::

    veilgate policy manifest v2
    <sha256 of catalog.yaml, 64 lowercase hex>  catalog  catalog.yaml
    <sha256 of policy.yaml, 64 lowercase hex>  <policy id>  <path of policy.yaml>
    ...

the catalog on the second line, then one line per policy version, fields separated by two spaces,
policy lines sorted by path (byte order) with no duplicate, every line ending in a newline, nothing
else. The path is relative to the policies directory, ``<domain>/<name>/v<N>/policy.yaml``, and the
policy id is ``<domain>.<name>``, derived from the path (the loader checks that the file's ``id:``
agrees), so the id cannot be edited apart from the path.

The catalog is signed with the policies because it is part of what they mean: it types every input
a policy reads and says which items a citizen's delivery holds. Version 1 of the manifest listed the
policy files alone; it is refused with the remedy (sign again), so that no catalog is ever served
unreviewed.

There is one spelling of every manifest, so the signed bytes are determined by the catalog and the
set of policy files: :func:`parse_manifest` accepts exactly what :func:`render_manifest` produces and
refuses anything else with a message naming the line. :func:`check_files_match` is the gate: the
catalog and the policy files on disk must be exactly the ones listed, byte for byte, and
:func:`require_catalog` holds the catalog the gateway loaded to the signed one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Final

from veilgate_server.core.policy import PolicyInvalid

__all__ = [
    "CATALOG_PATH",
    "MANIFEST_HEADER",
    "Manifest",
    "ManifestEntry",
    "ManifestInvalid",
    "check_files_match",
    "parse_manifest",
    "policy_id_for_path",
    "render_manifest",
    "require_catalog",
    "require_listed",
]

MANIFEST_HEADER: Final = "veilgate policy manifest v2"
CATALOG_PATH: Final = "catalog.yaml"
_CATALOG_ID: Final = "catalog"
_V1_HEADER: Final = "veilgate policy manifest v1"

_PATH: Final = re.compile(r"([a-z][a-z0-9_]*)/([a-z][a-z0-9_]*)/v[1-9][0-9]*/policy\.yaml")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


class ManifestInvalid(PolicyInvalid):
    """The signed policy manifest is missing, badly signed, malformed, or disagrees with the policy files.

    A kind of :class:`PolicyInvalid` (reason ``POLICY_INVALID``): the policies on disk are not the
    reviewed and signed ones, so the gateway must not serve them.
    """


@dataclass(frozen=True)
class ManifestEntry:
    """One signed policy file: its SHA-256 (hex), its policy id, and its path under ``policies/``."""

    sha256: str
    policy_id: str
    path: str

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.sha256):
            raise ManifestInvalid(f"{self.path}: sha256 must be 64 lowercase hex digits")
        expected = policy_id_for_path(self.path)
        if self.policy_id != expected:
            raise ManifestInvalid(f"{self.path}: policy id must be {expected!r}, not {self.policy_id!r}")


@dataclass(frozen=True)
class Manifest:
    """What the governance key signed: the catalog's SHA-256 (hex) and the policy files."""

    catalog_sha256: str
    policies: tuple[ManifestEntry, ...]

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.catalog_sha256):
            raise ManifestInvalid(f"{CATALOG_PATH}: sha256 must be 64 lowercase hex digits")


def policy_id_for_path(path: str) -> str:
    """``credit/consumer_loan/v1/policy.yaml`` -> ``credit.consumer_loan``; refuses any other layout."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise ManifestInvalid(f"{path!r} is not a policy file path of the form <domain>/<name>/v<N>/policy.yaml")
    return f"{match.group(1)}.{match.group(2)}"


def render_manifest(manifest: Manifest) -> str:
    """The canonical manifest text (policies sorted by path; duplicates refused)."""
    ordered = sorted(manifest.policies, key=lambda entry: entry.path)
    for previous, current in pairwise(ordered):
        if previous.path == current.path:
            raise ManifestInvalid(f"{current.path}: listed twice")
    lines = [
        MANIFEST_HEADER,
        f"{manifest.catalog_sha256}  {_CATALOG_ID}  {CATALOG_PATH}",
        *(f"{e.sha256}  {e.policy_id}  {e.path}" for e in ordered),
    ]
    return "".join(line + "\n" for line in lines)


def parse_manifest(text: str) -> Manifest:
    """Parse the canonical manifest text strictly; :class:`ManifestInvalid` names the first bad line."""
    if not text.endswith("\n"):
        raise ManifestInvalid("manifest: the text must end with a newline")
    lines = text[:-1].split("\n")
    if lines[0] == _V1_HEADER:
        raise ManifestInvalid("manifest line 1: a version 1 manifest does not cover catalog.yaml; sign it again")
    if lines[0] != MANIFEST_HEADER:
        raise ManifestInvalid(f"manifest line 1: expected the header {MANIFEST_HEADER!r}")
    catalog = lines[1].split("  ") if len(lines) > 1 else []
    if len(catalog) != 3 or catalog[1:] != [_CATALOG_ID, CATALOG_PATH]:
        raise ManifestInvalid(f"manifest line 2: expected '<sha256>  {_CATALOG_ID}  {CATALOG_PATH}'")
    if not _SHA256.fullmatch(catalog[0]):
        raise ManifestInvalid(f"manifest line 2: {CATALOG_PATH}: sha256 must be 64 lowercase hex digits")
    entries: list[ManifestEntry] = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split("  ")
        if len(fields) != 3 or any(not field or field != field.strip() for field in fields):
            raise ManifestInvalid(f"manifest line {number}: expected '<sha256>  <policy id>  <path>'")
        sha256, policy_id, path = fields
        try:
            entry = ManifestEntry(sha256=sha256, policy_id=policy_id, path=path)
        except ManifestInvalid as e:
            raise ManifestInvalid(f"manifest line {number}: {e.message}") from e
        if entries and entry.path <= entries[-1].path:
            problem = "listed twice" if entry.path == entries[-1].path else "lines must be sorted by path"
            raise ManifestInvalid(f"manifest line {number}: {path}: {problem}")
        entries.append(entry)
    return Manifest(catalog_sha256=catalog[0], policies=tuple(entries))


def check_files_match(manifest: Manifest, found: Mapping[str, str]) -> None:
    """Require the files found (``{relative path: sha256 hex}``: the catalog and the policy files) to
    be exactly those signed.

    Raises :class:`ManifestInvalid` naming every changed, unsigned (extra) and missing file.
    """
    signed = {CATALOG_PATH: manifest.catalog_sha256, **{entry.path: entry.sha256 for entry in manifest.policies}}
    changed = sorted(path for path in signed.keys() & found.keys() if signed[path] != found[path])
    extra = sorted(found.keys() - signed.keys())
    missing = sorted(signed.keys() - found.keys())
    problems = [
        *(f"{path} was changed since the manifest was signed" for path in changed),
        *(f"{path} is not in the signed manifest" for path in extra),
        *(f"{path} is in the signed manifest but missing" for path in missing),
    ]
    if problems:
        raise ManifestInvalid("policy files do not match the signed manifest: " + "; ".join(problems))


def require_listed(entries: Sequence[ManifestEntry], *, path: str, sha256: str) -> None:
    """Require one loaded policy file (its relative path and the SHA-256 of the bytes the loader parsed)
    to be listed with that hash. Checking what was actually loaded closes the window between the start-up
    check of the directory and the loader's own read of the file."""
    for entry in entries:
        if entry.path == path:
            if entry.sha256 != sha256:
                raise ManifestInvalid(f"{path} was changed since the manifest was signed")
            return
    raise ManifestInvalid(f"{path} is not in the signed manifest")


def require_catalog(manifest: Manifest, *, sha256: str) -> None:
    """Require the catalog the gateway loaded (the SHA-256 of the bytes the loader parsed) to be the
    signed one, as :func:`require_listed` does for each policy file."""
    if sha256 != manifest.catalog_sha256:
        raise ManifestInvalid(f"{CATALOG_PATH} was changed since the manifest was signed")
