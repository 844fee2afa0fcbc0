"""``veilgate demo``: the whole product on one machine, told as a story.

An embedded gateway (real TLS, real SQLite or PostgreSQL, real keys) on a free port; a synthetic
population; a citizen who creates a passphrase-protected wallet, is enrolled, fetches and verifies
their records; a third party who checks the signed delivery offline; a replayed request refused.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from veilgate import CitizenClient, CitizenWallet, gateway_keys_from_jwks, verify_delivery
from veilgate.citizen import GET_MY_DATA
from veilgate.errors import CitizenAlreadyEnrolled, TokenReplayed
from veilgate_server.admin import CitizenIdentity, enroll, seed_population
from veilgate_server.config import Settings
from veilgate_server.crypto import canonical_json, ensure_local_tls
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.server import ServerTls, build_server

__all__ = ["run_demo"]

DEMO_PASSPHRASE = "correct horse battery staple"  # noqa: S105  (a throwaway demo wallet)


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(*, data_dir: Path | None, database_url: str | None, citizens: int, seed: int) -> int:
    keep = data_dir is not None
    root = data_dir if data_dir is not None else Path(tempfile.mkdtemp(prefix="veilgate-demo-"))
    try:
        _run(Settings(data_dir=root, database_url=database_url), citizens=citizens, seed=seed)
    finally:
        if keep:
            _say(f"\nState kept in {root} (point other commands at it with --data-dir {root}).")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _run(settings: Settings, *, citizens: int, seed: int) -> None:
    started = time.perf_counter()
    _say("Veilgate demo\n=============")
    catalog = settings.load_catalog()
    store = settings.open_store()
    backend = store.engine.dialect.name
    _say(f"1. Store: {backend}; catalog: {len(catalog.items)} data items from {len(catalog.departments)} departments.")
    if store.records.count() == 0:
        t0 = time.perf_counter()
        summary = seed_population(store, catalog, citizens=citizens, seed=seed)
        _say(
            f"   Seeded {summary.citizens} synthetic citizens, {summary.records} records "
            f"in {time.perf_counter() - t0:.2f} s (seed {seed})."
        )
    citizen_id = store.records.citizen_ids(limit=1)[0]

    signer = settings.load_signer()
    tls_files, _ = ensure_local_tls(settings.tls_dir, now=datetime.now(UTC))
    chain, key = tls_files.load()
    gateway = Gateway(gateway_id=settings.gateway_id, catalog=catalog, store=store, signer=signer)
    running = build_server(gateway, address="127.0.0.1:0", tls=ServerTls(chain, key))
    target = f"localhost:{running.port}"
    _say(
        f"2. Gateway {settings.gateway_id} listening on {target} over TLS (local CA {tls_files.ca_certificate.name}); "
        f"signing key {signer.key_id[:16]}..."
    )
    try:
        wallet_path = settings.data_dir / "citizen.wallet"
        wallet = CitizenWallet.generate(citizen_id)
        wallet.save(wallet_path, DEMO_PASSPHRASE, kdf="interactive", overwrite=True)
        wallet = CitizenWallet.load(wallet_path, DEMO_PASSPHRASE)
        _say(f"3. Citizen {citizen_id[:6]}************ created a passphrase-protected wallet ({wallet_path.name}).")
        identity = CitizenIdentity.from_json(wallet.public_identity())
        try:
            keys = enroll(store, identity, rotate=False, at=datetime.now(UTC))
        except CitizenAlreadyEnrolled:  # a kept --data-dir from an earlier run: rotate to the new wallet
            keys = enroll(store, identity, rotate=True, at=datetime.now(UTC))
        _say(f"   The operator enrolled the wallet's public keys (key version {keys.key_version}).")

        pinned = gateway_keys_from_jwks(settings.public_keys_path.read_bytes())
        root_ca = tls_files.ca_certificate.read_bytes()
        with CitizenClient(target, wallet, root_certificates=root_ca, gateway_keys=pinned) as client:
            t0 = time.perf_counter()
            delivery = client.get_my_data()
            elapsed = (time.perf_counter() - t0) * 1000
            _say(
                f"4. GetMyData: {len(delivery.items)} items, sealed to the citizen's key, signed by the gateway, "
                f"verified by the SDK in {elapsed:.1f} ms."
            )
            _say(
                f"   Delivery {delivery.delivery_id}, watermark {delivery.watermark}; "
                f"signed document {len(delivery.signed_jws)} bytes."
            )
            _say(f"   {'department':<24} {'items':>5} {'bytes':>7}  sensitivity  name")
            for department, items in delivery.by_department().items():
                size = sum(len(canonical_json(i.value)) for i in items)
                levels = ",".join(str(level) for level in sorted({i.sensitivity for i in items}))
                name = catalog.department(department).name_zh
                _say(f"   {department:<24} {len(items):>5} {size:>7}  {levels:<11}  {name}")

            medical = client.get_my_data(departments=["medical_insurance"])
            _say(f"5. Narrow request (medical insurance only): {len(medical.items)} items.")

            third_party = verify_delivery(delivery.signed_jws, gateway_keys=pinned)
            _say(
                f"6. A third party checked the signed delivery offline with the published key: "
                f"{len(third_party.items)} items about the same citizen, issued at {third_party.issued_at}."
            )

            token = wallet.request_token(audience=settings.gateway_id, operation=GET_MY_DATA)
            client.send_get_my_data(token)
            try:
                client.send_get_my_data(token)
            except TokenReplayed as e:
                _say(f"7. Replaying a spent request token is refused: {e.reason} ({e.message}).")
            else:
                raise RuntimeError("a replayed request token was accepted")
    finally:
        running.stop(grace=1.0)
        store.close()
    _say(f"\nDemo finished in {time.perf_counter() - started:.2f} s.")
