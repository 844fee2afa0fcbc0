"""The signed policy manifest: strict text format, and the gateway's start-up check against the files."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.errors import ConfigurationError
from veilgate_server.config import Settings, default_policies_dir
from veilgate_server.core.catalog import parse_catalog
from veilgate_server.core.manifest import (
    Manifest,
    ManifestEntry,
    ManifestInvalid,
    check_files_match,
    parse_manifest,
    render_manifest,
    require_catalog,
    require_listed,
)
from veilgate_server.core.policy import PolicyInvalid
from veilgate_server.crypto.note import NoteSigner, NoteVerifier, open_note
from veilgate_server.governance import (
    MANIFEST_NAME,
    create_governance_key,
    load_governance_key,
    policy_files,
    sign_manifest,
    verify_manifest,
)

A = "a" * 64
B = "b" * 64
C = "c" * 64
LOAN = ManifestEntry(sha256=A, policy_id="credit.consumer_loan", path="credit/consumer_loan/v1/policy.yaml")
CLAIM = ManifestEntry(sha256=B, policy_id="insurance.inpatient_claim", path="insurance/inpatient_claim/v1/policy.yaml")
MANIFEST = Manifest(catalog_sha256=C, policies=(LOAN, CLAIM))
HEADER = f"veilgate policy manifest v2\n{C}  catalog  catalog.yaml\n"
TEXT = (
    HEADER + f"{A}  credit.consumer_loan  credit/consumer_loan/v1/policy.yaml\n"
    f"{B}  insurance.inpatient_claim  insurance/inpatient_claim/v1/policy.yaml\n"
)


# --- the text format -------------------------------------------------------------------------------


def test_render_is_sorted_and_canonical() -> None:
    assert render_manifest(Manifest(catalog_sha256=C, policies=(CLAIM, LOAN))) == TEXT
    assert parse_manifest(TEXT) == MANIFEST
    assert render_manifest(Manifest(catalog_sha256=C, policies=())) == HEADER
    assert parse_manifest(HEADER) == Manifest(catalog_sha256=C, policies=())


def test_a_version_1_manifest_is_refused_with_the_remedy() -> None:
    v1 = "veilgate policy manifest v1\n" + TEXT.split("\n", 2)[2]
    with pytest.raises(
        ManifestInvalid, match=r"line 1: a version 1 manifest does not cover catalog\.yaml; sign it again"
    ):
        parse_manifest(v1)


def test_manifest_invalid_is_a_policy_configuration_error() -> None:
    assert issubclass(ManifestInvalid, PolicyInvalid)
    assert issubclass(ManifestInvalid, ConfigurationError)
    assert ManifestInvalid.reason == "POLICY_INVALID"


def test_render_refuses_duplicates() -> None:
    with pytest.raises(ManifestInvalid, match="twice"):
        render_manifest(Manifest(catalog_sha256=C, policies=(LOAN, LOAN)))
    with pytest.raises(ManifestInvalid, match=r"catalog\.yaml: sha256"):
        Manifest(catalog_sha256=C.upper(), policies=())


@pytest.mark.parametrize(
    ("sha256", "policy_id", "path"),
    [
        ("A" * 64, "credit.consumer_loan", "credit/consumer_loan/v1/policy.yaml"),
        ("a" * 63, "credit.consumer_loan", "credit/consumer_loan/v1/policy.yaml"),
        (A, "credit.mortgage", "credit/consumer_loan/v1/policy.yaml"),
        (A, "credit.consumer_loan", "credit/consumer_loan/v0/policy.yaml"),
        (A, "credit.consumer_loan", "credit/consumer_loan/1/policy.yaml"),
        (A, "credit.consumer_loan", "credit/consumer_loan/v1/tests.yaml"),
        (A, "credit.consumer_loan", "/credit/consumer_loan/v1/policy.yaml"),
        (A, "credit..consumer_loan", "credit/../consumer_loan/v1/policy.yaml"),
        (A, "Credit.consumer_loan", "Credit/consumer_loan/v1/policy.yaml"),
    ],
)
def test_entries_are_checked(sha256: str, policy_id: str, path: str) -> None:
    with pytest.raises(ManifestInvalid):
        ManifestEntry(sha256=sha256, policy_id=policy_id, path=path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "newline"),
        (TEXT.removesuffix("\n"), "newline"),
        (TEXT.replace("v2\n", "v3\n", 1), "line 1"),
        ("\n" + TEXT, "line 1"),
        ("veilgate policy manifest v2\n", "line 2"),
        (TEXT.replace(f"{C}  catalog  catalog.yaml\n", ""), "line 2"),
        (TEXT.replace(f"{C}  catalog  ", f"{C}  catalogue  "), "line 2"),
        (TEXT.replace(f"{C}  catalog  catalog.yaml", f"{C}  catalog  policies/catalog.yaml"), "line 2"),
        (TEXT.replace(C, C.upper()), "line 2"),
        (TEXT.replace(C, C[:-1]), "line 2"),
        (TEXT.replace(C, C.upper()) + "junk\n", "line 2"),  # the first bad line is named
        (TEXT + "\n", "line 5"),
        (TEXT + "trailing junk\n", "line 5"),
        (TEXT.replace(f"{A}  ", f"{A} "), "line 3"),
        (TEXT.replace(f"{A}  ", f"{A}   "), "line 3"),
        (TEXT.replace(f"{A}  ", f"{A}\t"), "line 3"),
        (TEXT.replace(A, A.upper()), "line 3"),
        (TEXT.replace("policy.yaml\n", "policy.yaml \n", 1), "line 3"),
        (TEXT.replace("credit.consumer_loan", "credit.mortgage"), "line 3"),
        (TEXT.replace("\n", "\r\n"), "line 1"),
        (TEXT + TEXT.splitlines(keepends=True)[3], "line 5.*twice"),
        (HEADER + "".join(reversed(TEXT.splitlines(keepends=True)[2:])), "line 4.*sorted"),
    ],
)
def test_parse_is_strict(text: str, message: str) -> None:
    with pytest.raises(ManifestInvalid, match=message):
        parse_manifest(text)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="veilgatpocymnfsab0123456789/. \nv_", max_size=200),
        st.text(alphabet="veilgatpocymnfsab0123456789/. \nv_", max_size=200).map(lambda tail: HEADER + tail),
    )
)
def test_parse_raises_only_manifest_invalid(text: str) -> None:
    try:
        manifest = parse_manifest(text)
    except ManifestInvalid:
        return
    assert render_manifest(manifest) == text  # whatever parses is the one canonical spelling


def test_check_files_match_names_every_difference() -> None:
    check_files_match(MANIFEST, {"catalog.yaml": C, LOAN.path: A, CLAIM.path: B})
    with pytest.raises(ManifestInvalid) as raised:
        check_files_match(
            MANIFEST,
            {
                "catalog.yaml": A,
                LOAN.path: B,
                "credit/mortgage/v1/policy.yaml": A,
                "credit/consumer_loan/v2/policy.yaml": A,
            },
        )
    message = raised.value.message
    assert "catalog.yaml was changed" in message
    assert f"{LOAN.path} was changed" in message
    assert "credit/mortgage/v1/policy.yaml is not in the signed manifest" in message
    assert "credit/consumer_loan/v2/policy.yaml is not in the signed manifest" in message
    assert f"{CLAIM.path} is in the signed manifest but missing" in message


def test_check_files_match_requires_the_catalog() -> None:
    with pytest.raises(ManifestInvalid, match=r"catalog\.yaml is in the signed manifest but missing"):
        check_files_match(MANIFEST, {LOAN.path: A, CLAIM.path: B})


def test_require_catalog() -> None:
    require_catalog(MANIFEST, sha256=C)
    for other in (A, "", C.upper()):
        with pytest.raises(ManifestInvalid, match=r"catalog\.yaml was changed since the manifest was signed"):
            require_catalog(MANIFEST, sha256=other)


def test_require_listed() -> None:
    require_listed([LOAN, CLAIM], path=LOAN.path, sha256=A)
    with pytest.raises(ManifestInvalid, match="changed"):
        require_listed([LOAN, CLAIM], path=LOAN.path, sha256=B)
    with pytest.raises(ManifestInvalid, match="not in the signed manifest"):
        require_listed([LOAN], path=CLAIM.path, sha256=B)


# --- governance: signing and the start-up check ----------------------------------------------------

POLICIES = {
    "credit/consumer_loan/v1/policy.yaml": b"id: credit.consumer_loan\nversion: 1\n",
    "credit/consumer_loan/v2/policy.yaml": b"id: credit.consumer_loan\nversion: 2\n",
    "insurance/inpatient_claim/v1/policy.yaml": "id: insurance.inpatient_claim\ndescription: 住院\n".encode(),
}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    root = tmp_path / "policies"
    for relative, content in POLICIES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
        (root / relative).with_name("tests.yaml").write_text("cases: []\n")
    (root / "catalog.yaml").write_text("items: []\n")
    return root


@pytest.fixture
def governance(tmp_path: Path) -> NoteSigner:
    return create_governance_key(tmp_path / "keys" / "governance.key")


def test_policy_files_hashes_every_policy_yaml(policies: Path) -> None:
    assert policy_files(policies) == {path: hashlib.sha256(data).hexdigest() for path, data in POLICIES.items()}


def test_policy_files_refuses_a_file_outside_the_layout(policies: Path) -> None:
    (policies / "credit" / "consumer_loan" / "vnext").mkdir()
    (policies / "credit" / "consumer_loan" / "vnext" / "policy.yaml").write_text("id: x\n")
    with pytest.raises(ManifestInvalid, match="vnext"):
        policy_files(policies)


def test_sign_then_verify(policies: Path, governance: NoteSigner) -> None:
    path = sign_manifest(policies, governance)
    assert path == policies / MANIFEST_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in policies.iterdir() if p.name.startswith(".")] == []  # no temporary left over
    manifest = verify_manifest(policies, [governance.verifier_key_string()])
    assert [e.path for e in manifest.policies] == sorted(POLICIES)
    assert {e.policy_id for e in manifest.policies} == {"credit.consumer_loan", "insurance.inpatient_claim"}
    assert manifest.catalog_sha256 == hashlib.sha256((policies / "catalog.yaml").read_bytes()).hexdigest()
    # The file is an ordinary signed note any sumdb/note verifier opens.
    text = open_note(path.read_text(), verifiers=[governance.verifier()])
    assert text.startswith(f"veilgate policy manifest v2\n{manifest.catalog_sha256}  catalog  catalog.yaml\n")


def test_re_signing_replaces_the_manifest(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    (policies / "credit" / "consumer_loan" / "v1" / "policy.yaml").write_bytes(b"id: credit.consumer_loan\n")
    sign_manifest(policies, governance)
    verify_manifest(policies, [governance.verifier_key_string()])


def test_only_policy_yaml_is_signed(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    (policies / "credit" / "consumer_loan" / "v1" / "tests.yaml").write_text("cases: [changed]\n")
    (policies / "README.md").write_text("notes\n")
    verify_manifest(policies, [governance.verifier_key_string()])


def test_modified_policy_is_refused_naming_the_file(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    changed = policies / "insurance" / "inpatient_claim" / "v1" / "policy.yaml"
    changed.write_bytes(changed.read_bytes() + b"# one more line\n")
    with pytest.raises(ManifestInvalid, match=r"insurance/inpatient_claim/v1/policy\.yaml was changed"):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_modified_catalog_is_refused(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    (policies / "catalog.yaml").write_text("items: [changed]\n")
    with pytest.raises(ManifestInvalid, match=r"catalog\.yaml was changed since the manifest was signed"):
        verify_manifest(policies, [governance.verifier_key_string()])
    (policies / "catalog.yaml").unlink()
    with pytest.raises(ManifestInvalid, match=r"catalog\.yaml is in the signed manifest but missing"):
        verify_manifest(policies, [governance.verifier_key_string()])
    with pytest.raises(ManifestInvalid, match=r"catalog\.yaml is missing: the manifest signs the catalog too"):
        sign_manifest(policies, governance)


def test_added_policy_is_refused(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    added = policies / "credit" / "mortgage" / "v1" / "policy.yaml"
    added.parent.mkdir(parents=True)
    added.write_text("id: credit.mortgage\n")
    with pytest.raises(ManifestInvalid, match=r"credit/mortgage/v1/policy\.yaml is not in the signed manifest"):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_removed_policy_is_refused(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    (policies / "credit" / "consumer_loan" / "v2" / "policy.yaml").unlink()
    with pytest.raises(
        ManifestInvalid, match=r"credit/consumer_loan/v2/policy\.yaml is in the signed manifest but missing"
    ):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_missing_manifest_is_refused_with_the_remedy(policies: Path, governance: NoteSigner) -> None:
    with pytest.raises(ManifestInvalid, match=r"MANIFEST is missing.*veilgate policy sign"):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_manifest_signed_by_another_key_is_refused(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, NoteSigner.generate(governance.name))  # same name, other key
    with pytest.raises(ManifestInvalid, match=r"signature check failed.*no signature by a trusted key"):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_tampered_manifest_text_is_refused(policies: Path, governance: NoteSigner) -> None:
    manifest = sign_manifest(policies, governance)
    # Re-point an entry at the hash of a new file: the text no longer matches the signature.
    evil = b"id: credit.consumer_loan\nrules: []\n"
    target = policies / "credit" / "consumer_loan" / "v1" / "policy.yaml"
    old = hashlib.sha256(target.read_bytes()).hexdigest()
    target.write_bytes(evil)
    manifest.write_text(manifest.read_text().replace(old, hashlib.sha256(evil).hexdigest()))
    with pytest.raises(ManifestInvalid, match=r"signature check failed.*does not verify"):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_unsigned_manifest_text_is_refused(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    manifest = policies / MANIFEST_NAME
    manifest.write_text(manifest.read_text().split("\n\n")[0] + "\n")
    with pytest.raises(ManifestInvalid, match="signature check failed"):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_a_signed_but_malformed_manifest_is_refused(policies: Path, governance: NoteSigner) -> None:
    (policies / MANIFEST_NAME).write_text(governance.sign("veilgate policy manifest v3\n"))
    with pytest.raises(ManifestInvalid, match="line 1"):
        verify_manifest(policies, [governance.verifier_key_string()])
    (policies / MANIFEST_NAME).write_text(governance.sign("veilgate policy manifest v2\n"))
    with pytest.raises(ManifestInvalid, match=r"line 2.*veilgate policy sign"):
        verify_manifest(policies, [governance.verifier_key_string()])


def test_any_one_of_several_trusted_keys_is_enough(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    other = NoteSigner.generate("veilgate-governance-2024")
    verify_manifest(policies, [other.verifier_key_string(), governance.verifier_key_string()])


def test_there_is_no_way_to_skip_the_check(policies: Path, governance: NoteSigner) -> None:
    sign_manifest(policies, governance)
    with pytest.raises(ManifestInvalid, match="no governance verifier key"):
        verify_manifest(policies, [])
    with pytest.raises(ManifestInvalid, match="verifier key 1 is invalid"):
        verify_manifest(policies, [""])
    with pytest.raises(TypeError):
        verify_manifest(policies, governance.verifier_key_string())


# --- governance keys --------------------------------------------------------------------------------


def test_governance_key_file(tmp_path: Path) -> None:
    path = tmp_path / "governance.key"
    signer = create_governance_key(path, name="gov.example/veilgate")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == signer.private_key_string() + "\n"
    loaded = load_governance_key(path)
    assert loaded.verifier_key_string() == signer.verifier_key_string()
    assert NoteVerifier.from_verifier_key_string(signer.verifier_key_string()).name == "gov.example/veilgate"


def test_governance_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "governance.key"
    first = create_governance_key(path)
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        create_governance_key(path)
    assert load_governance_key(path).verifier_key_string() == first.verifier_key_string()


def test_governance_key_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="name"):
        create_governance_key(tmp_path / "k", name="has space")
    assert not (tmp_path / "k").exists()


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_load_refuses_a_readable_or_malformed_key(tmp_path: Path) -> None:
    path = tmp_path / "governance.key"
    create_governance_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_governance_key(path)
    path.chmod(0o600)
    path.write_text("veilgate-governance+00000000+AAAA\n")
    with pytest.raises(ConfigurationError, match="not a note signer key"):
        load_governance_key(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_governance_key(tmp_path / "absent.key")


# --- the gateway's start-up: the catalog it loaded is the signed one -------------------------------


def test_reviewed_policies_need_the_signed_catalog(tmp_path: Path, governance: NoteSigner) -> None:
    policies = tmp_path / "shipped"
    shutil.copytree(default_policies_dir(), policies, ignore=shutil.ignore_patterns("MANIFEST"))
    sign_manifest(policies, governance)
    settings = Settings(
        data_dir=tmp_path / "data", policies_dir=policies, governance_keys=(governance.verifier_key_string(),)
    )
    catalog = settings.load_catalog()
    assert catalog.sha256 == hashlib.sha256((policies / "catalog.yaml").read_bytes()).hexdigest()
    assert settings.load_reviewed_policies(catalog)
    # A catalog that is not the bytes signed -- parsed from text, or read before the file changed --
    # is refused even though the directory still matches the manifest.
    text = (policies / "catalog.yaml").read_text(encoding="utf-8")
    for other in (
        parse_catalog(text, source="catalog.yaml"),
        replace(catalog, sha256=hashlib.sha256(b"x").hexdigest()),
    ):
        with pytest.raises(ManifestInvalid, match=r"catalog\.yaml was changed since the manifest was signed"):
            settings.load_reviewed_policies(other)
