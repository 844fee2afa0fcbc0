"""``veilgate``: the operator's command line (and a citizen's, for wallets).

Every command takes ``--data-dir`` (``VEILGATE_DATA_DIR``) and ``--database-url``
(``VEILGATE_DATABASE_URL``). Errors print one line ``veilgate: error: ...`` and exit non-zero;
a traceback is a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veilgate.errors import (
    ConfigurationError,
    DepartmentAlreadyRegistered,
    DepartmentNotRegistered,
    InstitutionAlreadyRegistered,
    InstitutionUnknown,
    StorageError,
    VeilgateError,
)
from veilgate_server.core.identity import DEFAULT_TRUST_DOMAIN, CallerKind, check_caller_id, check_trust_domain

if TYPE_CHECKING:
    from veilgate import CitizenClient
    from veilgate_server.config import Settings
    from veilgate_server.gateway import Gateway
    from veilgate_server.serving import ServeOptions
    from veilgate_server.storage import Store
    from veilgate_server.storage.repositories import IssuedCertificate


__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
MAX_WORKERS = 256  # RPC threads per process; past a handful they only contend for the GIL
MAX_DAILY_BUDGET = 1_000_000  # a citizen's evaluations a day; the budget is what bounds what repeated queries reveal
MAX_CITIZENS = 10_000_000  # a synthetic population; the benchmark's largest is 100k
EARLIEST_AS_OF = date(1900, 1, 1)
LATEST_AS_OF = date(2999, 12, 31)


def _settings(args: argparse.Namespace) -> Settings:
    # Server modules are imported inside the commands so that `veilgate` can say clearly when the
    # server extra is missing instead of failing at import.
    from veilgate_server.config import Settings

    return Settings.from_env(
        data_dir=args.data_dir,
        database_url=args.database_url,
        policies_dir=args.policies_dir,
        governance_key=getattr(args, "governance_key", None),
        gateway_id=getattr(args, "gateway_id", None),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _passphrase(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.passphrase_file:
        try:
            return Path(args.passphrase_file).read_text().rstrip("\n")
        except OSError as e:
            raise ConfigurationError(f"cannot read passphrase file {args.passphrase_file}: {e.strerror}") from e
    env = os.environ.get("VEILGATE_WALLET_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        raise ConfigurationError("no passphrase: use --passphrase-file or VEILGATE_WALLET_PASSPHRASE")
    first = getpass.getpass("wallet passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigurationError("the passphrases differ")
    return first


# --- commands -------------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _settings(args).open_store(migrate=True)
    store.close()
    print("database schema is up to date")
    return 0


def _check_population(citizens: int, as_of: date | None = None) -> None:
    """Refuse a population that cannot be made, before a data directory or a database is."""
    if not 1 <= citizens <= MAX_CITIZENS:
        raise ConfigurationError(f"--citizens must be from 1 to {MAX_CITIZENS:,}")
    if as_of is not None and not EARLIEST_AS_OF <= as_of <= LATEST_AS_OF:
        # Birth dates and histories are counted back from it by up to 71 years.
        raise ConfigurationError(f"--as-of must be from {EARLIEST_AS_OF} to {LATEST_AS_OF}")


def cmd_seed(args: argparse.Namespace) -> int:
    from veilgate_server.admin import seed_population

    _check_population(args.citizens, args.as_of)
    settings = _settings(args)
    catalog = settings.load_catalog()
    store = settings.open_store()
    try:
        summary = seed_population(store, catalog, citizens=args.citizens, seed=args.seed, as_of=args.as_of)
    finally:
        store.close()
    print(f"seeded {summary.citizens} citizens, {summary.records} records (seed {args.seed})")
    print("first citizen ids: " + ", ".join(summary.sample_ids))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from veilgate_server.admin import erase_records
    from veilgate_server.storage.repositories import check_citizen_id

    check_citizen_id(args.citizen_id)
    if not args.yes:
        raise ConfigurationError(
            f"erasing destroys every record of {args.citizen_id} for good; repeat with --yes to erase"
        )
    store = _settings(args).open_store(existing=True)
    try:
        erased, index = erase_records(store, args.citizen_id, unlink_trail=args.unlink_trail)
    finally:
        store.close()
    if erased:
        print(f"erased {erased} records of {args.citizen_id}: their data key is destroyed")
    else:
        print(f"{args.citizen_id} has no records: nothing erased")
    if args.unlink_trail:
        print(f"logged as entry {index}; their trail is unlinked: nobody can tell any more which entries were theirs")
    else:
        print(f"logged as entry {index} (the citizen finds it in their trail)")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from veilgate_server.admin import CitizenIdentity, enroll

    if args.identity:
        try:
            doc = json.loads(Path(args.identity).read_text())
        except OSError as e:
            raise ConfigurationError(f"cannot read identity file {args.identity}: {e.strerror}") from e
        except ValueError as e:  # JSON (and UTF-8) errors say where
            raise ConfigurationError(f"cannot read identity file {args.identity}: {e}") from e
        if not isinstance(doc, dict):
            raise ConfigurationError(f"identity file {args.identity} does not hold a JSON object")
        if args.citizen_id and doc.get("citizen_id") != args.citizen_id:
            raise ConfigurationError("--citizen-id differs from the identity file's citizen_id")
    elif args.citizen_id and args.signing_key and args.encryption_key:
        doc = {
            "citizen_id": args.citizen_id,
            "signing_key": args.signing_key,
            "encryption_key": args.encryption_key,
        }
    else:
        raise ConfigurationError("give --identity FILE, or --citizen-id with --signing-key and --encryption-key")
    identity = CitizenIdentity.from_json(doc)
    store = _settings(args).open_store(existing=args.rotate)
    try:
        keys = enroll(store, identity, rotate=args.rotate, at=_now())
    finally:
        store.close()
    verb = "rotated keys of" if args.rotate else "enrolled"
    print(f"{verb} citizen {keys.citizen_id} (key version {keys.key_version})")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.stage_records_key:
        staged = settings.stage_records_key()
        print(f"staged records key {staged.key_id} in {settings.next_records_key_path} (nothing uses it yet)")
        print("copy it to keys/records.key.next on every other host serving this database, then run")
        print("`veilgate keys --rotate-records-key` here; the other hosts' gateways take it up as they serve;")
        print("afterwards run `veilgate keys --rotate-records-key` on each other host too (it rewraps nothing")
        print("there: it makes the staged key their records.key and destroys the old one)")
        return 0
    if args.rotate_records_key:
        records_key, old_id, rewrapped = settings.rotate_records_key()
        print(f"new records key {records_key.key_id}: {rewrapped} citizens' data keys rewrapped; {old_id} is destroyed")
        print("gateways serving from this data directory take it up at their next read, without a restart;")
        print("on another host, gateways take it up once keys/records.key.next there holds it (staged with")
        print("--stage-records-key and copied before the rotation; until then they cannot open records, their")
        print("calls fail as INTERNAL and their log says why); run --rotate-records-key there too to complete it")
        return 0
    if args.rotate:
        signer, old_key_id = settings.rotate_signer(now=_now())
        print(f"new gateway signing key {signer.key_id}; {old_key_id} is retired and its private key destroyed")
        print("the retired keys stay published, so that what they signed still verifies;")
        print("gateways serving from this data directory sign with the new key within a second, without a restart;")
        print("give clients the new JWKS (GetGatewayInfo lists it first)")
    else:
        signer = settings.load_signer()
    print(f"gateway signing key id: {signer.key_id}")
    for key in signer.retired:
        print(f"retired key id:         {key.key_id} (since {key.retired_at})")
    print(f"public keys (JWKS):     {settings.public_keys_path}")
    if settings.records_key_path.exists():  # made with the store: shown, never made here
        print(f"records key id:         {settings.load_records_key().key_id} ({settings.records_key_path})")
    return 0


def cmd_wallet_create(args: argparse.Namespace) -> int:
    from veilgate import CitizenWallet

    wallet_path = _output_file(args.out, "--out")
    if wallet_path.exists():
        raise ConfigurationError(f"--out {args.out}: exists; refusing to overwrite a wallet")
    identity_path = _output_file(
        args.identity_out if args.identity_out is not None else f"{args.out}.identity.json", "--identity-out"
    )
    wallet = CitizenWallet.generate(args.citizen_id)
    identity = json.dumps(wallet.public_identity(), indent=2) + "\n"
    wallet.save(wallet_path, _passphrase(args, confirm=True))
    try:
        identity_path.write_text(identity)
    except OSError as e:
        wallet_path.unlink(missing_ok=True)  # a wallet whose identity was never handed out is of no use
        raise ConfigurationError(f"cannot write {identity_path}: {e.strerror}") from e
    print(f"wallet written to {args.out}")
    print(f"public identity for enrollment: {identity_path}  (veilgate enroll --identity {identity_path})")
    return 0


def _citizen_client(args: argparse.Namespace, *, own: bool = True) -> CitizenClient:
    """A client for the wallet commands (``--target``, ``--ca``, ``--gateway-keys``), checked before
    the wallet's passphrase is asked for; with ``own`` false, for public calls only (a throwaway
    wallet, which signs nothing)."""
    from veilgate import CitizenClient, CitizenWallet, gateway_keys_from_jwks

    _check_address(args.target, "--target", listen=False)
    try:
        root = Path(args.ca).read_bytes() if args.ca else None
        pinned = gateway_keys_from_jwks(Path(args.gateway_keys).read_bytes()) if args.gateway_keys else None
    except OSError as e:
        raise ConfigurationError(f"cannot read {e.filename}: {e.strerror}") from e
    if own:
        wallet = CitizenWallet.load(args.wallet, _passphrase(args, confirm=False))
    else:
        wallet = CitizenWallet.generate("anonymous")
    return CitizenClient(args.target, wallet, root_certificates=root, gateway_keys=pinned)


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_wallet_fetch(args: argparse.Namespace) -> int:
    out = _output_file(args.out, "--out") if args.out is not None else None  # before a token is spent
    with _citizen_client(args) as client:
        delivery = client.get_my_data(items=args.items, departments=args.departments)
    print(f"delivery {delivery.delivery_id}, watermark {delivery.watermark}, {len(delivery.items)} items")
    for department, items in delivery.by_department().items():
        print(f"  {department}: {len(items)} items")
    if out is not None:
        try:
            out.write_text(delivery.signed_jws + "\n")
        except OSError as e:
            raise ConfigurationError(f"cannot write the delivery to {args.out}: {e.strerror}") from e
        print(f"signed delivery (JWS) written to {args.out}")
    return 0


def cmd_wallet_policies(args: argparse.Namespace) -> int:
    with _citizen_client(args, own=False) as client:
        policies = client.list_policies()
    for policy in policies:
        print(
            f"{policy.id} v{policy.version}  purpose {policy.purpose}, asked by: {', '.join(policy.institution_kinds)}"
        )
        print(f"  {policy.description.strip()}")
        print(f"  reads: {', '.join(policy.inputs)}")
        bands = "; ".join(f"{name}: {', '.join(labels)}" for name, labels in policy.bands.items())
        reasons = len(policy.reason_codes)
        print(f"  answers: a decision{f', bands ({bands})' if bands else ''}, up to 4 of {reasons} reasons")
        print(f"  sha256 {policy.sha256}")
    return 0


def cmd_wallet_grant(args: argparse.Namespace) -> int:
    from veilgate.consent import MAX_CONSENT_SECONDS

    out = _output_file(args.out, "--out") if args.out is not None else None
    if not 1 <= args.valid_days <= MAX_CONSENT_SECONDS // 86400:
        raise ConfigurationError(f"--valid-days must be from 1 to {MAX_CONSENT_SECONDS // 86400}")
    with _citizen_client(args) as client:
        published = {policy.id: policy for policy in client.list_policies()}
        unknown = [policy_id for policy_id in args.policy if policy_id not in published]
        if unknown:
            raise ConfigurationError(
                f"this gateway has no policy {', '.join(unknown)} (see `veilgate wallet policies`)"
            )
        chosen = [published[policy_id] for policy_id in dict.fromkeys(args.policy)]
        token, consent = client.grant_consent(
            institution_id=args.institution,
            purpose=args.purpose,
            policies=[policy.pin for policy in chosen],
            max_uses=args.max_uses,
            valid_for=args.valid_days * 86400,
        )
    for policy in chosen:
        print(
            f"consented to {policy.id} v{policy.version} (sha256 {policy.sha256[:12]}...), which reads:",
            file=sys.stderr,
        )
        print(f"  {', '.join(policy.inputs)}", file=sys.stderr)
    print(
        f"consent {consent.consent_id} registered: {consent.institution_id} may ask up to {consent.max_uses} "
        f"time(s) until {_when(consent.expires_at)}; "
        f"revoke with `veilgate wallet revoke --consent={consent.consent_id}`",
        file=sys.stderr,
    )
    if out is None:
        print(token)  # alone on stdout: for the institution (in real life, a QR code)
        return 0
    try:
        out.write_text(token + "\n")
    except OSError as e:
        raise ConfigurationError(f"cannot write the consent token to {args.out}: {e.strerror}") from e
    print(f"consent token written to {args.out}; hand it to {consent.institution_id}", file=sys.stderr)
    return 0


def cmd_wallet_consents(args: argparse.Namespace) -> int:
    with _citizen_client(args) as client:
        consents = client.list_consents()
        now = int(datetime.now(UTC).timestamp())
    for c in consents:
        if c.revoked_at is not None:
            state = f"revoked {_when(c.revoked_at)}"
        elif c.expires_at <= now:
            state = "expired"
        elif c.uses >= c.max_uses:
            state = "used up"
        else:
            state = f"active until {_when(c.expires_at)}"
        policies = ", ".join(p.id for p in c.policies)
        print(f"{c.consent_id}  {c.institution_id}  {c.purpose}  {policies}  {c.uses}/{c.max_uses} uses  {state}")
    if not consents:
        print("no consents")
    return 0


def cmd_wallet_revoke(args: argparse.Namespace) -> int:
    with _citizen_client(args) as client:
        consent = client.revoke_consent(args.consent)
    assert consent.revoked_at is not None
    print(f"consent {consent.consent_id} of {consent.institution_id} revoked as of {_when(consent.revoked_at)}")
    return 0


def cmd_wallet_evaluations(args: argparse.Namespace) -> int:
    with _citizen_client(args) as client:
        evaluations = client.list_evaluations()
    for e in evaluations:
        print(f"{_when(e.evaluated_at)}  {e.institution_id}  {e.policy_id}  {e.decision}  (consent {e.consent_id})")
    if not evaluations:
        print("no evaluations under your consents")
    return 0


def cmd_wallet_history(args: argparse.Namespace) -> int:
    with _citizen_client(args) as client:
        history = client.access_history()
    print(f"{len(history)} entries about you in the audit log, each proven included under a signed checkpoint:")
    for index, entry in history:
        caller = entry.caller_id or entry.caller_kind
        outcome = entry.decision or (entry.reason or entry.code)
        print(f"  #{index}  {entry.time}  {caller}  {entry.method.rpartition('/')[2]}  {outcome}")
    return 0


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _issue_client(
    args: argparse.Namespace,
    settings: Settings,
    *,
    kind: CallerKind,
    out: Path,
    register: Callable[[Store, str, datetime], None],
    check: Callable[[Store], None],
) -> tuple[str, bytes | None]:
    """Issue a client certificate for ``args.id`` (from ``args.csr`` when given), write it to
    ``out`` with the gateway's CA, and ``register`` it with its serial and expiry (the caller with
    it, or it for a registered caller) once ``check`` has found the store ready for that; returns
    the serial and the private key made (None for a CSR). Nothing is left behind when any step
    fails: a refused CSR or an unwritable directory registers nothing, and a registration that
    fails takes its files back. Files already in ``out`` are never replaced."""
    from veilgate_server.crypto import ensure_local_tls, peer_certificate
    from veilgate_server.crypto.institutions import InstitutionCA
    from veilgate_server.crypto.keys import write_exclusively

    csr = None
    if args.csr:
        try:
            csr = Path(args.csr).read_bytes()
        except OSError as e:
            raise ConfigurationError(f"cannot read CSR {args.csr}: {e.strerror}") from e
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"--out-dir {out}: is not a directory")
    ca = InstitutionCA.load_or_create(settings.tls_dir, now=_now())
    gateway_ca = ensure_local_tls(settings.tls_dir, now=_now())[0].ca_certificate
    store = settings.open_store()
    written: list[Path] = []
    try:
        check(store)
        held = [name for name in ("client.pem", "client.key") if (out / name).exists()]
        if (out / "gateway-ca.pem").exists() and not _holds(out / "gateway-ca.pem", gateway_ca.read_bytes()):
            held.append("another gateway-ca.pem")
        if held:
            raise ConfigurationError(f"{out} already holds {' and '.join(held)}: choose another --out-dir")
        key_pem: bytes | None = None
        if csr is not None:
            cert_pem, serial = ca.sign_csr(csr, args.id, kind=kind, trust_domain=args.trust_domain, now=_now())
        else:
            cert_pem, key_pem, serial = ca.issue_client_certificate(
                args.id, kind=kind, trust_domain=args.trust_domain, now=_now()
            )
        files = {"client.pem": cert_pem, "client.key": key_pem, "gateway-ca.pem": gateway_ca.read_bytes()}
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                if data is None or (name == "gateway-ca.pem" and _holds(out / name, data)):
                    continue  # no key for a CSR; the same CA certificate, kept from an earlier issue
                write_exclusively(out / name, data, private=name == "client.key")
                written.append(out / name)
        except FileExistsError as e:  # made there meanwhile, or another gateway CA's certificate
            raise ConfigurationError(f"{out} already holds {Path(e.filename).name}: choose another --out-dir") from e
        except OSError as e:
            raise ConfigurationError(f"cannot write the certificate to {out}: {e.strerror}") from e
        register(store, serial, peer_certificate(cert_pem).not_after)
        written.clear()
    finally:
        for path in written:  # not registered: nothing of it is left behind
            path.unlink(missing_ok=True)
        store.close()
    return serial, key_pem


def _print_issued(out: Path, serial: str, key_pem: bytes | None) -> None:
    print(f"client certificate: {out / 'client.pem'} (serial {serial})")
    if key_pem is not None:
        print(f"private key:        {out / 'client.key'}  (hand over securely; mode 0600)")
    print(f"trust for the gateway: {out / 'gateway-ca.pem'}")


def _check_caller(args: argparse.Namespace) -> None:
    """The id and trust domain of a caller to register, checked before a CA, a database or a file is made."""
    try:
        check_caller_id(args.id)
        check_trust_domain(args.trust_domain)
    except ValueError as e:
        raise ConfigurationError(str(e)) from e


def cmd_institution_add(args: argparse.Namespace) -> int:
    from veilgate_server.storage.repositories import check_display_name

    _check_caller(args)
    try:
        check_display_name(args.name, "--name", 200)
    except ValueError as e:
        raise ConfigurationError(str(e)) from e
    settings = _settings(args)
    out = Path(args.out_dir) if args.out_dir else settings.institutions_dir / args.id

    def unregistered(store: Store) -> None:
        with contextlib.suppress(InstitutionUnknown):
            store.institutions.get(args.id)
            raise InstitutionAlreadyRegistered("institution is already registered")

    def register(store: Store, serial: str, not_after: datetime) -> None:
        store.institutions.register(
            args.id,
            kind=args.kind,
            name=args.name,
            at=_now(),
            certificate_serial=serial,
            certificate_not_after=not_after,
        )

    serial, key_pem = _issue_client(args, settings, kind="institution", out=out, register=register, check=unregistered)
    print(f"registered {args.kind} {args.id} ({args.name})")
    _print_issued(out, serial, key_pem)
    return 0


def cmd_department_add(args: argparse.Namespace) -> int:
    from veilgate_server.core.catalog import DepartmentId

    _check_caller(args)
    settings = _settings(args)
    catalog = settings.load_catalog()
    department = catalog.departments.get(DepartmentId(args.id))
    if department is None:  # a department can push only what the catalog says it owns
        raise ConfigurationError(
            f"the catalog has no department {args.id!r}; its departments are: {', '.join(catalog.departments)}"
        )
    out = Path(args.out_dir) if args.out_dir else settings.departments_dir / args.id

    def unregistered(store: Store) -> None:
        with contextlib.suppress(DepartmentNotRegistered):
            store.departments.get(args.id)
            raise DepartmentAlreadyRegistered("department is already registered")

    def register(store: Store, serial: str, not_after: datetime) -> None:
        store.departments.register(args.id, at=_now(), certificate_serial=serial, certificate_not_after=not_after)

    serial, key_pem = _issue_client(args, settings, kind="department", out=out, register=register, check=unregistered)
    items = len(catalog.items_of(args.id))
    print(f"registered department {args.id} ({department.name_en}); it may push its {items} catalog items")
    _print_issued(out, serial, key_pem)
    return 0


def cmd_department_list(args: argparse.Namespace) -> int:
    store = _settings(args).open_store(existing=True)
    try:
        departments = [(d, store.certificates.list("department", d.department_id)) for d in store.departments.list()]
    finally:
        store.close()
    for d, certificates in departments:
        print(f"{d.department_id:<24} {'enabled' if d.enabled else 'DISABLED':<9} [{_certificate_state(certificates)}]")
    if not departments:
        print("no departments registered")
    return 0


def cmd_department_enable(args: argparse.Namespace) -> int:
    store = _settings(args).open_store(existing=True)
    try:
        department = store.departments.set_enabled(args.id, args.enable)
    except DepartmentNotRegistered:
        raise ConfigurationError(
            f"no department {args.id!r} is registered (`veilgate department list` shows them)"
        ) from None
    finally:
        store.close()
    print(f"department {department.department_id} is now {'enabled' if department.enabled else 'disabled'}")
    return 0


def cmd_institution_list(args: argparse.Namespace) -> int:
    store = _settings(args).open_store(existing=True)
    try:
        institutions = [
            (i, store.certificates.list("institution", i.institution_id)) for i in store.institutions.list()
        ]
    finally:
        store.close()
    for i, certificates in institutions:
        state = "enabled" if i.enabled else "DISABLED"
        print(f"{i.institution_id:<24} {i.kind:<8} {state:<9} {i.name}  [{_certificate_state(certificates)}]")
    if not institutions:
        print("no institutions registered")
    return 0


def cmd_institution_enable(args: argparse.Namespace) -> int:
    store = _settings(args).open_store(existing=True)
    try:
        institution = store.institutions.set_enabled(args.id, args.enable)
    except InstitutionUnknown:
        raise ConfigurationError(
            f"no institution {args.id!r} is registered (`veilgate institution list` shows them)"
        ) from None
    finally:
        store.close()
    print(f"institution {institution.institution_id} is now {'enabled' if institution.enabled else 'disabled'}")
    return 0


def _caller_kind(args: argparse.Namespace) -> CallerKind:
    kind: CallerKind = args.caller_kind
    return kind


def _certificates_of(store: Store, kind: CallerKind, caller_id: str) -> list[IssuedCertificate]:
    """The caller's certificates on record; a CLI error if the caller is not registered."""
    try:
        if kind == "institution":
            store.institutions.get(caller_id)
        else:
            store.departments.get(caller_id)
    except (InstitutionUnknown, DepartmentNotRegistered):
        raise ConfigurationError(f"no {kind} {caller_id!r} is registered (`veilgate {kind} list` shows them)") from None
    return store.certificates.list(kind, caller_id)


