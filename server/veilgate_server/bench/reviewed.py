"""Policies for a benchmark's gateway: a copy of the packaged ones (or of the catalog and policies
``veilgate bench --policies-dir`` names), signed by a throwaway governance key.

A gateway serves only policies under a signed manifest (there is no unsigned mode), so every
benchmark that starts one starts it as an operator would, from a reviewed and signed copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

import yaml

from veilgate_server.config import default_policies_dir
from veilgate_server.governance import create_governance_key, sign_manifest

__all__ = ["PADDING_DEPARTMENT", "padded_catalog", "reviewed_policies"]

PADDING_DEPARTMENT: Final = "bench_padding"


def padded_catalog(shipped: Path, total: int) -> str:
    """The shipped catalog plus a ``bench_padding`` department holding copies of the shipped items
    (same type, fields, values, unit, sensitivity) up to ``total`` items in all."""
    doc = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    items: list[dict[str, Any]] = doc["items"]
    missing = total - len(items)
    if missing <= 0:
        return shipped.read_text(encoding="utf-8")
    doc["departments"].append(
        {
            "id": PADDING_DEPARTMENT,
            "name_en": "Benchmark padding (copies of catalog items)",
            "name_zh": "基准测试填充数据",
        }
    )
    padding = []
    for n in range(missing):
        original = items[n % len(items)]
        copy = dict(original)
        copy["id"] = f"{PADDING_DEPARTMENT}.{original['id'].split('.', 1)[1]}_p{n // len(items) + 1}"
        copy["department"] = PADDING_DEPARTMENT
        copy["name_en"] = f"{original['name_en']} (benchmark copy)"
        padding.append(copy)
    doc["items"] = [*items, *padding]
    return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=200))


def reviewed_policies(root: Path, *, pad_to: int | None, source: Path | None = None) -> tuple[Path, str]:
    """A copy of the catalog and policies in ``source`` (None: the packaged ones) signed by a
    throwaway governance key, with the catalog padded to ``pad_to`` items when asked."""
    source = source or default_policies_dir()
    policies = root / "policies"
    shutil.copytree(source, policies, ignore=shutil.ignore_patterns("MANIFEST"))
    if pad_to is not None:
        catalog = policies / "catalog.yaml"
        catalog.write_text(padded_catalog(source / "catalog.yaml", pad_to), encoding="utf-8")
    signer = create_governance_key(root / "governance.key")
    sign_manifest(policies, signer)
    return policies, signer.verifier_key_string()
