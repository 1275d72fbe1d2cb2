"""`uvctl attest serve`: the attestation verifier service (HTTP API, fleet page, metrics)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from ultraviolet.errors import AttestationError

DEFAULT_LISTEN = "127.0.0.1:8400"
EK_ACCEPTANCE = ("approved", "certificate", "either")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "attest",
        help="attestation verifier service",
        description="Attestation verifier: enrols nodes (EK + AK credential activation), "
        "challenges them with nonces, appraises their quotes and event logs against the "
        "accepted releases, raises alerts and serves the fleet page and /metrics.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="run the verifier (upgrades the database schema first)",
        description="Run one stateless verifier worker. Several workers may share one "
        "PostgreSQL database (see docs/attest.md).",
    )
    serve.add_argument(
        "--database",
        default="attest.db",
        help="SQLite file path or SQLAlchemy URL, e.g. postgresql://user@host/db "
        "(default: attest.db)",
    )
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s)")
    serve.add_argument(
        "--admin-token-file", type=Path, required=True, help="file holding the admin token"
    )
    serve.add_argument(
        "--check-in-interval",
        type=float,
        default=600.0,
        help="seconds without evidence before a node is stale (default %(default)s)",
    )
    serve.add_argument("--nonce-ttl", type=float, default=120.0, help="seconds (default 120)")
    serve.add_argument(
        "--pcrs", default="4,7,11", help="PCRs the policy requires quoted (default 4,7,11)"
    )
    serve.add_argument("--webhook", action="append", default=[], help="alert webhook URL")
    serve.add_argument("--alertmanager", action="append", default=[], help="Alertmanager base URL")
    serve.add_argument(
        "--external-url", help="this service's URL as alert links show it (default: --listen)"
    )
    serve.add_argument(
        "--maintenance-interval",
        type=float,
        default=5.0,
        help="seconds between stale checks and alert deliveries (default 5)",
    )
    _ek_options(serve)
    serve.set_defaults(func=serve_command)


def _ek_options(serve: Any) -> None:
    serve.add_argument(
        "--ek-ca",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a trusted TPM-manufacturer CA certificate file (PEM, may hold several, or DER): "
        "roots and the intermediates that issue EK certificates; repeatable",
    )
    serve.add_argument(
        "--ek-acceptance",
        choices=EK_ACCEPTANCE,
        help="how an EK may enrol: 'approved' (its fingerprint via POST /v1/admin/eks; the "
        "default without --ek-ca), 'certificate' (an EK certificate chaining to --ek-ca) or "
        "'either' (the default with --ek-ca)",
    )


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise AttestationError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def ek_policy(args: argparse.Namespace, now: dt.datetime) -> Any:
    """The EkPolicy of --ek-ca and --ek-acceptance (CA certificates checked at `now`)."""
    from ultraviolet.attest.ekcert import EkCertificateAuthorities, load_ca_certificates
    from ultraviolet.attest.enrolment import EkAcceptance, EkPolicy

    default = "either" if args.ek_ca else "approved"
    acceptance = EkAcceptance(args.ek_acceptance or default)
    if not args.ek_ca:
        if acceptance is not EkAcceptance.APPROVED:
            raise AttestationError(f"--ek-acceptance {acceptance.value} needs --ek-ca")
        return EkPolicy()
    if acceptance is EkAcceptance.APPROVED:
        raise AttestationError(
            "--ek-ca with --ek-acceptance approved: the certificates would never be used"
        )
    certificates = [c for path in args.ek_ca for c in load_ca_certificates(path)]
    return EkPolicy(acceptance, EkCertificateAuthorities.of(certificates, now))


def serve_command(args: argparse.Namespace) -> int:
    """Run one verifier worker until it is stopped."""
    import uvicorn

    from ultraviolet.attest.alerts import Sink
    from ultraviolet.attest.api import create_app
    from ultraviolet.attest.background import start_maintenance
    from ultraviolet.attest.metrics import Metrics
    from ultraviolet.attest.service import Verifier, VerifierConfig
    from ultraviolet.attest.store import Store

    host, port = _listen(args.listen)
    try:
        token = args.admin_token_file.read_text().strip()
        pcrs = tuple(sorted({int(p) for p in args.pcrs.split(",") if p.strip()}))
    except OSError as exc:
        raise AttestationError(f"--admin-token-file: {exc}") from exc
    except ValueError as exc:
        raise AttestationError(f"--pcrs {args.pcrs!r}: {exc}") from exc
    if len(token) < 16:
        raise AttestationError("--admin-token-file: the token must have at least 16 characters")
    sinks = tuple(Sink("webhook", url) for url in args.webhook) + tuple(
        Sink("alertmanager", url) for url in args.alertmanager
    )
    config = VerifierConfig(
        pcrs=pcrs,
        nonce_ttl=dt.timedelta(seconds=args.nonce_ttl),
        check_in_interval=dt.timedelta(seconds=args.check_in_interval),
        sinks=sinks,
        base_url=args.external_url or f"http://{args.listen}",
    )
    policy = ek_policy(args, dt.datetime.now(dt.UTC))  # before the database: a bad CA file
    store = Store.open(args.database)  # upgrades the schema to the newest migration
    verifier = Verifier(store, config=config, ek_policy=policy)
    metrics = Metrics(store)
    app = create_app(
        verifier,
        admin_token=token,
        metrics=metrics,
        background=lambda: start_maintenance(verifier, metrics, interval=args.maintenance_interval),
    )
    logging.getLogger("ultraviolet").setLevel(logging.INFO)
    # The C parser and loop (dependencies of ours): named, so that a missing one fails here
    # instead of the worker quietly running on the slower pure-Python ones.
    uvicorn.run(
        app,
        host=host,
        port=port,
        http="httptools",
        loop="uvloop",
        log_level="info",
        access_log=False,
    )
    store.close()
    return 0
