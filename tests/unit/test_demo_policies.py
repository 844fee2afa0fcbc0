"""The demo's reviewed copy of the policies, in state kept between runs (``veilgate demo --data-dir``)."""

from __future__ import annotations

from pathlib import Path

from veilgate_server.config import default_policies_dir
from veilgate_server.core import manifest
from veilgate_server.demo import _reviewed_policies
from veilgate_server.governance import (
    MANIFEST_NAME,
    catalog_digest,
    load_governance_key,
    policy_files,
    sign_manifest,
    verify_manifest,
)


def _files(policies: Path) -> tuple[dict[str, str], str | None]:
    return policy_files(policies), catalog_digest(policies)


def test_a_kept_copy_is_reused_while_it_is_the_packaged_policies(tmp_path: Path) -> None:
    policies, vkey = _reviewed_policies(tmp_path)
    verify_manifest(policies, [vkey])
    assert _files(policies) == _files(default_policies_dir())
    signed = (policies / MANIFEST_NAME).read_bytes()
    assert _reviewed_policies(tmp_path) == (policies, vkey)
    assert (policies / MANIFEST_NAME).read_bytes() == signed


def test_a_copy_kept_by_another_version_is_replaced_and_signed_again(tmp_path: Path) -> None:
    policies, vkey = _reviewed_policies(tmp_path)
    signer = load_governance_key(tmp_path / "governance.key")
    # An older version's copy: a policy text that differs from the packaged one, signed as it is.
    policy = next(policies.glob("*/*/v*/policy.yaml"))
    policy.write_bytes(policy.read_bytes() + b"# an older text\n")
    sign_manifest(policies, signer)
    signed = verify_manifest(policies, [vkey])  # valid as it stands, yet not what this version ships
    policies, vkey = _reviewed_policies(tmp_path)
    verify_manifest(policies, [vkey])
    assert _files(policies) == _files(default_policies_dir())
    # An older format: a version 1 manifest, which this version refuses.
    text = manifest.render_manifest(signed).replace(manifest.MANIFEST_HEADER, "veilgate policy manifest v1", 1)
    (policies / MANIFEST_NAME).write_text(load_governance_key(tmp_path / "governance.key").sign(text))
    policies, vkey = _reviewed_policies(tmp_path)
    verify_manifest(policies, [vkey])
    # No manifest at all.
    (policies / MANIFEST_NAME).unlink()
    policies, vkey = _reviewed_policies(tmp_path)
    verify_manifest(policies, [vkey])
    assert _files(policies) == _files(default_policies_dir())
