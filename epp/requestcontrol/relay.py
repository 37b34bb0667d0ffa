"""The response side of one request: what passes back to the client and what it tells us.

Per token chunk this is the hot path, and it needs nothing of scheduling: the status, whether
the response streams, its usage (SSE scan or a bounded JSON tail), and the client's model name
written back after a rewrite. So it runs wherever the stream is, in the EPP's one process or in
an ext_proc worker process (epp/workers/), and reports to the decision side only the first byte
(the prefill ended) and the end (status, usage, size).
"""

from __future__ import annotations

import re

from epp.requestcontrol.exchange import ResponseHeadersDecision
from epp.requests.modelname import restore_model_name
from epp.requests.usage import JsonUsageTracker, SseUsageScanner, Usage

# A non-streamed response is relayed as it arrives; when the model name must be written back,
# only its head is held until the name has passed (servers put "model" in the first few fields).
MODEL_HEAD_LIMIT = 64 * 1024
_MODEL_PAIR = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"', re.S)


class ResponseRelay:
    __slots__ = (
        "extra_headers",
        "head",
        "head_size",
        "incoming_model",
        "json_usage",
        "rewrites",
        "served_header",
        "size",
        "sse",
        "status",
        "streaming",
        "target_model",
        "usage",
    )

    def __init__(self) -> None:
        self.incoming_model = ""
        self.target_model = ""
        self.extra_headers: list[tuple[str, str]] = []  # from the scheduling result's response headers
        self.served_header: str | None = None  # echo the gateway's served endpoint in this header
        self.status = 0  # the response's HTTP status (0 until response headers arrive)
        self.streaming = False
        self.sse: SseUsageScanner | None = None
        self.json_usage: JsonUsageTracker | None = None
        self.head: list[bytes] | None = None  # a non-streamed response's head, held for the model name
        self.head_size = 0
        self.usage: Usage | None = None
        self.size = 0
        self.rewrites = False

    def routed(
        self,
        incoming_model: str,
        target_model: str,
        extra_headers: list[tuple[str, str]],
        served_header: str | None = None,
    ) -> None:
        self.incoming_model, self.target_model = incoming_model, target_model
        self.extra_headers = extra_headers
        self.served_header = served_header
        self.rewrites = bool(incoming_model) and incoming_model != target_model

    def headers(self, headers: dict[str, str], served: str | None = None) -> ResponseHeadersDecision:
        """`served`: the endpoint the gateway reports it sent the request to, when it does."""
        status = headers.get(":status", "200")
        self.status = int(status) if status.isdigit() and len(status) == 3 else 0
        self.streaming = "text/event-stream" in headers.get("content-type", "")
        if self.streaming:
            self.sse = SseUsageScanner()
        else:
            self.json_usage = JsonUsageTracker()
            if self.rewrites:
                self.head = []
        decision = ResponseHeadersDecision([("x-went-into-resp-headers", "true")])
        if self.extra_headers:
            decision.set_headers.extend(self.extra_headers)
        if self.served_header and served:
            decision.set_headers.append((self.served_header, served))
        if self.rewrites and "content-length" in headers:
            # The body length changes when the model name is written back; let Envoy re-frame it.
            decision.remove_headers.append("content-length")
        return decision

    def chunk(self, chunk: bytes, eos: bool) -> bytes | None:
        """The bytes to forward now (None: hold them for now); at `eos`, `usage` is settled."""
        self.size += len(chunk)
        if self.streaming:
            sse = self.sse
            if sse is not None:
                sse.feed(chunk)
                if eos:
                    self.usage = sse.usage
            if self.rewrites:
                chunk = restore_model_name(chunk, self.target_model, self.incoming_model)
            return chunk
        # Not a stream: relayed as it arrives (an 80 MB embeddings batch must not be buffered and
        # parsed on the event loop while every other pick waits); usage comes from a bounded tail.
        if self.json_usage is None:  # no response headers seen (a client breaking the protocol)
            self.json_usage = JsonUsageTracker()
        self.json_usage.feed(chunk)
        head = self.head
        if head is not None:
            head.append(chunk)
            self.head_size += len(chunk)
            joined = b"".join(head)
            if not eos and self.head_size < MODEL_HEAD_LIMIT and not _name_has_passed(joined):
                return None
            self.head = None
            chunk = restore_model_name(joined, self.target_model, self.incoming_model)
        if eos:
            self.usage = self.json_usage.usage()
        return chunk


def _name_has_passed(head: bytes) -> bool:
    """Whether the head holds a whole `"model": "..."` pair with more bytes after it."""
    m = _MODEL_PAIR.search(head)
    return m is not None and m.end() < len(head)