def _expiry(certificate: IssuedCertificate) -> str:
    if certificate.not_after is None:
        return "expiry not on record (recorded before revision 0010)"
    days = (certificate.not_after - _now()).days
    when = f"{certificate.not_after:%Y-%m-%d}"
    return f"EXPIRED {when}" if days < 0 else f"expires {when} (in {days} days)"


def _certificate_state(certificates: list[IssuedCertificate]) -> str:
    """A caller's certificates in a few words, for its line in `list`: its newest accepted one."""
    accepted = [c for c in certificates if c.revoked_at is None]
    if not accepted:
        return "NO ACCEPTED CERTIFICATE"
    return f"certificate {_expiry(accepted[0])}" + (f", {len(accepted)} accepted" if len(accepted) > 1 else "")


def cmd_certificate_renew(args: argparse.Namespace) -> int:
    """Issue a further certificate to a registered institution or department. Its others stay
    accepted until they are revoked, so that it can move to the new one without a gap."""
    kind = _caller_kind(args)
    _check_caller(args)
    settings = _settings(args)
    store = settings.open_store(existing=True)  # before a CA or a file is made for nobody
    try:
        others = [c for c in _certificates_of(store, kind, args.id) if c.revoked_at is None]
    finally:
        store.close()
    home = settings.institutions_dir if kind == "institution" else settings.departments_dir
    out = Path(args.out_dir) if args.out_dir else home / args.id / f"renewed-{_now():%Y%m%dT%H%M%SZ}"

    def record(store: Store, serial: str, not_after: datetime) -> None:
        # Refuses a caller that is not registered (any more) itself, and takes the files back.
        store.certificates.record(kind, args.id, serial, at=_now(), not_after=not_after)

    serial, key_pem = _issue_client(args, settings, kind=kind, out=out, register=record, check=lambda store: None)
    print(f"issued a further certificate to {kind} {args.id}")
    _print_issued(out, serial, key_pem)
    for other in others:
        print(
            f"still accepted: serial {other.serial} (issued {other.issued_at:%Y-%m-%d}); once {args.id} uses the"
            f" new one: veilgate {kind} revoke-certificate --id {args.id} --serial {other.serial}"
        )
    return 0


