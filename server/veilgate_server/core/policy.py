"""Eligibility policies: reviewed CEL rules over catalog-typed inputs, evaluated to a closed-form result.

A policy lives in ``policies/<domain>/<name>/v<N>/policy.yaml``. It is a signed, reviewed artifact:
consents pin the SHA-256 of the file's exact bytes, so :func:`load_policy` hashes the bytes it parses.

Rules of the engine (each one is a privacy or safety property, not a convenience):

- **Only declared inputs reach CEL.** ``inputs`` lists the catalog items a policy reads; no other
  record is put in the activation, so the data a policy uses is explicit and evaluation stays cheap.
- **Types come from the catalog and are checked at load time.** Every expression is compiled with
  Google's C++ CEL (``cel-expr-python``) against declared variables; an undeclared name, a misspelled
  record field or ``int >= string`` fails :func:`load_policy` with the file and line of the expression.
- **Callers never pass thresholds.** ``parameters`` are enumerated (``values``); a policy that needs
  the caller to state a fact (a claimed admission date, a hospital code) declares a ``date`` or a
  bounded ``string`` parameter with a written ``justification``. Anything else is refused with
  :class:`PolicyParameterInvalid`.
- **Every rule is evaluated**, so the reasons are complete: ``NOT_ELIGIBLE`` if a ``decline`` rule
  fails, else ``REFER`` if a ``refer`` rule fails, else ``ELIGIBLE``; reasons are the failing rules'
  codes ordered by ``rank`` (then file order), at most :data:`MAX_REASONS`.
- **Never a silent pass.** A CEL error, an ``ERROR``-typed value (CEL returns those instead of raising,
  e.g. for division by zero), a non-bool result, an exhausted iteration budget or a stored value that
  does not match its catalog type all give ``REFER`` with ``EVALUATION_ERROR`` and no bands. A missing
  input gives ``REFER`` with ``DATA_UNAVAILABLE_<DEPARTMENT>`` and no rule is evaluated.

CEL variables (the typing scheme):

=================== =======================================================================================
input item          the item id as a qualified name, e.g. ``social_insurance.insured_status``
``int``             ``int``
``decimal``         ``double`` (write literals as ``3000.0``: CEL does not compare int with double)
``string``/``enum`` ``string``
``date``            ``int``: days since 1970-01-01, so dates compare and subtract (``as_of - 365``)
``bool``            ``bool``
``records``         ``list`` of rows, checked at load time as a protobuf message built from the catalog's
                    fields (types as above), so ``r.monthh`` fails there; evaluated as maps of those
                    fields, so every field is always present (``has(r.paid)`` is true, even when false)
``params.<name>``   ``string`` for ``enum``/``string`` parameters, ``int`` days for ``date`` parameters
``as_of``           ``int`` days: the evaluation date, injected by the caller (the core has no clock)
=================== =======================================================================================
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import yaml
from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from veilgate.consent import PURPOSES
from veilgate.errors import ConfigurationError, PolicyInvalid, PolicyParameterInvalid
from veilgate_server.core.catalog import _DATE as _CATALOG_DATE
from veilgate_server.core.catalog import (
    _DECIMAL,
    _INT_MAX,
    _INT_MIN,
    _MAX_DECIMAL_LENGTH,
    MAX_RECORD_ROWS,
    MAX_STRING_LENGTH,
    Catalog,
    CatalogItem,
    CatalogValueError,
    ItemId,
    ScalarType,
    _Checker,
    _Map,
    _StrictLoader,
)

__all__ = [
    "DATA_UNAVAILABLE_PREFIX",
    "EPOCH",
    "EVALUATION_ERROR",
    "MAX_REASONS",
    "PURPOSES",
    "Band",
    "Decision",
    "Parameter",
    "Policy",
    "PolicyInvalid",
    "PolicyOutcome",
    "PolicyParameterInvalid",
    "Rule",
    "check_parameters",
    "date_to_days",
    "evaluate",
    "evaluate_stored",
    "load_policies",
    "load_policy",
]

Decision = Literal["ELIGIBLE", "NOT_ELIGIBLE", "REFER"]
Effect = Literal["decline", "refer"]
ParameterType = Literal["enum", "date", "string"]

MAX_REASONS: Final = 4
EVALUATION_ERROR: Final = "EVALUATION_ERROR"
DATA_UNAVAILABLE_PREFIX: Final = "DATA_UNAVAILABLE_"
EPOCH: Final = date(1970, 1, 1)
_EPOCH_ORDINAL: Final = EPOCH.toordinal()


_REASON: Final = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
_BAND_LABEL: Final = re.compile(r"[a-z0-9][a-z0-9_]*")
_VERSION_DIR: Final = re.compile(r"v([1-9][0-9]*)")
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAX_STRING_PARAMETER: Final = 64
_ROW_PACKAGE: Final = "veilgate.policy.rows"

_CEL_SCALAR: Final[Mapping[str, cel.Type]] = MappingProxyType(
    {
        "int": cel.Type.INT,
        "decimal": cel.Type.DOUBLE,
        "string": cel.Type.STRING,
        "enum": cel.Type.STRING,
        "date": cel.Type.INT,
        "bool": cel.Type.BOOL,
    }
)
_FDP = descriptor_pb2.FieldDescriptorProto
_PROTO_SCALAR: Final[Mapping[str, int]] = MappingProxyType(
    {
        "int": _FDP.TYPE_INT64,
        "decimal": _FDP.TYPE_DOUBLE,
        "string": _FDP.TYPE_STRING,
        "enum": _FDP.TYPE_STRING,
        "date": _FDP.TYPE_INT64,
        "bool": _FDP.TYPE_BOOL,
    }
)


def date_to_days(day: date) -> int:
    """The CEL encoding of a date: days since 1970-01-01."""
    return day.toordinal() - _EPOCH_ORDINAL


# --- parsed policy -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parameter:
    """A caller parameter: ``enum`` (``values``), or a ``date`` / bounded ``string`` the caller states."""

    name: str
    type: ParameterType
    values: tuple[str, ...]
    max_length: int | None
    pattern: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    reason: str
    effect: Effect
    rank: int
    passes: str
    line: int


@dataclass(frozen=True, slots=True)
class Band:
    label: str
    when: str
    line: int


@dataclass(frozen=True, slots=True)
class _Compiled:
    """The CEL environment and programs of one policy; built at load time, immutable afterwards."""

    env: cel.Env
    """Where the policy runs: each input of rows a ``list`` of ``map(string, dyn)`` (see :func:`_compile`)."""
    program: cel.Expression
    """Every rule's result in order, then each band group's label: see :func:`_whole_policy`."""
    checked_env: cel.Env
    """Where the policy was checked: each row a message of the item's declared fields and types."""
    band_names: tuple[str, ...]
    readers: Mapping[ItemId, _Reader]
    """Per input: checks a JSON value against the catalog and makes it the CEL value."""
    stored_readers: Mapping[ItemId, _StoredReader]
    """Per input: the same from the store's canonical JSON text (see :func:`evaluate_stored`)."""
    row_classes: Mapping[str, type[Message]]
    """Per input of rows: the message each row is checked as (in ``checked_env``)."""


