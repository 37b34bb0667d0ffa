"""What the protocol layer hands the request-control layer, and what it gets back.

These types are the seam between `extproc` (wire protocol) and everything else: the protocol
code builds an `IncomingRequest`, asks for a `RouteDecision`, and feeds response data through
the `Exchange`; it never sees scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class IncomingRequest:
    headers: dict[str, str]  # lower-case keys, pseudo-headers included
    body: bytes = b""
    subset: list[str] | None = None  # envoy.lb.subset_hint, when the data plane sent one

    @property
    def path(self) -> str | None:
        h = self.headers
        return h.get(":path") or h.get("x-original-path") or h.get("x-forwarded-path")


@dataclass(slots=True)
class RouteDecision:
    destination: str  # "ip:port[,ip:port...]"
    body: bytes | None  # None = no body (header-only request)
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    remove_headers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ResponseHeadersDecision:
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    remove_headers: list[str] = field(default_factory=list)