def cmd_certificate_list(args: argparse.Namespace) -> int:
    kind = _caller_kind(args)
    store = _settings(args).open_store(existing=True)
    try:
        certificates = _certificates_of(store, kind, args.id)
    finally:
        store.close()
    for c in certificates:
        state = "accepted" if c.revoked_at is None else f"REVOKED {c.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
        print(f"{c.serial:<42} {state:<28} issued {c.issued_at:%Y-%m-%d}  {_expiry(c)}")
    if not certificates:
        print(
            f"no certificate is on record for {kind} {args.id}: issue one with `veilgate {kind} renew --id {args.id}`"
        )
    return 0


def cmd_certificate_revoke(args: argparse.Namespace) -> int:
    """Revoke one certificate of an institution or department: its next call with it is refused."""
    kind = _caller_kind(args)
    serial = args.serial.strip().lower().removeprefix("0x").replace(":", "")
    store = _settings(args).open_store(existing=True)
    try:
        on_record = {c.serial: c for c in _certificates_of(store, kind, args.id)}
        if serial not in on_record:
            listed = ", ".join(on_record) or "none"
            raise ConfigurationError(
                f"no certificate with serial {args.serial!r} is on record for {kind} {args.id} (on record: {listed})"
            )
        revoked = store.certificates.revoke(kind, args.id, serial, at=_now())
        accepted = [c for c in store.certificates.list(kind, args.id) if c.revoked_at is None]
    finally:
        store.close()
    since = f"{revoked.revoked_at or _now():%Y-%m-%dT%H:%M:%SZ}"
    already = on_record[serial].revoked_at is not None
    print(
        f"certificate {revoked.serial} of {kind} {args.id} {'was already' if already else 'is'} revoked since {since}"
    )
    if not accepted:
        print(f"{args.id} has no accepted certificate left: issue one with `veilgate {kind} renew --id {args.id}`")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from veilgate_server.policy_tests import run_policy_tests

    settings = _settings(args)
    report = run_policy_tests(settings.policies_path, settings.load_catalog())
    print(report.format_report())
    return 0 if report.ok else EXIT_ERROR