@dataclass(frozen=True)
class Policy:
    id: str
    version: int
    sha256: str
    purpose: str
    institution_kinds: tuple[str, ...]
    inputs: tuple[CatalogItem, ...]
    parameters: Mapping[str, Parameter]
    rules: tuple[Rule, ...]
    bands: Mapping[str, tuple[Band, ...]]
    description: str
    reason_texts: Mapping[str, str]
    source: Path
    _compiled: _Compiled = field(repr=False, compare=False)

    @property
    def reason_codes(self) -> tuple[str, ...]:
        """The distinct reason codes of the rules, by rank."""
        seen: dict[str, None] = {}
        for rule in sorted(self.rules, key=lambda r: r.rank):
            seen.setdefault(rule.reason, None)
        return tuple(seen)


@dataclass(frozen=True)
class PolicyOutcome:
    decision: Decision
    bands: Mapping[str, str]
    reasons: tuple[str, ...]
    data_as_of: Mapping[str, str]


# --- YAML --------------------------------------------------------------------------------------------


def load_strict_yaml(data: bytes, source: str) -> object:
    """Parse YAML rejecting duplicate and merge keys; mappings and lists remember their lines.

    Raises :class:`PolicyInvalid` naming ``source`` and the line.
    """
    loader: _StrictLoader | None = None
    try:
        text = data.decode("utf-8")
        loader = _StrictLoader(text)
        return loader.get_single_data()
    except UnicodeDecodeError as e:
        raise PolicyInvalid(f"{source}: not UTF-8 text") from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise PolicyInvalid(f"{where}: invalid YAML: {e.problem or e.context or 'malformed'}") from e
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as e:
        raise PolicyInvalid(f"{source}: invalid YAML: {type(e).__name__}") from e
    finally:
        if loader is not None:
            loader.dispose()


# --- loading -----------------------------------------------------------------------------------------

_TOP_REQUIRED: Final = ("id", "version", "description", "purpose", "institution_kinds", "inputs", "rules")
_TOP_OPTIONAL: Final = ("parameters", "bands", "reason_texts")


