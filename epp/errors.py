"""Errors a request can end with, and the HTTP status each maps to (reference `BuildErrResponse`).

Raised anywhere on the request path; only the ext_proc layer turns them into wire messages.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    BAD_REQUEST = "BadRequest"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    NOT_FOUND = "NotFound"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"  # epp extension: the reference answers 400 (issue 13)
    RESOURCE_EXHAUSTED = "ResourceExhausted"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    INTERNAL = "Internal"
    MODEL_SERVER_ERROR = "ModelServerError"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.MODEL_SERVER_ERROR: 500,
}


class EppError(Exception):
    """A request-scoped failure that becomes an ImmediateResponse; never takes the stream down."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value} - {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[EppError], tuple[ErrorCode, str]]:  # raised in a parser worker, re-raised here
        return (EppError, (self.code, self.message))

    @property
    def http_status(self) -> int:
        return self.code.http_status

    @property
    def body(self) -> bytes:
        return f"inference error: {self.code.value} - {self.message}".encode()


def bad_request(message: str) -> EppError:
    return EppError(ErrorCode.BAD_REQUEST, message)
