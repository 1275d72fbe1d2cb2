"""Errors the verifier's API reports, each with a stable id and an HTTP status."""

from __future__ import annotations

from ultraviolet.errors import AttestationError


class ServiceError(AttestationError):
    """A request the verifier refuses; `error_id` is stable, the message is for people."""

    status = 400

    def __init__(self, error_id: str, message: str) -> None:
        self.error_id = error_id
        self.message = message
        super().__init__(f"{error_id}: {message}")


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Gone(ServiceError):
    status = 410


class Unavailable(ServiceError):
    status = 503