def cmd_policy_list(args: argparse.Namespace) -> int:
    from veilgate_server.core.policy import load_policies

    settings = _settings(args)
    for policy in load_policies(settings.policies_path, settings.load_catalog()).values():
        print(f"{policy.id:<32} v{policy.version}  {policy.purpose:<24} sha256 {policy.sha256}")
    return 0


def cmd_policy_keygen(args: argparse.Namespace) -> int:
    from veilgate_server.governance import create_governance_key

    signer = create_governance_key(Path(args.out), name=args.name)
    print(f"governance signing key written to {args.out} (mode 0600; keep it offline)")
    print(f"verifier key (give it to gateways with --governance-key): {signer.verifier_key_string()}")
    return 0


def cmd_policy_sign(args: argparse.Namespace) -> int:
    from veilgate_server.core.policy import load_policies
    from veilgate_server.governance import load_governance_key, sign_manifest

    settings = _settings(args)
    load_policies(settings.policies_path, settings.load_catalog())  # never sign a policy that does not load
    path = sign_manifest(settings.policies_path, load_governance_key(Path(args.key)))
    print(f"signed manifest written to {path}")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from veilgate_server.audit import Checkpointer
    from veilgate_server.audit_tools import export_log

    settings = _settings(args)
    store = settings.open_store(existing=True, records=False)
    try:
        summary = export_log(store, Checkpointer(store, settings.load_log_signer()), Path(args.out))
    finally:
        store.close()
    print(f"exported {summary.entries} entries (tree size {summary.tree_size}) to {summary.directory}")
    print("files: entries.jsonl, checkpoint, log.vkey")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from veilgate.audit import LogVerifier
    from veilgate_server.audit_tools import MAX_WORKERS as MAX_VERIFY_WORKERS  # not serve's threads
    from veilgate_server.audit_tools import default_workers, verify_log

    settings = _settings(args)
    workers = default_workers() if args.workers is None else args.workers
    if not 1 <= workers <= MAX_VERIFY_WORKERS:  # before the key and the store: the first mistake named is this one
        raise ConfigurationError(f"--workers must be from 1 to {MAX_VERIFY_WORKERS} processes")
    if args.log_key:
        vkey = args.log_key
    else:
        try:
            vkey = settings.log_vkey_path.read_text().strip()
        except OSError as e:
            raise ConfigurationError(f"no log verifier key: pass --log-key or keep {settings.log_vkey_path}") from e
    verifier = LogVerifier(vkey)  # a bad key is refused before the store is opened
    store = settings.open_store(migrate=False, existing=True, records=False)
    try:
        summary = verify_log(store, verifier, workers=workers)
    finally:
        store.close()
    by = f" (in {summary.pieces} pieces, by {summary.workers} processes)" if summary.pieces else ""
    print(
        f"log verified: {summary.entries} entries, {summary.subtrees} stored subtree hashes, "
        f"{summary.checkpoints} signed checkpoints consistent with the entries{by}"
    )
    return 0


