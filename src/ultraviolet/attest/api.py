"""The verifier's HTTP API (FastAPI; the OpenAPI document is at /openapi.json, docs at /docs).

Contract (docs/attest.md): nodes enrol, fetch nonces and submit evidence; anyone may read a
node's status, the fleet summary, the fleet page and /metrics; admin calls need the bearer
token. Every error is JSON {"error": stable id, "message": text} with a fitting status; a
malformed body is a 422 or 400, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ultraviolet.attest.errors import BadRequest, NotFound, ServiceError, Unauthorized
from ultraviolet.attest.metrics import CONTENT_TYPE, Metrics
from ultraviolet.attest.model import Severity
from ultraviolet.attest.service import NONCE_SIZE, Verifier
from ultraviolet.attest.store import utcnow
from ultraviolet.attest.views import fleet_counts, node_view, node_views
from ultraviolet.attest.web import render_fleet
from ultraviolet.errors import FormatError

log = logging.getLogger("ultraviolet.attest.api")
NODE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NodeId = Annotated[str, Path(pattern=NODE_ID)]
PAGE_LIMIT = 1000  # nodes on the fleet page
MAX_RELEASE_BYTES = 1 << 20
# Real evidence is ~0.1 MiB (event logs); anything far larger is refused before it is read.
MAX_BODY_BYTES = 16 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrolRequest(_Strict):
    node_id: str = Field(pattern=NODE_ID)
    ek_public: str = Field(description="base64 TPM2B_PUBLIC of the EK")
    ek_certificate: str | None = Field(default=None, description="base64 DER, if the TPM has one")
    ak_public: str = Field(description="base64 TPM2B_PUBLIC of the AK")


class EnrolResponse(BaseModel):
    enrolment: str
    credential_blob: str = Field(description="base64 TPM2B_ID_OBJECT")
    encrypted_secret: str = Field(description="base64 TPM2B_ENCRYPTED_SECRET")


class ActivateRequest(_Strict):
    secret: str = Field(description="base64 secret from TPM2_ActivateCredential")


class ActivateResponse(BaseModel):
    node_id: str
    state: str


class NonceResponse(BaseModel):
    nonce: str = Field(description=f"hex, {NONCE_SIZE} bytes")
    expires_at: str


class EvidenceRequest(_Strict):
    nonce: str = Field(pattern=r"^([0-9a-fA-F]{2}){1,64}$")
    evidence: dict[str, Any] = Field(description="Evidence.to_json() (formats/evidence.py)")


class EvidenceResponse(BaseModel):
    state: str
    findings: list[dict[str, Any]]
    release: str | None


class ApproveEkRequest(_Strict):
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    comment: str = ""


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("request.base64", f"{what} is not base64") from None


# What a 503 for the database asks clients to wait, in seconds: about a database restart or
# failover. The agent adds its jittered backoff to it, so a fleet does not return in lockstep.
STORE_RETRY_AFTER = 5


def _error(status: int, error_id: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error_id, "message": message}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.error_id, exc.message)

    @app.exception_handler(FormatError)
    async def format_error(request: Request, exc: FormatError) -> JSONResponse:
        return _error(400, "request.format", str(exc))

    @app.exception_handler(DBAPIError)
    async def store_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # The database is restarting, or a concurrent request won a race: nothing was
        # committed, the client tries again (the agent backs off).
        log.warning("store error on %s: %s", request.url.path, exc.orig)
        answer = _error(503, "store.unavailable", "the database did not complete the request")
        answer.headers["Retry-After"] = str(STORE_RETRY_AFTER)
        return answer

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return _error(422, "request.invalid", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_id = "request.too-large" if exc.status_code == 413 else f"http.{exc.status_code}"
        return _error(exc.status_code, error_id, str(exc.detail))


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # FastAPI passes an HTTPException on to our handler
                raise StarletteHTTPException(413, f"request body larger than {self.limit} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body larger than {self.limit} bytes"
        response = _error(413, "request.too-large", message)
        await response(scope, receive, send)


def create_app(
    verifier: Verifier,
    *,
    admin_token: str,
    metrics: Metrics | None = None,
    background: Callable[[], Callable[[], None]] | None = None,
) -> FastAPI:
    """`background` starts the maintenance loop and returns its stop function."""
    metrics = metrics or Metrics(verifier.store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = background() if background else None
        try:
            yield
        finally:
            if stop:
                stop()

    app = FastAPI(
        title="Ultraviolet attestation verifier",
        version="1",
        lifespan=lifespan,
        description="Enrol nodes, challenge them with nonces, appraise their evidence.",
    )
    _install_error_handlers(app)
    app.add_middleware(BodyLimit)

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        offered = (authorization or "").removeprefix("Bearer ").strip().encode()
        if not authorization or not hmac.compare_digest(offered, admin_token.encode()):
            raise Unauthorized("admin.token", "a valid admin bearer token is required")

    _node_routes(app, verifier, metrics)
    _admin_routes(app, verifier, Depends(admin))
    _read_routes(app, verifier, metrics)
    return app


def _node_routes(app: FastAPI, verifier: Verifier, metrics: Metrics) -> None:
    @app.post("/v1/enrol", status_code=201, response_model=EnrolResponse)
    def enrol(request: EnrolRequest) -> EnrolResponse:
        certificate = request.ek_certificate
        challenge = verifier.enrol(
            request.node_id,
            _b64(request.ek_public, "ek_public"),
            _b64(certificate, "ek_certificate") if certificate is not None else None,
            _b64(request.ak_public, "ak_public"),
        )
        metrics.enrolments.labels("challenged").inc()
        return EnrolResponse(
            enrolment=challenge.enrolment,
            credential_blob=base64.b64encode(challenge.credential_blob).decode(),
            encrypted_secret=base64.b64encode(challenge.encrypted_secret).decode(),
        )

    @app.post("/v1/enrol/{enrolment}/activate", response_model=ActivateResponse)
    def activate(
        enrolment: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")], request: ActivateRequest
    ) -> ActivateResponse:
        try:
            node_id, state = verifier.activate(enrolment, _b64(request.secret, "secret"))
        except ServiceError:
            metrics.enrolments.labels("refused").inc()
            raise
        metrics.enrolments.labels("activated").inc()
        return ActivateResponse(node_id=node_id, state=state.value)

    # The two calls of every attestation round answer with a JSONResponse built here: the
    # response_model still documents them in the OpenAPI document, but FastAPI then neither
    # validates nor re-serialises what we just built (as much CPU as the appraisal).
    @app.post("/v1/nodes/{node_id}/nonce", response_model=NonceResponse)
    def nonce(node_id: NodeId) -> Response:
        value, expires = verifier.issue_nonce(node_id)
        metrics.nonces.inc()
        return JSONResponse({"nonce": value.hex(), "expires_at": expires.isoformat()})

    @app.post("/v1/nodes/{node_id}/evidence", response_model=EvidenceResponse)
    def evidence(node_id: NodeId, request: EvidenceRequest) -> Response:
        started = time.perf_counter()
        outcome = verifier.submit_evidence(node_id, bytes.fromhex(request.nonce), request.evidence)
        metrics.appraisal_seconds.observe(time.perf_counter() - started)
        metrics.evidence.labels(outcome.state.value).inc()
        for finding in outcome.findings:
            if finding.severity in (Severity.FAIL, Severity.WARN):
                metrics.failed_findings.labels(finding.id.value).inc()
        answer = {
            "state": outcome.state.value,
            "findings": [f.to_json() for f in outcome.findings],
            "release": outcome.release,
        }
        return JSONResponse(answer)


def _admin_routes(app: FastAPI, verifier: Verifier, admin: Any) -> None:
    @app.put(
        "/v1/admin/releases/{name}/{version}",
        status_code=204,
        dependencies=[admin],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
                "description": "the release's reference.json (formats/reference.py)",
            }
        },
    )
    async def put_release(
        name: Annotated[str, Path(pattern=NODE_ID)],
        version: Annotated[str, Path(pattern=NODE_ID)],
        request: Request,
    ) -> Response:
        document = await request.body()
        if len(document) > MAX_RELEASE_BYTES:
            raise BadRequest("release.size", "reference.json larger than 1 MiB")
        await run_in_threadpool(verifier.put_release, name, version, document)
        return Response(status_code=204)

    @app.delete("/v1/admin/releases/{name}/{version}", status_code=204, dependencies=[admin])
    def delete_release(
        name: Annotated[str, Path(pattern=NODE_ID)],
        version: Annotated[str, Path(pattern=NODE_ID)],
    ) -> Response:
        verifier.delete_release(name, version)
        return Response(status_code=204)

    @app.get("/v1/admin/nodes", dependencies=[admin])
    def all_nodes() -> dict[str, Any]:
        return {"nodes": [view.to_json() for view in node_views(verifier.store)]}

    @app.post("/v1/admin/eks", status_code=201, dependencies=[admin])
    def approve_ek(request: ApproveEkRequest) -> dict[str, str]:
        verifier.approve_ek(request.fingerprint, request.comment)
        return {"fingerprint": request.fingerprint}


def _read_routes(app: FastAPI, verifier: Verifier, metrics: Metrics) -> None:
    @app.get("/v1/nodes/{node_id}")
    def node(node_id: NodeId) -> dict[str, Any]:
        view = node_view(verifier.store, node_id)
        if view is None:
            raise NotFound("node.unknown", f"node {node_id} is not enrolled")
        return view.to_json()

    @app.get("/v1/fleet")
    def fleet() -> dict[str, Any]:
        counts = fleet_counts(verifier.store)
        return {"nodes": sum(counts.values()), "states": counts}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        views = node_views(verifier.store, PAGE_LIMIT)
        return HTMLResponse(render_fleet(views, fleet_counts(verifier.store), utcnow()))
