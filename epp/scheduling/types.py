"""What scheduling plugins see: the request, per-cycle state, and results. No gRPC, no HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.datalayer.endpoint import Endpoint


@dataclass(slots=True)
class SchedulingRequest:
    request_id: str
    target_model: str
    incoming_model: str = ""
    api: str = "completions"
    prefix_input: bytes = b""  # bytes the prefix index hashes
    cache_salt: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0  # estimate (chars / 4) for load accounting
    priority: int = 0
    stream: bool = False
    prefix_key: int = 0  # first prefix-block hash, set by the prefix producer (0 = none)
    token_ids: Sequence[int] | None = None  # the prompt's real tokens, when a token-producer is configured
    # (chars per block, max blocks) -> the prefix producer's block hashes of `prefix_input`: a
    # request scheduled again (a held one retried on every release) is not hashed again.
    # Callers that schedule a request more than once carry it over (see `reuse_hashes`).
    hash_memo: dict[tuple[int, int], list[int]] | None = None

    def reuse_hashes(self, earlier: SchedulingRequest | None) -> SchedulingRequest:
        """Take over `earlier`'s hashes when it was this same prompt (same bytes, model, salt)."""
        if (
            earlier is not None
            and earlier.hash_memo
            and earlier.prefix_input is self.prefix_input
            and earlier.target_model == self.target_model
            and earlier.cache_salt == self.cache_salt
        ):
            self.hash_memo = earlier.hash_memo
        return self


class CycleState(dict[str, Any]):
    """Data one plugin leaves for another within a single scheduling cycle."""


@dataclass(slots=True)
class ProfileResult:
    targets: list[Endpoint]


@dataclass(slots=True)
class SchedulingResult:
    profile_results: dict[str, ProfileResult | None]
    primary_profile: str
    # Headers to add to the request sent upstream (e.g. x-prefiller-host-port) and to the response.
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    # A response header whose value is the endpoint the gateway reports it served (conformance).
    served_endpoint_header: str | None = None

    @property
    def targets(self) -> list[Endpoint]:
        primary = self.profile_results.get(self.primary_profile)
        return primary.targets if primary else []