def _read_text(path: Path, what: str) -> str:
    """A UTF-8 text file an auditor hands over (a checkpoint, a key), or a ConfigurationError saying why not."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"cannot read {what} {path}: {reason}") from e


def cmd_audit_verify_export(args: argparse.Namespace) -> int:
    """An auditor's check of an export, with nothing of the gateway's but the files (no database,
    no server extra)."""
    from veilgate.audit import LogVerifier, verify_export

    directory = Path(args.directory)
    if not directory.is_dir():
        raise ConfigurationError(f"{directory} is not a directory holding an export")
    own_key = args.log_key is None
    key = args.log_key if args.log_key is not None else _read_text(directory / "log.vkey", "the log key")
    verifier = LogVerifier(key.strip())
    note = _read_text(directory / "checkpoint", "the checkpoint")
    since = _read_text(Path(args.since), "the earlier checkpoint") if args.since else None
    try:
        with (directory / "entries.jsonl").open(encoding="utf-8") as entries:
            checked = verify_export(entries, note, verifier, since_note=since)
    except OSError as e:
        raise ConfigurationError(f"cannot read {directory / 'entries.jsonl'}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"{directory / 'entries.jsonl'} is not UTF-8 text") from e
    size = checked.checkpoint.tree_size
    outcomes = ", ".join(f"{code} {count}" for code, count in sorted(checked.codes.items(), key=lambda c: -c[1]))
    print(f"export verified: {size} entries hash to the root signed by {checked.checkpoint.origin}")
    print(f"outcomes: {outcomes or 'none'}")
    if checked.since is not None:
        print(f"the log only grew since the earlier checkpoint at size {checked.since.tree_size}")
    if own_key:
        print("checked with the export's own log.vkey: pin the gateway's published key with --log-key to be sure")
    return 0


def cmd_audit_follow(args: argparse.Namespace) -> int:
    """An auditor's (or a citizen's) visit to a running gateway: its latest signed checkpoint must
    extend the one kept from the last visit (a consistency proof), and then becomes the one kept.
    Run on a schedule, it catches a log rewritten, rolled back or forked between two visits."""
    from veilgate import AuditClient
    from veilgate.audit import LogVerifier
    from veilgate.errors import ProofInvalid, RequestInvalid

    _check_address(args.target, "--target", listen=False)
    kept_path = Path(args.checkpoint)
    if kept_path.is_dir():
        raise ConfigurationError(f"--checkpoint {kept_path}: is a directory; name the file that keeps the checkpoint")
    verifier = LogVerifier(args.log_key.strip())
    kept_note = _read_text(kept_path, "the kept checkpoint") if kept_path.exists() else None
    try:
        root = Path(args.ca).read_bytes() if args.ca else None
    except OSError as e:
        raise ConfigurationError(f"cannot read {args.ca}: {e.strerror}") from e
    try:
        kept = verifier.checkpoint(kept_note) if kept_note is not None else None  # the kept file, checked first
    except ProofInvalid as e:
        raise ProofInvalid(f"the checkpoint kept in {kept_path} is not this log's: {e.message}") from e
    with AuditClient.connect(args.target, root_certificates=root, log_verifier_key=args.log_key.strip()) as audit:
        try:
            latest = audit.checkpoint(min_tree_size=kept.tree_size if kept else 0)
            if kept is not None:
                audit.prove_consistency(kept, latest)
        except (ProofInvalid, RequestInvalid) as e:  # RequestInvalid: it has fewer entries than were kept
            raise ProofInvalid(
                f"the gateway's log does not extend the checkpoint kept in {kept_path}: {e.message}; "
                "keep that file as evidence"
            ) from e
    staged = kept_path.with_name(kept_path.name + ".new")
    try:
        staged.write_text(latest.note, encoding="utf-8")
        staged.replace(kept_path)
    except OSError as e:
        staged.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot keep the checkpoint in {kept_path}: {e.strerror}") from e
    if kept is None:
        print(f"first visit: kept the checkpoint of {latest.origin} at {latest.tree_size} entries in {kept_path}")
    else:
        grown = latest.tree_size - kept.tree_size
        print(
            f"the log at {latest.tree_size} entries extends the one kept at {kept.tree_size} ({grown} more): "
            f"nothing was rewritten; kept the new checkpoint in {kept_path}"
        )
    return 0


def _output_file(value: str, option: str) -> Path:
    """The file ``option`` names for output, checked before the command does its work (a benchmark
    of several minutes, a delivery fetched and logged, a wallet written) rather than found
    unwritable at its end."""
    path = Path(value)
    directory = path.parent
    if path.is_dir():
        raise ConfigurationError(f"{option} {value}: is a directory; name a file")
    if not directory.is_dir():
        raise ConfigurationError(f"{option} {value}: there is no directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigurationError(f"{option} {value}: not writable")
    return path


def _refuse_store_options(args: argparse.Namespace) -> None:
    """bench builds its own gateways and stores and removes them: the options that name a kept
    gateway's would be ignored, so they are refused rather than silently measured without."""
    for option, given, reason in (
        ("--data-dir", args.data_dir, "it works in temporary directories it removes afterwards"),
        (
            "--database-url",
            args.database_url,
            "it builds its stores afresh (the gateway's on PostgreSQL: --rpc-store postgresql)",
        ),
    ):
        if given:
            raise ConfigurationError(f"bench does not take {option}: {reason}")


def _bench_policies_dir(args: argparse.Namespace) -> Path | None:
    """The catalog and policies bench measures, as every command finds them (``--policies-dir``,
    else ``VEILGATE_POLICIES_DIR``); None: the packaged ones."""
    given = args.policies_dir or os.environ.get("VEILGATE_POLICIES_DIR")
    if not given:
        return None
    option = "--policies-dir" if args.policies_dir else "VEILGATE_POLICIES_DIR"
    path = Path(given)
    if not (path / "catalog.yaml").is_file():
        raise ConfigurationError(
            f"{option} {given}: no catalog.yaml there; name the directory of a catalog and its policies"
        )
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    from veilgate_server.bench.report import check_plot_file, render_json, render_table
    from veilgate_server.bench.run import run_bench

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    _refuse_store_options(args)
    json_path = _output_file(args.json, "--json") if args.json is not None and args.json != "-" else None
    plot_path = _output_file(args.plot, "--plot") if args.plot is not None else None
    if plot_path is not None:
        check_plot_file(plot_path)  # matplotlib missing, or a format it cannot write: refused now, not after the run
    policies_dir = _bench_policies_dir(args)
    evaluates = not args.scenario or "evaluate" in args.scenario or plot_path is not None
    asked = args.policy is not None or bool(args.param)
    if asked and not evaluates:
        raise ConfigurationError("--policy and --param apply to the evaluate scenario and the plot: neither runs")
    policy = None
    if asked or policies_dir is not None:  # checked now, not after the baseline
        from veilgate_server.bench.rpc_scenarios import bench_policy, load_bench_policies

        if evaluates:
            policy = bench_policy(args.policy, args.param or (), policies_dir)
        else:
            load_bench_policies(policies_dir)
    run = run_bench(
        quick=args.quick,
        only=args.scenario,
        postgres_url=args.postgres_url,
        progress=progress,
        processes=args.processes,
        rpc_store=args.rpc_store,
        pin=not args.no_pin,
        concurrency=args.concurrency,
        seconds=args.seconds,
        policy=policy,
        policies_dir=policies_dir,
        rounds=args.rounds,
    )
    if json_path is not None:  # first: the measured figures are kept whatever the table makes of them
        try:
            json_path.write_text(render_json(run.machine, run.baseline, run.scenarios) + "\n")
        except OSError as e:
            raise ConfigurationError(f"cannot write the results to {args.json}: {e.strerror}") from e
        progress(f"results written to {args.json}")
    if args.json == "-":
        print(render_json(run.machine, run.baseline, run.scenarios))
    else:
        print(render_table(run.machine, run.baseline, run.scenarios))
    if plot_path is not None:
        from veilgate_server.bench.report import write_plot
        from veilgate_server.bench.rpc_scenarios import latency_sweep

        progress("latency sweep for the plot ...")
        series = latency_sweep(
            quick=args.quick, processes=run.processes, pin=not args.no_pin, policy=policy, policies_dir=policies_dir
        )
        write_plot(series, plot_path)
        progress(f"plot written to {args.plot}")
    return 0


def _check_address(address: str, option: str, *, listen: bool) -> None:
    """Refuse what is not ``host:port`` with a port gRPC would take as written: it reads a port
    past 65535 modulo 65536, and a bare host as port 443. A server may listen on port 0 (a free
    one) and on every interface (no host); a client must name both."""
    host, colon, port = address.rpartition(":")
    lowest = 0 if listen else 1
    numeric = port.isascii() and port.isdigit()
    if not (colon and (listen or host.strip("[]")) and numeric and lowest <= int(port) <= 65535):
        raise ConfigurationError(f"{option} {address!r}: give host:port, with a port from {lowest} to 65535")


def _fixed_port(address: str) -> bool:
    return not address.endswith(":0")