def load_policy(directory: Path, catalog: Catalog) -> Policy:
    """Load, check and compile ``<domain>/<name>/v<N>/policy.yaml``; raise :class:`PolicyInvalid`."""
    path = directory / "policy.yaml"
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PolicyInvalid(f"{source}: cannot read: {e.strerror}") from e
    check = _Checker(source, PolicyInvalid)
    root = check.mapping(load_strict_yaml(raw, source), 1, "document")
    check.keys(root, "document", required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)

    policy_id = check.text(root, "id", "document", re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*"))
    expected_id = f"{directory.parent.parent.name}.{directory.parent.name}"
    if policy_id != expected_id:
        check.fail(root.key_lines["id"], "document", f"'id' must be {expected_id!r} to match its directory")
    version = check.integer(root, "version", "document")
    version_dir = _VERSION_DIR.fullmatch(directory.name)
    if version_dir is None or int(version_dir.group(1)) != version:
        check.fail(
            root.key_lines["version"], "document", f"'version' {version} does not match directory {directory.name!r}"
        )
    description = check.text(root, "description", "document")
    purpose = check.text(root, "purpose", "document")
    if purpose not in PURPOSES:
        check.fail(root.key_lines["purpose"], "document", f"'purpose' must be one of {', '.join(PURPOSES)}")
    kinds = _institution_kinds(check, root, purpose)
    inputs = _inputs(check, root, catalog)
    parameters = _parameters(check, root)
    rules = _rules(check, root, raw)
    bands = _bands(check, root, raw)
    reason_texts = _reason_texts(check, root, {rule.reason for rule in rules})
    compiled = _compile(check, inputs, parameters, rules, bands)
    return Policy(
        id=policy_id,
        version=version,
        sha256=hashlib.sha256(raw).hexdigest(),
        purpose=purpose,
        institution_kinds=kinds,
        inputs=inputs,
        parameters=MappingProxyType(parameters),
        rules=rules,
        bands=MappingProxyType(bands),
        description=description,
        reason_texts=MappingProxyType(reason_texts),
        source=path,
        _compiled=compiled,
    )


def policy_sources(policies_dir: Path) -> list[Path]:
    """Every ``<domain>/<name>/v*/policy.yaml`` under ``policies_dir``, sorted: what the loader loads,
    the manifest signs and ``veilgate policy test`` runs. A directory on the way that cannot be read
    is an error: ``Path.glob`` would skip it, and its policies would be left out of all three."""

    def subdirectories(directory: Path) -> list[Path]:
        try:
            return [entry for entry in directory.iterdir() if entry.is_dir()]
        except OSError as e:
            raise ConfigurationError(f"cannot read the policies directory {directory}: {e.strerror}") from e

    return sorted(
        version / "policy.yaml"
        for domain in subdirectories(policies_dir)
        for name in subdirectories(domain)
        for version in subdirectories(name)
        if version.name.startswith("v") and (version / "policy.yaml").exists()
    )


def load_policies(policies_dir: Path, catalog: Catalog) -> dict[str, Policy]:
    """Load every ``<domain>/<name>/v<N>/policy.yaml``; the result maps each id to its latest version."""
    latest: dict[str, Policy] = {}
    for path in policy_sources(policies_dir):
        policy = load_policy(path.parent, catalog)
        current = latest.get(policy.id)
        if current is None or policy.version > current.version:
            latest[policy.id] = policy
    return latest


def _institution_kinds(check: _Checker, root: _Map, purpose: str) -> tuple[str, ...]:
    line = root.key_lines["institution_kinds"]
    kinds = check.sequence(root["institution_kinds"], line, "'institution_kinds'")
    if list(kinds) != [PURPOSES[purpose]]:
        check.fail(line, "'institution_kinds'", f"purpose {purpose!r} is for [{PURPOSES[purpose]}] only")
    return (PURPOSES[purpose],)


def _inputs(check: _Checker, root: _Map, catalog: Catalog) -> tuple[CatalogItem, ...]:
    line = root.key_lines["inputs"]
    raw = check.sequence(root["inputs"], line, "'inputs'")
    if not raw:
        check.fail(line, "'inputs'", "must list at least one catalog item")
    items: list[CatalogItem] = []
    for index, item_id in enumerate(raw):
        item_line = raw.item_lines[index]
        if not isinstance(item_id, str) or item_id not in catalog.items:
            check.fail(item_line, f"inputs[{index}]", f"unknown catalog item {item_id!r}")
        if any(existing.id == item_id for existing in items):
            check.fail(item_line, f"inputs[{index}]", f"duplicate input {item_id!r}")
        items.append(catalog.item(item_id))
    return tuple(items)


def _parameters(check: _Checker, root: _Map) -> dict[str, Parameter]:
    if "parameters" not in root:
        return {}
    raw = check.mapping(root["parameters"], root.key_lines["parameters"], "'parameters'")
    parameters: dict[str, Parameter] = {}
    for name, spec_raw in raw.items():
        line = raw.key_lines[name]
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            check.fail(line, "'parameters'", f"parameter name {name!r} must be lower snake case")
        where = f"parameter {name!r}"
        spec = check.mapping(spec_raw, line, where)
        kind = spec.get("type", "enum")
        if kind == "enum":
            check.keys(spec, where, required=("values",), optional=("type", "description"))
            values_raw = check.sequence(spec["values"], spec.key_lines["values"], where)
            values = tuple(str(v) for v in values_raw)
            if not values or any(not isinstance(v, str) or _BAND_LABEL.fullmatch(v) is None for v in values_raw):
                check.fail(spec.key_lines["values"], where, "'values' must list lower snake case strings")
            if len(set(values)) != len(values):
                check.fail(spec.key_lines["values"], where, "'values' has duplicates")
            parameters[name] = Parameter(name, "enum", values, None, None)
        elif kind == "date":
            check.keys(spec, where, required=("type", "justification"), optional=("description",))
            check.text(spec, "justification", where)
            parameters[name] = Parameter(name, "date", (), None, None)
        elif kind == "string":
            check.keys(
                spec, where, required=("type", "max_length", "pattern", "justification"), optional=("description",)
            )
            check.text(spec, "justification", where)
            max_length = check.integer(spec, "max_length", where)
            if not 1 <= max_length <= _MAX_STRING_PARAMETER:
                check.fail(spec.key_lines["max_length"], where, f"'max_length' must be 1 to {_MAX_STRING_PARAMETER}")
            pattern = check.text(spec, "pattern", where)
            try:
                re.compile(pattern)
            except re.error:
                check.fail(spec.key_lines["pattern"], where, "'pattern' is not a valid regular expression")
            parameters[name] = Parameter(name, "string", (), max_length, pattern)
        else:
            check.fail(spec.key_lines.get("type", line), where, "'type' must be enum (default), date or string")
    return parameters


def _expression_line(raw: bytes, key_line: int) -> int:
    """The line where a ``key: expression`` value starts (the next line for ``|`` and ``>`` blocks)."""
    lines = raw.split(b"\n")
    if key_line - 1 < len(lines):
        after = lines[key_line - 1].split(b":", 1)[-1].strip()
        if after[:1] in (b"|", b">"):
            return key_line + 1
    return key_line


def _rules(check: _Checker, root: _Map, raw_bytes: bytes) -> tuple[Rule, ...]:
    line = root.key_lines["rules"]
    raw = check.sequence(root["rules"], line, "'rules'")
    if not raw:
        check.fail(line, "'rules'", "must list at least one rule")
    rules: list[Rule] = []
    for index, entry_raw in enumerate(raw):
        entry = check.mapping(entry_raw, raw.item_lines[index], f"rules[{index}]")
        where = f"rules[{index}]"
        check.keys(entry, where, required=("id", "description", "reason", "effect", "rank", "passes"))
        rule_id = check.text(entry, "id", where, _NAME)
        where = f"rule {rule_id!r}"
        if any(r.id == rule_id for r in rules):
            check.fail(entry.key_lines["id"], where, "duplicate rule id")
        reason = check.text(entry, "reason", where, _REASON)
        if reason == EVALUATION_ERROR or reason.startswith(DATA_UNAVAILABLE_PREFIX):
            check.fail(entry.key_lines["reason"], where, f"reason {reason!r} is reserved for the engine")
        effect = entry["effect"]
        if effect not in ("decline", "refer"):
            check.fail(entry.key_lines["effect"], where, "'effect' must be decline or refer")
        rules.append(
            Rule(
                id=rule_id,
                description=check.text(entry, "description", where),
                reason=reason,
                effect="decline" if effect == "decline" else "refer",
                rank=check.integer(entry, "rank", where),
                passes=check.text(entry, "passes", where),
                line=_expression_line(raw_bytes, entry.key_lines["passes"]),
            )
        )
    return tuple(rules)


def _bands(check: _Checker, root: _Map, raw_bytes: bytes) -> dict[str, tuple[Band, ...]]:
    if "bands" not in root:
        return {}
    raw = check.mapping(root["bands"], root.key_lines["bands"], "'bands'")
    bands: dict[str, tuple[Band, ...]] = {}
    for name, entries_raw in raw.items():
        line = raw.key_lines[name]
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            check.fail(line, "'bands'", f"band name {name!r} must be lower snake case")
        where = f"band {name!r}"
        entries = check.sequence(entries_raw, line, where)
        if not entries:
            check.fail(line, where, "must list at least one entry")
        parsed: list[Band] = []
        for index, entry_raw in enumerate(entries):
            entry = check.mapping(entry_raw, entries.item_lines[index], f"{where}[{index}]")
            check.keys(entry, f"{where}[{index}]", required=("band", "when"))
            label = check.text(entry, "band", where, _BAND_LABEL)
            if any(b.label == label for b in parsed):
                check.fail(entry.key_lines["band"], where, f"duplicate band label {label!r}")
            when = check.text(entry, "when", where)
            parsed.append(Band(label, when, _expression_line(raw_bytes, entry.key_lines["when"])))
        if parsed[-1].when.strip() != "true":
            check.fail(parsed[-1].line, where, 'the last entry must be the unconditional default (when: "true")')
        bands[name] = tuple(parsed)
    return bands


def _reason_texts(check: _Checker, root: _Map, reasons: set[str]) -> dict[str, str]:
    if "reason_texts" not in root:
        return {}
    raw = check.mapping(root["reason_texts"], root.key_lines["reason_texts"], "'reason_texts'")
    texts: dict[str, str] = {}
    for code in raw:
        if code not in reasons and code != EVALUATION_ERROR and not str(code).startswith(DATA_UNAVAILABLE_PREFIX):
            check.fail(raw.key_lines[code], "'reason_texts'", f"{code!r} is not a reason of any rule")
        texts[str(code)] = check.text(raw, str(code), "'reason_texts'")
    return texts


# --- compiling ---------------------------------------------------------------------------------------


def _row_message_name(item: CatalogItem) -> str:
    return "".join(part.capitalize() for part in re.split(r"[._]", item.id)) + "Row"


def _compile(
    check: _Checker,
    inputs: tuple[CatalogItem, ...],
    parameters: Mapping[str, Parameter],
    rules: tuple[Rule, ...],
    bands: Mapping[str, tuple[Band, ...]],
) -> _Compiled:
    """Declare the typed variables and compile every expression, requiring a bool result.

    The checks are made with each row typed as a message of its item's fields, so a misspelled field
    or a type mismatch fails here, with its line. The policy then runs in a second environment where
    the same rows are maps: CEL takes a Python dict in about half the time it takes a message (53
    against 119 µs for a citizen's 63 rows), and a dict costs a third of a message to build. What
    the checked program can do, the map program does alike: every field of a row is present, with
    the declared type; ``test_one_program_decides_as_one_program_per_expression`` holds the two to
    the same outcomes."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="veilgate_policy_rows.proto", package=_ROW_PACKAGE, syntax="proto3"
    )
    for item in inputs:
        if item.type == "records":
            message = file_proto.message_type.add(name=_row_message_name(item))
            for number, spec in enumerate(item.fields, start=1):
                message.field.add(
                    name=spec.name, number=number, type=_PROTO_SCALAR[spec.type], label=_FDP.LABEL_OPTIONAL
                )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    variables: dict[str, cel.Type] = {"as_of": cel.Type.INT}
    row_classes: dict[str, type[Message]] = {}
    for item in inputs:
        if item.type == "records":
            full_name = f"{_ROW_PACKAGE}.{_row_message_name(item)}"
            row_classes[item.id] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
            variables[item.id] = cel.Type.List(cel.Type(full_name))
        else:
            variables[item.id] = _CEL_SCALAR[item.type]
    for parameter in parameters.values():
        variables[f"params.{parameter.name}"] = cel.Type.INT if parameter.type == "date" else cel.Type.STRING
    checked_env = cel.NewEnv(pool, variables=variables)

    def compile_bool(expression: str, line: int, where: str) -> cel.Expression:
        try:
            program = checked_env.compile(expression)
        except RuntimeError as e:
            check.fail(line, where, f"CEL does not compile: {_cel_message(e)}")
        if program.return_type() != cel.Type.BOOL:
            check.fail(line, where, f"expression must be bool, not {program.return_type()!r}")
        return program

    for rule in rules:  # each expression on its own first: a mistake is reported where it is
        compile_bool(rule.passes, rule.line, f"rule {rule.id!r}: 'passes'")
    for name, entries in bands.items():
        for band in entries:
            compile_bool(band.when, band.line, f"band {name!r} {band.label!r}: 'when'")
    # Each part was checked above; the whole runs where the rows are maps (see the docstring).
    as_maps = {name: _ROWS_AS_MAPS if name in row_classes else kind for name, kind in variables.items()}
    env = cel.NewEnv(variables=as_maps)
    try:
        program = env.compile(_whole_policy(rules, bands))
    except RuntimeError as e:  # each part compiled above; a failure here is ours, not the author's
        raise PolicyInvalid(f"the policy's expressions do not compile together: {_cel_message(e)}") from None
    readers = {item.id: _reader(item) for item in inputs}
    stored = {item.id: _stored_reader(item, readers[item.id]) for item in inputs}
    return _Compiled(
        env,
        program,
        checked_env,
        tuple(bands),
        MappingProxyType(readers),
        MappingProxyType(stored),
        MappingProxyType(row_classes),
    )


_ROWS_AS_MAPS: Final = cel.Type.List(cel.Type.Map(cel.Type.STRING, cel.Type.DYN))


def _whole_policy(rules: tuple[Rule, ...], bands: Mapping[str, tuple[Band, ...]]) -> str:
    """One CEL list holding every rule's ``passes`` in order, then, per band group, its labels as a
    chain of conditionals: the first ``when`` that holds, in the order listed, names the band (the
    last entry is the unconditional default). One evaluation instead of one per expression (the
    consumer loan's eleven: 97 against about 50 µs). Every rule is still evaluated, a band's
    conditions still stop at the first that holds, and an error in any evaluated expression makes
    the whole list an error, as it made the whole evaluation fail before. Each expression sits on
    lines of its own, so a trailing ``//`` comment ends before the code that follows."""
    parts = [f"(\n{rule.passes}\n)" for rule in rules]
    for entries in bands.values():
        chain = "".join(f"(\n{band.when}\n) ? '{band.label}' : " for band in entries[:-1])
        parts.append(f"{chain}'{entries[-1].label}'")  # labels are [a-z0-9_]: no quoting needed
    return "[\n" + ",\n".join(parts) + "\n]"


def _cel_message(error: RuntimeError) -> str:
    text = str(error).strip()
    return text.removeprefix("INVALID_ARGUMENT: ").removesuffix("[INVALID_ARGUMENT]").strip()


# --- evaluation --------------------------------------------------------------------------------------


class _EvaluationFailed(Exception):
    """Internal: an expression errored, returned ERROR or a non-bool; becomes EVALUATION_ERROR."""


def evaluate(
    policy: Policy, *, records: Mapping[str, tuple[date, object]], params: Mapping[str, str], as_of: date
) -> PolicyOutcome:
    """Evaluate ``policy`` over the citizen's records of its declared inputs; pure and deterministic.

    ``records`` maps item id to (department data date, JSON wire value); items other than the
    policy's inputs are ignored and never reach CEL. Raises :class:`PolicyParameterInvalid` for bad
    caller parameters; every data or evaluation problem is a ``REFER`` outcome instead.
    """
    return _evaluate(policy, records, policy._compiled.readers, params, as_of)


def evaluate_stored(
    policy: Policy, *, records: Mapping[str, tuple[date, str]], params: Mapping[str, str], as_of: date
) -> PolicyOutcome:
    """:func:`evaluate` over each value's JSON text as the record store keeps it (canonical JSON), with
    the same outcome as decoding the text and calling :func:`evaluate`: text that does not decode is
    a stored value the catalog refuses (``EVALUATION_ERROR``). Record lists are read straight from
    the text where they can be (see :func:`_stored_reader`)."""
    return _evaluate(policy, records, policy._compiled.stored_readers, params, as_of)


def _evaluate(
    policy: Policy,
    records: Mapping[str, tuple[date, Any]],
    readers: Mapping[ItemId, Callable[[Any], object]],
    params: Mapping[str, str],
    as_of: date,
) -> PolicyOutcome:
    variables: dict[str, Any] = _parameter_values(policy, params)
    variables["as_of"] = date_to_days(as_of)

    data_as_of: dict[str, date] = {}
    missing: list[str] = []
    for item in policy.inputs:
        found = records.get(item.id)
        if found is None:
            reason = DATA_UNAVAILABLE_PREFIX + item.department.upper()
            if reason not in missing:
                missing.append(reason)
            continue
        day = found[0]
        previous = data_as_of.get(item.department)
        data_as_of[item.department] = day if previous is None else min(previous, day)
    dates = MappingProxyType({dept: day.isoformat() for dept, day in data_as_of.items()})
    if missing:
        return PolicyOutcome("REFER", MappingProxyType({}), tuple(missing[:MAX_REASONS]), dates)

    compiled = policy._compiled
    try:
        for item in policy.inputs:
            variables[item.id] = readers[item.id](records[item.id][1])
        passed, labels = _run(compiled.program, compiled.env.Activation(variables), len(policy.rules))
        bands = dict(zip(compiled.band_names, labels, strict=True))
    except (_EvaluationFailed, CatalogValueError, ValueError, TypeError, RuntimeError):
        return PolicyOutcome("REFER", MappingProxyType({}), (EVALUATION_ERROR,), dates)

    failing = sorted(
        (rule for rule, ok in zip(policy.rules, passed, strict=True) if not ok),
        key=lambda rule: rule.rank,
    )
    decision: Decision = "ELIGIBLE"
    if any(rule.effect == "decline" for rule in failing):
        decision = "NOT_ELIGIBLE"
    elif failing:
        decision = "REFER"
    reasons: list[str] = []
    for rule in failing:
        if rule.reason not in reasons:
            reasons.append(rule.reason)
    return PolicyOutcome(decision, MappingProxyType(bands), tuple(reasons[:MAX_REASONS]), dates)


def _run(program: cel.Expression, activation: cel.Activation, rules: int) -> tuple[list[bool], list[str]]:
    """The rules' results and the bands' labels, from the program of :func:`_whole_policy`."""
    result = program.eval(activation)
    if result.type() == cel.Type.ERROR:  # ERROR-typed values do not raise
        raise _EvaluationFailed
    values = result.plain_value()
    if type(values) is not list:
        raise _EvaluationFailed
    passed, labels = values[:rules], values[rules:]
    if any(type(value) is not bool for value in passed) or any(type(label) is not str for label in labels):
        raise _EvaluationFailed
    return passed, labels


def check_parameters(policy: Policy, params: Mapping[str, str]) -> None:
    """Refuse, with :class:`PolicyParameterInvalid`, the parameters an evaluation of ``policy`` would refuse."""
    _parameter_values(policy, params)


def _parameter_values(policy: Policy, params: Mapping[str, str]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(policy.parameters))
    if unknown:
        raise PolicyParameterInvalid(f"policy {policy.id!r} has no parameter {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, parameter in policy.parameters.items():
        if name not in params:
            raise PolicyParameterInvalid(f"policy {policy.id!r} needs parameter {name!r}")
        value = params[name]
        if not isinstance(value, str):
            raise PolicyParameterInvalid(f"parameter {name!r} must be a string")
        if parameter.type == "enum":
            if value not in parameter.values:
                raise PolicyParameterInvalid(f"parameter {name!r} must be one of {', '.join(parameter.values)}")
            values[f"params.{name}"] = value
        elif parameter.type == "date":
            values[f"params.{name}"] = date_to_days(_parse_date(value, f"parameter {name!r}"))
        else:
            assert parameter.max_length is not None
            assert parameter.pattern is not None
            if len(value) > parameter.max_length or re.fullmatch(parameter.pattern, value) is None:
                raise PolicyParameterInvalid(f"parameter {name!r} is not of the declared form")
            values[f"params.{name}"] = value
    return values


def _parse_date(text: str, where: str) -> date:
    if _DATE.fullmatch(text) is None:
        raise PolicyParameterInvalid(f"{where} must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise PolicyParameterInvalid(f"{where} is not a calendar date") from None


_Reader = Callable[[object], object]
"""JSON wire value -> CEL value; raises CatalogValueError for a value the catalog refuses."""


def _refused(item_id: str) -> CatalogValueError:
    return CatalogValueError(f"data item {item_id!r}: not of its declared type")  # never the value


def _scalar_reader(item_id: str, kind: ScalarType, values: tuple[str, ...]) -> _Reader:
    """Check a JSON scalar exactly as :func:`~veilgate_server.core.catalog.validate_value` does and
    convert it to its CEL value (dates to days, decimals to doubles), in one call per value: checking
    and converting in two passes over a citizen's rows cost about 250 µs an evaluation, twice CEL's
    own time. ``test_policy`` holds every reader to ``validate_value`` on arbitrary values."""
    if kind == "int":

        def read_int(value: object) -> object:
            if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
                raise _refused(item_id)
            return value

        return read_int
    if kind == "bool":

        def read_bool(value: object) -> object:
            if type(value) is not bool:
                raise _refused(item_id)
            return value

        return read_bool
    if kind == "decimal":

        def read_decimal(value: object) -> object:
            if not isinstance(value, str) or len(value) > _MAX_DECIMAL_LENGTH or _DECIMAL.fullmatch(value) is None:
                raise _refused(item_id)
            return float(value)

        return read_decimal
    if kind == "date":

        def read_date(value: object) -> object:
            if not isinstance(value, str) or _CATALOG_DATE.fullmatch(value) is None:
                raise _refused(item_id)
            try:
                return date.fromisoformat(value).toordinal() - _EPOCH_ORDINAL
            except ValueError:
                raise _refused(item_id) from None

        return read_date
    if kind == "enum":
        allowed = frozenset(values)

        def read_enum(value: object) -> object:
            if not isinstance(value, str) or value not in allowed:
                raise _refused(item_id)
            return value

        return read_enum
    if kind == "string":

        def read_string(value: object) -> object:
            if not isinstance(value, str) or len(value) > MAX_STRING_LENGTH:
                raise _refused(item_id)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate is not text
                raise _refused(item_id) from None
            return value

        return read_string
    raise ValueError(f"unsupported type {kind!r}")


def _reader(item: CatalogItem) -> _Reader:
    """The reader of one input: a scalar, or a list of rows, each a dict of its fields' CEL values."""
    if item.type != "records":
        return _scalar_reader(item.id, item.type, item.values)
    names = frozenset(spec.name for spec in item.fields)
    fields = tuple((spec.name, _scalar_reader(item.id, spec.type, spec.values)) for spec in item.fields)

    def read_rows(value: object) -> object:
        if type(value) is not list or len(value) > MAX_RECORD_ROWS:
            raise _refused(item.id)
        rows = []
        for row in value:
            if type(row) is not dict or row.keys() != names:
                raise _refused(item.id)
            rows.append({name: read(row[name]) for name, read in fields})
        return rows

    return read_rows


# --- inputs from the store's canonical JSON text -------------------------------------------------------

_StoredReader = Callable[[str], object]
"""Stored canonical JSON text -> CEL value; raises as the item's :data:`_Reader` does."""

# A field of a row in canonical JSON (sorted keys, no whitespace), as one capturing group per value.
# Each pattern accepts exactly the text of a value the item's scalar reader accepts (a decimal's at
# most 32 characters by the lookahead); ints are range-checked, dates calendar-checked, after it.
_CANONICAL_FIELD: Final[Mapping[str, str]] = MappingProxyType(
    {
        "decimal": f'"((?=[-.0-9]{{1,{_MAX_DECIMAL_LENGTH}}}")(?:{_DECIMAL.pattern}))"',
        "date": f'"({_CATALOG_DATE.pattern})"',
        "bool": "(true|false)",
        "int": "(-?(?:0|[1-9][0-9]*))",
    }
)


def _days_column(texts: list[str]) -> list[int]:
    return [day.toordinal() - _EPOCH_ORDINAL for day in map(date.fromisoformat, texts)]


def _ints_column(texts: list[str]) -> list[int]:
    values = list(map(int, texts))
    if values and (min(values) < _INT_MIN or max(values) > _INT_MAX):
        raise ValueError("out of range")
    return values


def _json_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # as canonical JSON writes a string


def _stored_reader(item: CatalogItem, read: _Reader) -> _StoredReader:
    """The reader of an input's stored text: ``read(json.loads(text))``, except for a list of rows
    that :func:`_rows_from_text` takes whole, on the largest piece of an evaluation."""
    fast = _rows_from_text(item)

    def decoded(text: str) -> object:
        return read(json.loads(text))

    def read_stored(text: str) -> object:
        rows = fast(text) if fast is not None else None
        return rows if rows is not None else decoded(text)

    return read_stored if fast is not None else decoded


def _rows_from_text(item: CatalogItem) -> Callable[[str], list[dict[str, Any]] | None] | None:
    """For a list of rows whose fields are numbers, dates, booleans or plain enums: a function that
    reads the rows straight from the list's canonical JSON text, or returns None for text it does not
    take whole. None for any other input.

    Such a list in canonical JSON is ``[{"a":..,"b":..},...]``, keys in sorted order and no spaces,
    and one regular expression splits it into the rows' values, converted column by column: about
    half the time of decoding the JSON and then checking and converting each value in Python (76
    against 134 µs for 33 rows of five fields). Anything it does not take whole (other spacing,
    another key order, a value the catalog refuses, more rows than the catalog allows) returns None
    and goes the general way, which decides it. The tests hold both ways to the same result on
    arbitrary text, and hold this one to take every canonical list the catalog accepts."""
    if item.type != "records":
        return None
    specs = sorted(item.fields, key=lambda spec: spec.name)  # canonical JSON's member order
    patterns: list[str] = []
    columns: list[Callable[[list[str]], list[Any]]] = []
    for spec in specs:
        if spec.type == "enum" and spec.values and all(_json_text(v) == f'"{v}"' for v in spec.values):
            patterns.append('"(' + "|".join(re.escape(v) for v in sorted(spec.values)) + ')"')
            columns.append(list)
        elif spec.type in _CANONICAL_FIELD:
            patterns.append(_CANONICAL_FIELD[spec.type])
            columns.append(_COLUMN_OF[spec.type])
        else:
            return None  # strings, and enums that JSON escapes: the general way only
    members = (re.escape(_json_text(spec.name)) + ":" + p for spec, p in zip(specs, patterns, strict=True))
    row = re.compile(r"\{" + ",".join(members) + r"\}")
    names = tuple(spec.name for spec in specs)
    stride = len(specs) + 1  # split() gives the text between rows, then each row's values

    def rows_from_text(text: str) -> list[dict[str, Any]] | None:
        if text == "[]":
            return []
        pieces = row.split(text)
        rows = (len(pieces) - 1) // stride
        between = pieces[::stride]  # "[", "," * (rows - 1), "]" when the rows tile the text
        if not (0 < rows <= MAX_RECORD_ROWS and between[0] == "[" and between[-1] == "]"):
            return None
        if between.count(",") != rows - 1:
            return None
        try:
            values = [column(pieces[1 + j :: stride]) for j, column in enumerate(columns)]
        except ValueError:  # a date not in the calendar, an int out of range: for the general way
            return None
        return [dict(zip(names, fields, strict=True)) for fields in zip(*values, strict=True)]

    return rows_from_text


_COLUMN_OF: Final[Mapping[str, Callable[[list[str]], list[Any]]]] = MappingProxyType(
    {
        "decimal": lambda texts: list(map(float, texts)),
        "date": _days_column,
        "bool": lambda texts: [text == "true" for text in texts],
        "int": _ints_column,
    }
)
