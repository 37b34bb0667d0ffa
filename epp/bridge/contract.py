"""The HTTP picker contract NGINX speaks (NGF's shim contract, gateways.md §2.4/§2.7), in one place.

Both shapes serve it: `epp-bridge` (HTTP -> ext_proc gRPC to any EPP) and the EPP's own
`--http-picker-port` (HTTP -> director, no gRPC hop). Request: the client's method, headers and
body, plus `X-EPP-Host`/`X-EPP-Port` (bridge only) and optionally `X-Original-Path` /
`X-Original-Method`. Answer: `200` + one endpoint, the EPP's own status and body, or a
bridge error marked with `X-EPP-Bridge-Error` so an NJS module can tell "the EPP decided"
(pass it to the client) from "the picker failed" (FailOpen/FailClose).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

EPP_HOST = "x-epp-host"
EPP_PORT = "x-epp-port"
ORIGINAL_PATH = "x-original-path"
ORIGINAL_METHOD = "x-original-method"
DESTINATION = "X-Gateway-Destination-Endpoint"
FALLBACKS = "X-Gateway-Destination-Endpoint-Fallbacks"
BRIDGE_ERROR = "X-EPP-Bridge-Error"
MISSING_EPP_HEADERS = "missing at least one of required headers: X-EPP-Host and X-EPP-Port"

# Connection-scoped headers of the NGINX -> bridge hop, not the client's request.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "trailer",
        "content-length",
        "expect",
    }
)
_CONTRACT_ONLY = frozenset({EPP_HOST, EPP_PORT, ORIGINAL_METHOD})


class Cause(str, Enum):
    """Why a pick did not produce an endpoint; the `cause` label of the error counter."""

    MISSING_HEADERS = "missing_headers"
    BAD_REQUEST = "bad_request"  # unparsable X-EPP-Port
    TOO_LARGE = "too_large"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    RPC_ERROR = "rpc_error"
    NO_ENDPOINT = "no_endpoint"
    IMMEDIATE = "immediate_response"  # the EPP answered with a status of its own (not a bridge fault)
    INTERNAL = "internal"


# Bridge-originated statuses. 504 is ours (NGF has none): a slow EPP is not an unreachable one.
_STATUS = {
    Cause.MISSING_HEADERS: 400,
    Cause.BAD_REQUEST: 400,
    Cause.TOO_LARGE: 413,
    Cause.UNREACHABLE: 502,
    Cause.TIMEOUT: 504,
    Cause.RPC_ERROR: 502,
    Cause.NO_ENDPOINT: 503,
    Cause.INTERNAL: 500,
}


@dataclass(slots=True)
class PickOutcome:
    """What one pick produced: an endpoint (status 200) or a status + body for NGINX."""

    status: int
    endpoint: str = ""
    fallbacks: list[str] = field(default_factory=list)
    body: bytes = b""
    cause: Cause | None = None
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def picked(cls, destination: str) -> PickOutcome:
        """One endpoint for NGINX (`proxy_pass` cannot use a list); the rest as fallbacks."""
        parts = [p.strip() for p in destination.split(",") if p.strip()]
        if not parts:
            return cls.failed(Cause.NO_ENDPOINT, "the EPP answered without a destination endpoint")
        return cls(200, parts[0], parts[1:], b"")

    @classmethod
    def failed(cls, cause: Cause, message: str) -> PickOutcome:
        return cls(_STATUS[cause], body=message.encode(), cause=cause)

    @classmethod
    def immediate(cls, status: int, body: bytes, content_type: str = "") -> PickOutcome:
        # An ImmediateResponse without a status is malformed; 500 is what Envoy would send.
        return cls(
            status or 500, body=body, cause=Cause.IMMEDIATE, content_type=content_type or "text/plain; charset=utf-8"
        )

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": self.content_type}
        if self.endpoint:
            h[DESTINATION] = self.endpoint
        if self.fallbacks:
            h[FALLBACKS] = ",".join(self.fallbacks)
        if self.cause is not None and self.cause is not Cause.IMMEDIATE:
            h[BRIDGE_ERROR] = self.cause.value
        return h


def request_headers(items: Iterable[tuple[str, str]], method: str, path: str) -> dict[str, str]:
    """The client's request headers as the EPP expects them: lower-case keys, pseudo-headers synthesised.

    `:path` comes from X-Original-Path, else from the bridge request's own path unless it is the
    bare `/` NGF's module always fetches (no information: the EPP then infers the API from the
    body). Repeated headers are joined with ", " (RFC 9110 field combination).
    """
    out: dict[str, str] = {}
    original_method = ""
    for key, value in items:
        k = key.lower()
        if k == ORIGINAL_METHOD:
            original_method = value
        if k in _HOP_BY_HOP or k in _CONTRACT_ONLY:
            continue
        out[k] = f"{out[k]}, {value}" if k in out else value
    out[":method"] = original_method or method
    original = out.get(ORIGINAL_PATH)
    if original:
        out[":path"] = original
    elif path and path != "/":
        out[":path"] = path
    out[":scheme"] = "http"
    if "host" in out:
        out[":authority"] = out["host"]
    return out