def _hold_port(address: str) -> socket.socket:
    """Server processes share their ports (``SO_REUSEPORT``), so a second gateway started on the same
    ports by mistake would quietly take part of the connections. Refuse then, before any process
    starts: binding the port without sharing fails while anything holds it.

    The bound socket is kept until the gateway stops, and marked as shared only once bound, so that
    the gateway's own processes can join it and no other gateway can: a second one started a moment
    later, before the processes listen, still finds the port held. (A bound socket that does not
    listen is given no connections.) It is bound without ``SO_REUSEADDR`` where it can be, since two
    such sockets that do not listen may share a port. Where the port still has connections of a
    gateway just stopped (TIME_WAIT), which only ``SO_REUSEADDR`` binds past, it is bound with it:
    then two gateways started at the same moment could both pass, as before this was held."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"cannot listen on {address}: {e}") from e
    family, kind, proto, _, where = infos[0]

    def bound(*, past_time_wait: bool) -> socket.socket:
        held = socket.socket(family, kind, proto)
        try:
            if past_time_wait:
                held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.bind(where)
        except OSError:
            held.close()
            raise
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # for the gateway's own processes
        return held

    try:
        try:
            return bound(past_time_wait=False)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            return bound(past_time_wait=True)
    except OSError as e:
        raise ConfigurationError(f"cannot listen on {address}: {e.strerror} (is another gateway on it?)") from e


def cmd_serve(args: argparse.Namespace) -> int:
    from veilgate_server.crypto import TlsFiles, ensure_local_tls
    from veilgate_server.governance import verify_manifest
    from veilgate_server.rpc.processes import process_count_problem
    from veilgate_server.rpc.server import ServerTls
    from veilgate_server.serving import ServeOptions, serve, server_tls

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    problem = process_count_problem(args.processes)
    if problem is not None:
        raise ConfigurationError(problem)
    for option, address in (("--listen", args.listen), ("--listen-mtls", args.listen_mtls)):
        _check_address(address, option, listen=True)
    if args.metrics_listen is not None:
        _check_address(args.metrics_listen, "--metrics-listen", listen=True)
        if args.processes > 1 and not _fixed_port(args.metrics_listen):
            raise ConfigurationError("--metrics-listen with --processes: give a port; process n serves on port + n")
    try:
        check_trust_domain(args.trust_domain)
    except ValueError as e:
        raise ConfigurationError(f"--trust-domain: {e}") from e
    if not 1 <= args.workers <= MAX_WORKERS:
        raise ConfigurationError(f"--workers must be from 1 to {MAX_WORKERS} threads per process")
    if not 0 <= args.daily_budget <= MAX_DAILY_BUDGET:
        raise ConfigurationError(
            f"--daily-budget must be from 0 to {MAX_DAILY_BUDGET:,} evaluations per citizen per 24 h"
        )
    if args.processes > 1 and not (_fixed_port(args.listen) and _fixed_port(args.listen_mtls)):
        raise ConfigurationError("--processes share their ports: give --listen and --listen-mtls a port, not 0")
    if args.governance_key and Path(args.governance_key).is_file():
        raise ConfigurationError(
            f"--governance-key takes the verifier key itself (name+hash+key), not a file: "
            f'--governance-key "$(cat {args.governance_key})"'
        )
    settings = _settings(args)
    # The signed manifest first: a gateway that will not start must not leave a CA and keys behind.
    verify_manifest(settings.policies_path, settings.trusted_governance_keys())
    tls: ServerTls | None = None
    if not args.insecure_plaintext:
        if args.tls_cert:
            files = TlsFiles(Path(args.tls_cert), Path(args.tls_cert), Path(args.tls_key))
        else:
            files, created = ensure_local_tls(settings.tls_dir, now=_now())
            print(f"{'created' if created else 'using'} local CA: {files.ca_certificate}  (clients trust this)")
        tls = server_tls(settings, files, now=_now())
    options = ServeOptions(
        address=args.listen,
        tls=tls,
        mtls_address=args.listen_mtls,
        insecure_plaintext=args.insecure_plaintext,
        reflection=args.reflection,
        workers=args.workers,
        trust_domain=args.trust_domain,
        daily_budget=args.daily_budget,
        reuse_port=args.processes > 1,
        metrics_address=args.metrics_listen,
    )
    stop = threading.Event()
    stopped_by: list[str] = []

    def stopping(signum: int, frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    # SIGHUP too (a closed terminal, a log rotation's habit): a stop with its final checkpoint
    # rather than the instant death it would otherwise be.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stopping)
    if args.processes == 1:
        gateway, running = serve(settings, options)  # refuses to start on a bad or missing manifest
        _print_serving(
            settings,
            gateway,
            options,
            port=running.port,
            mtls_port=running.mtls_port,
            processes=1,
            metrics_ports=(running.metrics_port,) if running.metrics_port else (),
        )
        stop.wait()
        print(f"veilgate: stopping on {stopped_by[0]}: finishing the calls in flight", file=sys.stderr, flush=True)
        running.stop(grace=5.0)
        gateway.store.close()
        print("veilgate: stopped", file=sys.stderr)
        return 0
    with contextlib.ExitStack() as ports:
        for address in (args.listen, args.listen_mtls) if tls else (args.listen,):
            ports.enter_context(_hold_port(address))
        return _serve_processes(args, settings, options, stop, stopped_by)


def _serve_processes(
    args: argparse.Namespace, settings: Settings, options: ServeOptions, stop: threading.Event, stopped_by: list[str]
) -> int:
    from veilgate_server.rpc.processes import ServerProcesses
    from veilgate_server.serving import GatewayProcess, open_gateway

    # Open the gateway once here first: a bad manifest, key or database fails before any process
    # starts, and the keys and the schema are created once rather than raced by the processes.
    gateway = open_gateway(settings, daily_budget=args.daily_budget)
    gateway.store.close()
    with ServerProcesses(
        GatewayProcess(settings, options), count=args.processes, name="veilgate-serve", pin=not args.no_pin
    ) as servers:
        _print_serving(
            settings,
            gateway,
            options,
            port=servers.tls_ports[0],
            mtls_port=servers.mtls_ports[0] or None,
            processes=args.processes,
            pinned=servers.pinned,
            metrics_ports=tuple(port for port in servers.metrics_ports if port),
        )
        while not stop.wait(1.0):
            exited = servers.exited()
            if exited:
                print(f"veilgate: error: server process {exited[0]} stopped; stopping the others", file=sys.stderr)
                return 1
        print(f"veilgate: stopping on {stopped_by[0]}: finishing the calls in flight", file=sys.stderr, flush=True)
    print("veilgate: stopped", file=sys.stderr)
    return 0


def _print_serving(
    settings: Settings,
    gateway: Gateway,
    options: ServeOptions,
    *,
    port: int,
    mtls_port: int | None,
    processes: int,
    pinned: tuple[int, ...] | None = None,
    metrics_ports: tuple[int, ...] = (),
) -> None:
    mode = "TLS" if options.tls else "PLAINTEXT"
    across = f", {processes} processes" if processes > 1 else ""
    if processes > 1:
        across += f" pinned to CPUs {', '.join(map(str, pinned))}" if pinned else ", not pinned to CPUs"
    print(f"veilgate {settings.gateway_id} serving on port {port} ({mode}{across})")
    if mtls_port:
        print(f"institutions and departments (mutual TLS) on port {mtls_port}")
    if len(metrics_ports) == 1:
        print(f"metrics (Prometheus, /metrics) on port {metrics_ports[0]}")
    elif metrics_ports:
        print(f"metrics (Prometheus, /metrics) on ports {', '.join(map(str, metrics_ports))}, one per process")
    print(f"{len(gateway.policies)} reviewed policies: {', '.join(sorted(gateway.policies))}")
    print(f"gateway signing key {gateway.signer.key_id}; public keys in {settings.public_keys_path}")
    print(f"store: {_shown_url(settings.store_url)}")
    print(f"records sealed at rest under records key {gateway.store.records.key_id} ({settings.records_key_path})")
    sys.stdout.flush()


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from veilgate_server.demo import run_demo

    if args.policies_dir:
        raise ConfigurationError(
            "demo runs the packaged policies under a governance key of its own: --policies-dir does not apply"
        )
    _check_population(args.citizens)
    return run_demo(
        data_dir=Path(args.data_dir) if args.data_dir else None,
        database_url=args.database_url or os.environ.get("VEILGATE_DATABASE_URL"),
        citizens=args.citizens,
        seed=args.seed,
    )


# --- parser ---------------------------------------------------------------------------------------


def _add_certificate_commands(commands: Any, common: argparse.ArgumentParser, kind: str) -> None:
    """renew, certificates and revoke-certificate, alike for institutions and departments."""
    p = commands.add_parser(
        "renew",
        parents=[common],
        help=f"issue a further client certificate to a registered {kind} (before the current one expires)",
    )
    p.set_defaults(func=cmd_certificate_renew, caller_kind=kind)
    p.add_argument("--id", required=True)
    p.add_argument("--csr", help="sign this CSR (PEM) instead of generating a key")
    p.add_argument("--out-dir", help=f"where to write it (default DATA_DIR/{kind}s/ID/renewed-TIME)")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p = commands.add_parser("certificates", parents=[common], help=f"list a {kind}'s client certificates")
    p.set_defaults(func=cmd_certificate_list, caller_kind=kind)
    p.add_argument("--id", required=True)
    p = commands.add_parser(
        "revoke-certificate", parents=[common], help=f"stop accepting one of a {kind}'s client certificates"
    )
    p.set_defaults(func=cmd_certificate_revoke, caller_kind=kind)
    p.add_argument("--id", required=True)
    p.add_argument("--serial", required=True, help="its serial in hex, as `certificates` lists it")


def _parser() -> argparse.ArgumentParser:
    # every command logs at INFO on -v; a citizen's wallet, a governance key and an audit export are
    # files of their own, outside any gateway's data directory, store or policies: their commands
    # take only this
    standalone = argparse.ArgumentParser(add_help=False)
    standalone.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    common = argparse.ArgumentParser(add_help=False, parents=[standalone])
    common.add_argument("--data-dir", help="state directory (env VEILGATE_DATA_DIR; default ./veilgate-data)")
    common.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql://... (env VEILGATE_DATABASE_URL)")
    common.add_argument("--policies-dir", help="catalog and policies (env VEILGATE_POLICIES_DIR; default: packaged)")
    # bench builds its own gateways and stores: the options naming a kept one are not offered, and
    # refused by name when given (see _refuse_store_options).
    measuring = argparse.ArgumentParser(add_help=False, parents=[standalone])
    measuring.add_argument("--data-dir", help=argparse.SUPPRESS)
    measuring.add_argument("--database-url", help=argparse.SUPPRESS)
    measuring.add_argument(
        "--policies-dir",
        help="catalog and policies to measure, served as a signed copy (env VEILGATE_POLICIES_DIR; default: packaged)",
    )

    parser = argparse.ArgumentParser(prog="veilgate", description="Veilgate privacy-preserving data gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str, *, parent: argparse.ArgumentParser = common
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[parent], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "serve the gateway over TLS")
    p.add_argument("--listen", default="127.0.0.1:7443", help="host:port (default 127.0.0.1:7443)")
    p.add_argument("--tls-cert", help="server certificate chain (PEM); default: a local CA in the data dir")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--insecure-plaintext", action="store_true", help="serve without TLS (development only)")
    p.add_argument("--reflection", action="store_true", help="enable gRPC server reflection")
    p.add_argument(
        "--metrics-listen",
        help="serve Prometheus metrics over HTTP on host:port (off by default; process n of several: port + n)",
    )
    p.add_argument("--workers", type=int, default=8, help="RPC worker threads per process (default 8)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes sharing the ports (SO_REUSEPORT); one per core (default 1)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="with --processes: leave the processes to the scheduler instead of pinning each to a CPU of its own",
    )
    p.add_argument("--gateway-id", help="the aud citizens sign for (env VEILGATE_GATEWAY_ID)")
    p.add_argument(
        "--listen-mtls",
        default="127.0.0.1:7444",
        help="institutions' and departments' mutual-TLS host:port (default 7444)",
    )
    p.add_argument("--governance-key", help="trusted policy governance verifier key (env VEILGATE_GOVERNANCE_KEY)")
    p.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN, help=f"SPIFFE trust domain (default {DEFAULT_TRUST_DOMAIN})"
    )
    p.add_argument("--daily-budget", type=int, default=20, help="evaluations per citizen per 24 h (default 20)")

    p = add("demo", cmd_demo, "run the end-to-end demo on an embedded server")
    p.add_argument("--citizens", type=int, default=20, help="synthetic citizens to seed (default 20)")
    p.add_argument("--seed", type=int, default=7, help="population seed (default 7)")

    p = add("seed", cmd_seed, "fill the store with a deterministic synthetic population")
    p.add_argument("--citizens", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--as-of", type=date.fromisoformat, default=date(2026, 10, 31), help="data date (YYYY-MM-DD)")

    p = add("erase", cmd_erase, "crypto-shred a citizen's records: destroy their data key, in a log entry of its own")
    p.add_argument("citizen_id", metavar="CITIZEN_ID")
    p.add_argument("--yes", action="store_true", help="confirm: the records cannot be recovered")
    p.add_argument(
        "--unlink-trail",
        action="store_true",
        help="also forget the key that links the citizen's log entries to them (the entries stay, unlinkable)",
    )

    p = add("enroll", cmd_enroll, "register (or --rotate) a citizen's public keys")
    p.add_argument("--identity", help="public identity JSON written by `veilgate wallet create`")
    p.add_argument("--citizen-id")
    p.add_argument("--signing-key", help="Ed25519 public key, base64url")
    p.add_argument("--encryption-key", help="X25519 public key, base64url")
    p.add_argument("--rotate", action="store_true", help="replace the keys of an enrolled citizen")

    p = add("bench", cmd_bench, "measure every hot path against bare grpcio in the same run", parent=measuring)
    p.add_argument("--quick", action="store_true", help="the short set (under 3 minutes on 2 cores)")
    p.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="run only this scenario (evaluate, get_my_data, log_append, proofs, ...); repeat for several",
    )
    p.add_argument("--json", metavar="FILE", help="write machine-readable results to FILE, or - for stdout")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also write a latency-versus-concurrency plot to FILE: PNG, or the format its suffix names (.svg, .pdf)",
    )
    p.add_argument(
        "--policy",
        metavar="ID",
        help="the policy evaluate (and the plot) asks, e.g. insurance.inpatient_claim (default credit.consumer_loan)",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter every evaluation states; repeat for each the policy declares",
    )
    p.add_argument("--postgres-url", help="PostgreSQL for log_append (default: the local test server, if up)")
    p.add_argument(
        "--processes",
        type=int,
        help="server processes for the gateway and the bare baseline alike (default: one per core)",
    )
    p.add_argument(
        "--rpc-store",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="the gateway's store in the RPC scenarios (default sqlite; postgresql: the --postgres-url server)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="leave server processes (and log_append's writers) to the scheduler instead of one CPU each",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="calls in flight in the baseline and the RPC scenarios (default 16; 1 to 256)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        metavar="S",
        help="measured seconds of each RPC load run, after its warm-up (default 15, or 4 with --quick; 1 to 600)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="measure the baseline and the RPC scenarios N times in turn, each scenario against its round's "
        "baseline, and report its median round (default 1; 1 to 20)",
    )

    add("migrate", cmd_migrate, "create or upgrade the database schema")
    p = add("keys", cmd_keys, "show the gateway's signing key ids (creating the key on first use)")
    rotations = p.add_mutually_exclusive_group()
    rotations.add_argument(
        "--rotate", action="store_true", help="make a new signing key the current one; the old one is retired"
    )
    rotations.add_argument(
        "--rotate-records-key",
        action="store_true",
        help="wrap every citizen's data key under a new records key (the staged one, if any); the old one is destroyed",
    )
    rotations.add_argument(
        "--stage-records-key",
        action="store_true",
        help="make the next records key (keys/records.key.next) without using it yet, to copy to every "
        "other host before --rotate-records-key",
    )

    institution = sub.add_parser("institution", help="banks and insurers").add_subparsers(
        dest="institution_command", required=True
    )
    p = institution.add_parser("add", parents=[common], help="register an institution and issue its certificate")
    p.set_defaults(func=cmd_institution_add)
    p.add_argument("--id", required=True, help="institution id, [a-z0-9][a-z0-9._-]{0,63}")
    p.add_argument("--kind", required=True, choices=["bank", "insurer"])
    p.add_argument("--name", required=True)
    p.add_argument("--csr", help="sign this CSR (PEM) instead of generating a key")
    p.add_argument("--out-dir", help="where to write the certificate (default DATA_DIR/institutions/ID)")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p = institution.add_parser("list", parents=[common], help="list institutions")
    p.set_defaults(func=cmd_institution_list)
    for name, enable in (("enable", True), ("disable", False)):
        p = institution.add_parser(name, parents=[common], help=f"{name} an institution")
        p.set_defaults(func=cmd_institution_enable, enable=enable)
        p.add_argument("--id", required=True)
    _add_certificate_commands(institution, common, "institution")

    department = sub.add_parser("department", help="departments: the data sources").add_subparsers(
        dest="department_command", required=True
    )
    p = department.add_parser(
        "add", parents=[common], help="register a catalog department and issue its certificate to push records"
    )
    p.set_defaults(func=cmd_department_add)
    p.add_argument("--id", required=True, help="the department's id in the catalog, e.g. social_insurance")
    p.add_argument("--csr", help="sign this CSR (PEM) instead of generating a key")
    p.add_argument("--out-dir", help="where to write the certificate (default DATA_DIR/departments/ID)")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p = department.add_parser("list", parents=[common], help="list departments")
    p.set_defaults(func=cmd_department_list)
    for name, enable in (("enable", True), ("disable", False)):
        p = department.add_parser(name, parents=[common], help=f"{name} a department")
        p.set_defaults(func=cmd_department_enable, enable=enable)
        p.add_argument("--id", required=True)
    _add_certificate_commands(department, common, "department")

    policy = sub.add_parser("policy", help="policies and their signed manifest").add_subparsers(
        dest="policy_command", required=True
    )
    p = policy.add_parser("test", parents=[common], help="run every policy's tests.yaml")
    p.set_defaults(func=cmd_policy_test)
    p = policy.add_parser("list", parents=[common], help="list policies with their sha256")
    p.set_defaults(func=cmd_policy_list)
    p = policy.add_parser("keygen", parents=[standalone], help="create a governance signing key")
    p.set_defaults(func=cmd_policy_keygen)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="veilgate-governance")
    p = policy.add_parser("sign", parents=[common], help="sign MANIFEST over the catalog and every policy")
    p.set_defaults(func=cmd_policy_sign)
    p.add_argument("--key", required=True, help="governance key file from `veilgate policy keygen`")

    audit = sub.add_parser("audit", help="the tamper-evident log").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("export", parents=[common], help="write entries, checkpoint and key for offline checks")
    p.set_defaults(func=cmd_audit_export)
    p.add_argument("--out", required=True, help="directory to write entries.jsonl, checkpoint and log.vkey to")
    p = audit.add_parser(
        "verify-export",
        parents=[standalone],
        help="check an export's entries against its signed checkpoint, without the gateway",
    )
    p.set_defaults(func=cmd_audit_verify_export)
    p.add_argument("directory", help="what `veilgate audit export` wrote (entries.jsonl, checkpoint, log.vkey)")
    p.add_argument("--log-key", help="the gateway's published log verifier key to trust (default: the export's own)")
    p.add_argument("--since", help="an earlier checkpoint you kept: check that the log only grew since")
    p = audit.add_parser(
        "follow",
        parents=[standalone],
        help="check that a gateway's log extends the checkpoint kept from the last visit, and keep the new one",
    )
    p.set_defaults(func=cmd_audit_follow)
    p.add_argument("--target", required=True, help="the gateway's TLS port, host:port")
    p.add_argument("--ca", help="CA certificate (PEM) to trust for the gateway")
    p.add_argument("--log-key", required=True, help="the gateway's published log verifier key, pinned")
    p.add_argument("--checkpoint", required=True, help="the file that keeps the checkpoint between visits")
    p = audit.add_parser("verify", parents=[common], help="recompute the log and check every stored hash")
    p.set_defaults(func=cmd_audit_verify)
    p.add_argument("--log-key", help="the log verifier key to trust (default DATA_DIR/log.vkey)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes that verify the log in pieces at once (default: one per CPU; 1 on a busy gateway host)",
    )

    wallet = sub.add_parser("wallet", help="citizen wallets").add_subparsers(dest="wallet_command", required=True)
    p = wallet.add_parser("create", parents=[standalone], help="create a passphrase-protected wallet")
    p.set_defaults(func=cmd_wallet_create)
    p.add_argument("--citizen-id", required=True)
    p.add_argument("--out", required=True, help="wallet file to create")
    p.add_argument("--identity-out", help="public identity file (default OUT.identity.json)")
    p.add_argument("--passphrase-file", help="read the passphrase from this file (else env or prompt)")
    gateway = argparse.ArgumentParser(add_help=False)
    gateway.add_argument("--target", required=True, help="the gateway's citizen port, host:port")
    gateway.add_argument("--ca", help="CA certificate (PEM) to trust for the gateway")
    gateway.add_argument("--gateway-keys", help="pinned gateway keys (JWKS file)")
    mine = argparse.ArgumentParser(add_help=False, parents=[gateway])
    mine.add_argument("--wallet", required=True)
    mine.add_argument("--passphrase-file", help="read the passphrase from this file (else env or prompt)")

    def citizen(
        name: str, func: Callable[[argparse.Namespace], int], help_: str, *, own: bool = True
    ) -> argparse.ArgumentParser:
        p = wallet.add_parser(name, parents=[standalone, mine if own else gateway], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = citizen("fetch", cmd_wallet_fetch, "fetch and verify my records")
    p.add_argument("--items", nargs="+")
    p.add_argument("--departments", nargs="+")
    p.add_argument("--out", help="write the signed delivery (JWS) here")
    citizen("policies", cmd_wallet_policies, "what each policy reads and answers, and who may ask it", own=False)
    p = citizen("grant", cmd_wallet_grant, "consent to one institution asking named policies; prints the token")
    p.add_argument("--institution", required=True, help="the one institution id that may use it")
    p.add_argument("--purpose", required=True, help="e.g. credit.consumer_loan or insurance.claim")
    p.add_argument("--policy", action="append", required=True, help="a policy id (repeat for several)")
    p.add_argument("--max-uses", type=int, default=1, help="evaluations it allows (default 1)")
    p.add_argument("--valid-days", type=int, default=7, help="days it may be used (default 7)")
    p.add_argument("--out", help="write the consent token here instead of to stdout")
    citizen("consents", cmd_wallet_consents, "my consents: who may ask what, uses, state")
    p = citizen("revoke", cmd_wallet_revoke, "revoke a consent; the next evaluation under it is refused")
    p.add_argument("--consent", required=True, help="the consent id")
    citizen("evaluations", cmd_wallet_evaluations, "who asked what under my consents, and the answer")
    citizen("history", cmd_wallet_history, "every audit log entry about me, each proven included")
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises ``KeyboardInterrupt``: what the command
    started (the benchmark's server and load processes, open stores) is stopped on the way out
    instead of left to find its parent gone. ``serve`` answers SIGTERM itself, by stopping."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _empty_argument(args: argparse.Namespace) -> str | None:
    """The first argument given as an empty string, as the command line spells it. No default is
    empty, so it was typed (``--data-dir "$UNSET"``), and taking the default instead would act on
    another directory or database than the one meant."""
    for name, value in vars(args).items():
        if value == "":
            return name.upper() if name == "directory" else f"--{name.replace('_', '-')}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    empty = _empty_argument(args)
    if empty is not None:
        print(f"veilgate: error: {empty} must not be empty", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _terminated)
    try:
        result: int = args.func(args)
        return result
    except VeilgateError as e:
        cause = f" ({e.cause})" if isinstance(e, StorageError) and e.cause else ""
        print(f"veilgate: error: {e.message}{cause}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # the reader went away (`veilgate wallet history | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE
    except (OSError, ValueError) as e:  # an environment problem the commands did not anticipate
        print(f"veilgate: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as e:
        print(
            f"veilgate: error: {e.name} is missing; install the server extra: pip install 'veilgate[server]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except Exception as e:  # a bug: say so in one line; the traceback only with --verbose
        logging.getLogger("veilgate.cli").info("unexpected failure", exc_info=True)  # shown with -v
        print(f"veilgate: internal error ({type(e).__name__}); run again with -v for details", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
