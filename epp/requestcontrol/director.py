"""The request director: parse -> rewrite -> objective -> admission/flow control -> candidates -> schedule -> account.

One `Exchange` per HTTP request carries what the response path needs (names for the model
rewrite back, usage, and the in-flight load to release exactly once).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.reachability import ReachabilityPolicy
from epp.errors import EppError, ErrorCode
from epp.flowcontrol.admission import LegacyAdmission
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.prefill_gate import PrefillGate
from epp.flowcontrol.ticket import Outcome, Ticket
from epp.observability.metrics import EppMetrics, ObjectiveSeries
from epp.observability.modellabels import ModelLabels
from epp.observability.tracing import RequestTrace, now_ns, request_trace, top_scores
from epp.requestcontrol.exchange import IncomingRequest, ResponseHeadersDecision, RouteDecision
from epp.requestcontrol.relay import ResponseRelay
from epp.requests.body import ParsedRequest, parse_request, passthrough_request, replace_model
from epp.requests.offload import BodyParser
from epp.routing.objectives import ObjectiveStore
from epp.routing.rewrites import RewriteStore
from epp.scheduling.plugins.precise_prefix import TokenProducer
from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY
from epp.scheduling.scheduler import SCORES_KEY, Scheduler
from epp.scheduling.types import SchedulingRequest, SchedulingResult

log = logging.getLogger("epp.director")

MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
# llm-d-router's names for the same two (accepted so its clients and gateways work unchanged).
LLMD_OBJECTIVE_HEADER = "x-llm-d-inference-objective"
LLMD_FAIRNESS_HEADER = "x-llm-d-inference-fairness-id"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
# Control headers are for the EPP only; the model server must not see them.
CONTROL_HEADERS = (
    MODEL_REWRITE_HEADER,
    OBJECTIVE_HEADER,
    FAIRNESS_HEADER,
    LLMD_OBJECTIVE_HEADER,
    LLMD_FAIRNESS_HEADER,
    "x-gateway-destination-endpoint-subset",
)
CHARS_PER_TOKEN = 4


def uncached_tokens(cycle, endpoint: Endpoint, tokens: int) -> int:
    info = cycle.get(PREFIX_MATCH_KEY)
    if info is None or not info.matches:
        return tokens
    return max(0, tokens - info.matches.get(endpoint.name, 0) * info.block_size_tokens)


class EndpointSource(Protocol):
    """What the director needs from the data layer: the current endpoints, cheaply."""

    def endpoints(self) -> tuple[Endpoint, ...]: ...


class Director:
    def __init__(
        self,
        datastore: EndpointSource,
        scheduler: Scheduler,
        metrics: EppMetrics,
        admission: LegacyAdmission,
        flow: FlowController,
        objectives: ObjectiveStore | None = None,
        rewrites: RewriteStore | None = None,
        parser: str = "openai-parser",
        use_subset_hint: bool = True,
        reachability: ReachabilityPolicy | None = None,
    ) -> None:
        self.datastore = datastore
        self.scheduler = scheduler
        self.metrics = metrics
        self.admission = admission
        self.flow = flow  # the waiting room: flow-control queues and the prefill gate's parking
        self.objectives = objectives if objectives is not None else ObjectiveStore()
        self.rewrites = rewrites if rewrites is not None else RewriteStore()
        self.passthrough = parser == "passthrough-parser"
        self.use_subset_hint = use_subset_hint
        self.reachability = reachability or ReachabilityPolicy()
        self.body_parser = BodyParser()
        self.model_labels = ModelLabels(self._known_models)
        self.rng = random.Random()
        self._gate_config: object = None
        self._gate: PrefillGate | None = None
        self._tokens_config: object = None
        self._tokens: TokenProducer | None = None

    @property
    def gate(self) -> PrefillGate | None:
        config = self.scheduler.config
        if config is not self._gate_config:  # the scheduler's config can be swapped at runtime
            gates = config.plugins_of(PrefillGate)
            self._gate_config, self._gate = config, (gates[0] if gates else None)
        return self._gate

    @property
    def token_producer(self) -> TokenProducer | None:
        config = self.scheduler.config
        if config is not self._tokens_config:
            found = config.plugins_of(TokenProducer)
            self._tokens_config, self._tokens = config, (found[0] if found else None)
        return self._tokens

    def exchange(self) -> Exchange:
        return Exchange(self)

    def _known_models(self) -> set[str]:
        """Model names the pool vouches for (cold: read at most once a second by ModelLabels)."""
        names: set[str] = set()
        for ep in self.datastore.endpoints():
            m = ep.metrics
            names.update(m.served_models, m.active_models, m.waiting_models)
        for rules in self.rewrites.rules.values():
            for rule in rules:
                if rule.match_model:
                    names.add(rule.match_model)
                names.update(t.model for t in rule.targets)
        return names


class Exchange:
    """One HTTP request's journey through the EPP."""

    __slots__ = (
        "admitted",
        "closed",
        "d",
        "endpoint",
        "failed",
        "gate",
        "held_at",
        "held_since",
        "incoming_label",
        "incoming_model",
        "long",
        "parsed",
        "parsing",
        "pending",
        "prefill_pending",
        "priority",
        "relay",
        "req",
        "request_size",
        "result",
        "routed_body",
        "sched_req",
        "scheduled_before",
        "series",
        "start",
        "target_label",
        "target_model",
        "ticket",
        "token_ids",
        "tokenizing",
        "tokens",
        "trace",
    )

    def __init__(self, director: Director) -> None:
        self.d = director
        self.start = time.monotonic()
        self.parsed: ParsedRequest | None = None
        self.incoming_model = ""
        self.target_model = ""
        self.sched_req: SchedulingRequest | None = None
        self.scheduled_before: SchedulingRequest | None = None  # the last attempt, held or not
        self.result: SchedulingResult | None = None
        self.endpoint: Endpoint | None = None
        self.tokens = 0
        self.relay = ResponseRelay()  # the response side: status, usage, model name written back
        self.closed = False
        self.failed = False
        self.priority = 0
        self.request_size = 0
        self.prefill_pending = False
        self.series: ObjectiveSeries | None = None
        self.long = False  # a long uncached prompt: counted by the prefill gate until its first byte
        self.gate: PrefillGate | None = None
        self.held_since: float | None = None
        self.held_at: tuple[Endpoint, int] | None = None  # where a held request wants to go, for how many tokens
        self.incoming_label = ""  # metric label values for the model names (observability/modellabels.py)
        self.target_label = ""
        self.routed_body: bytes | None = None  # the body with the model rewritten, when it is
        self.parsing: asyncio.Future[ParsedRequest] | None = None  # a large body in the parser worker
        self.ticket: Ticket | None = None  # its place in the waiting room, while it has one
        self.admitted = False  # through admission / flow control: only scheduling is left
        self.pending: RouteDecision | EppError | None = None  # how a wait ended, for route() to return
        self.req: IncomingRequest | None = None  # what a waiting request is routed with
        self.token_ids: Sequence[int] | None = None  # the prompt's tokens (token-producer), [] when unknown
        self.tokenizing: asyncio.Future[Sequence[int]] | None = None  # the model server tokenizing it
        self.trace: RequestTrace | None = request_trace()  # None unless --tracing

    # ---- request path ------------------------------------------------------------------------

    def route_headers_only(self, req: IncomingRequest) -> RouteDecision:
        """Bodyless requests (GET /v1/models...) go to a random endpoint, unscheduled (reference)."""
        eps = self.d.datastore.endpoints()
        if not eps:
            raise self._fail(EppError(ErrorCode.INTERNAL, "no pods available in datastore"))
        ep = eps[self.d.rng.randrange(len(eps))] if len(eps) > 1 else eps[0]
        return RouteDecision(ep.hostport, None, self._request_id_header(req), self._removals(req))

    def route(self, req: IncomingRequest, may_hold: bool = True) -> RouteDecision | None:
        """The routing decision, or None when the request waits (flow control queues it, the
        prefill gate parks it, or its body is parsed in the worker): then await
        `wait_to_route()` and call `route()` again with the same request."""
        d = self.d
        pending = self.pending
        if pending is not None:
            self.pending = None
            if isinstance(pending, EppError):
                raise pending
            return pending
        if self.closed:
            # Only a client that breaks the protocol routes a finished exchange (a response
            # before its request); counting it would add load nothing ever releases.
            raise self._fail(EppError(ErrorCode.BAD_REQUEST, "request routed after its exchange ended"))
        trace = self.trace
        if trace is not None and not trace.begun:
            trace.begin(req.headers, now_ns())
        if self.parsed is None:
            if self.parsing is not None:
                if not self.parsing.done():
                    return None
                task, self.parsing = self.parsing, None
                try:
                    worker_parsed = task.result()
                except EppError as err:
                    raise self._fail(err) from err
                self._prepare(req, worker_parsed)
            elif may_hold and not d.passthrough and d.body_parser.should_offload(req.body):
                # Parsed in a worker process while other picks go on; wait_to_route() awaits it.
                self.parsing = asyncio.ensure_future(d.body_parser.parse(req.body, req.path))
                return None
            else:
                self._prepare(req)
        parsed = self.parsed
        assert parsed is not None
        if trace is not None and not trace.parsed:
            trace.parsed = True
            trace.phase(
                "epp.parse",
                trace.t_begin,
                now_ns(),
                {
                    "epp.api": parsed.api.value,
                    "gen_ai.request.model": self.incoming_model,
                    "epp.target_model": self.target_model,
                },
            )
        if self.token_ids is None and not self._tokenize(parsed, may_hold):
            return None
        headers = req.headers
        token_ids = self.token_ids
        tokens = len(token_ids) if token_ids else len(parsed.prefix_input) // CHARS_PER_TOKEN
        flow = d.flow
        if not self.admitted:
            ticket = self.ticket
            if ticket is not None and ticket.outcome is Outcome.DISPATCHED:
                self.admitted = True  # flow control dispatched it: schedule now
            elif flow.enabled and may_hold:
                # Before candidates: with no endpoint at all the request waits for one.
                try:
                    ticket = self.ticket = flow.submit(
                        self,
                        (headers.get(FAIRNESS_HEADER) or headers.get(LLMD_FAIRNESS_HEADER, "")),
                        self.priority,
                        self.request_size,
                        tokens,
                        headers,
                        self.incoming_label,
                        self.target_label,
                    )
                except EppError as err:
                    raise self._fail(err) from err
                if ticket.outcome is not Outcome.DISPATCHED:
                    self.req = req
                    if trace is not None and not trace.t_wait:
                        trace.t_wait = now_ns()
                    return None
                self.admitted = True
        target = self.target_model
        incoming_label, target_label = self.incoming_label, self.target_label
        self._forget_held_demand()  # re-scheduled below from scratch
        candidates = self._candidates(req)
        try:
            if not self.admitted:
                d.admission.admit(self.priority, candidates)
                self.admitted = True
            sreq = SchedulingRequest(
                request_id=headers.get("x-request-id", ""),
                target_model=target,
                incoming_model=self.incoming_model,
                api=parsed.api.value,
                prefix_input=parsed.prefix_input,
                cache_salt=parsed.cache_salt,
                headers=headers,
                prompt_tokens=tokens,
                priority=self.priority,
                stream=parsed.stream,
                token_ids=token_ids or None,
            ).reuse_hashes(self.scheduled_before)
            self.scheduled_before = sreq
            if trace is not None and trace.t_wait:
                trace.phase("epp.flow_control.wait", trace.t_wait, now_ns())
                trace.t_wait = 0
            t0 = time.perf_counter()
            t0_ns = now_ns() if trace is not None else 0
            result, cycle = d.scheduler.schedule(sreq, candidates)
            d.metrics.scheduler_e2e.observe(time.perf_counter() - t0)
        except EppError as err:
            d.metrics.scheduler_attempts.labels("failure", target_label, "", "", "").inc()
            self._unhold()
            raise self._fail(err) from err
        targets = result.targets
        primary = targets[0]
        # Only the part of the prompt the chosen endpoint does not already hold costs prefill.
        uncached = uncached_tokens(cycle, primary, tokens)
        gate = d.gate
        long = gate is not None and gate.is_long(uncached)
        if (
            long
            and may_hold
            and gate is not None
            and gate.holds(primary, uncached, time.monotonic() - self.start, len(candidates))
        ):
            if self.held_since is None:
                self.held_since = time.monotonic()
                d.metrics.prefill_gate_held.inc()
            self.gate = gate
            primary.inflight.held_tokens += uncached
            self.held_at = (primary, uncached)
            self.ticket = flow.park(self, self.ticket, gate, self.start)
            self.req = req
            if trace is not None and not trace.t_wait:
                trace.t_wait = now_ns()
            return None
        self._unhold()
        d.metrics.scheduler_attempts.labels(
            "success", target_label, primary.pod_name or primary.name, primary.namespace, str(primary.port)
        ).inc()
        d.scheduler.pre_request(cycle, sreq, result)
        # Count the load at the moment of the pick: the next request in this burst sees it.
        series = self.series = d.metrics.series(incoming_label, target_label)
        series.running.inc()
        primary.inflight.add(uncached, long)
        self.prefill_pending = True
        self.long, self.gate = long, gate
        self.endpoint, self.tokens, self.sched_req, self.result = primary, uncached, sreq, result

        body = self.routed_body if self.routed_body is not None else req.body
        d.metrics.request_total.labels(incoming_label, target_label, str(self.priority)).inc()
        series.request_sizes.observe(len(req.body))
        destination = primary.hostport if len(targets) == 1 else ",".join(e.hostport for e in targets)
        extra = self._request_id_header(req)
        if result.request_headers:
            extra.extend(result.request_headers)
        if trace is not None:
            trace.t_routed = now_ns()
        if trace is not None and trace.recording:
            scored = cycle.get(SCORES_KEY)
            trace.phase(
                "epp.schedule",
                t0_ns,
                trace.t_routed,
                {
                    "epp.endpoint": primary.hostport,
                    "epp.candidates": len(candidates),
                    "epp.scores.top": top_scores(*scored) if scored else primary.hostport,
                },
            )
        if trace is not None:
            traceparent = trace.traceparent()
            if traceparent:
                extra.append(("traceparent", traceparent))
        self.relay.routed(self.incoming_model, target, result.response_headers, result.served_endpoint_header)
        return RouteDecision(destination, body, extra, self._removals(req))

    def _tokenize(self, parsed: ParsedRequest, may_hold: bool) -> bool:
        """Settle self.token_ids (a list, [] when unknown). False while the server tokenizes it."""
        task = self.tokenizing
        if task is not None:
            if not task.done():
                return False
            self.tokenizing = None
            self.token_ids = task.result() if not task.cancelled() and task.exception() is None else []
            return True
        tp = self.d.token_producer
        prompt = tp.prompt(parsed.api.value, parsed.data, self.target_model) if tp is not None else None
        if tp is None or prompt is None:
            self.token_ids = []
            return True
        ids = tp.tokenize_now(prompt)
        if ids is not None:
            self.token_ids = ids
            return True
        if not may_hold:
            self.token_ids = []  # a caller that cannot wait is scheduled on the approximate index
            return True
        self.tokenizing = asyncio.ensure_future(tp.tokenize(prompt, list(self.d.datastore.endpoints())))
        return False

    def _prepare(self, req: IncomingRequest, parsed: ParsedRequest | None = None) -> None:
        """Parse the body (unless a worker did) and settle the names and priority: once per
        request, however often it is routed."""
        d = self.d
        self.request_size = len(req.body)
        if parsed is None:
            try:
                parsed = passthrough_request(req.body, req.path) if d.passthrough else parse_request(req.body, req.path)
            except EppError as err:
                raise self._fail(err) from err
        self.parsed = parsed
        headers = req.headers
        incoming = self.parsed.model
        target = headers.get(MODEL_REWRITE_HEADER) or incoming
        labels = d.model_labels
        rule = None
        if incoming and d.rewrites.rules:
            hit = d.rewrites.lookup(incoming)
            if hit is not None:
                rule, target = hit
        if target != incoming and self.parsed.data is not None:
            # Before any load is counted: a body the rewrite cannot mean the same to us and to
            # the server (a second "model" key) ends here, with nothing to release.
            try:
                self.routed_body = replace_model(req.body, target)
            except EppError as err:
                raise self._fail(err) from err
        self.incoming_model, self.target_model = incoming, target
        self.incoming_label, self.target_label = labels.label(incoming), labels.label(target)
        if rule is not None:
            d.metrics.model_rewrite_decisions.labels(rule, self.incoming_label, self.target_label).inc()
        self.priority = d.objectives.priority(headers.get(OBJECTIVE_HEADER) or headers.get(LLMD_OBJECTIVE_HEADER, ""))

    async def wait_to_route(self, retry: Callable[[], bool]) -> None:
        """A waiting request waits here until its wait is over; then `route()` returns how it
        ended (`retry` is the protocol's: flow control routes the request itself, see
        try_dispatch). A body being parsed in the worker waits for it."""
        if self.parsing is not None:
            await asyncio.wait((self.parsing,))  # its outcome, error included, is read by route()
            return
        if self.tokenizing is not None:
            await asyncio.wait((self.tokenizing,))  # never fails: [] when the server cannot say
            return
        if self.pending is not None:
            return
        ticket = self.ticket
        assert ticket is not None and ticket.done is not None
        await asyncio.shield(ticket.done)

    def waiting(self) -> bool:
        """In the waiting room (queued or parked), as opposed to a body being parsed."""
        t = self.ticket
        return t is not None and t.done is not None and not t.done.done()

    # ---- the waiting room's side (flowcontrol.ticket.Waiter) -----------------------------------

    def try_dispatch(self) -> bool:
        """Flow control says go (or the prefill gate rechecks): schedule now, keep the outcome
        for route(). False when the gate parks it again. Never raises: it runs inside another
        request's path (a completion, a first byte)."""
        req = self.req
        assert req is not None
        try:
            decision = self.route(req)
        except EppError as err:
            self.pending = err
            return True
        except Exception:
            log.exception("scheduling a waiting request failed")
            self.pending = self._fail(EppError(ErrorCode.INTERNAL, "internal error while scheduling"))
            return True
        if decision is None:
            return False
        self.pending = decision
        return True

    def evicted(self, err: EppError) -> None:
        self._unhold()
        self.pending = self._fail(err)

    async def route_when_released(self, req: IncomingRequest, held: bool = False) -> RouteDecision:
        """`route()`, waiting out any hold: for callers that answer a decision later (a worker
        asking the decision process) rather than hold a stream of their own. `held`: route()
        has just answered None for this request, so start by waiting."""
        outcome: list[RouteDecision | BaseException] = []

        def retry() -> bool:
            try:
                decision = self.route(req)
            except Exception as exc:
                outcome.append(exc)
                return True
            if decision is None:
                return False
            outcome.append(decision)
            return True

        if held or not retry():
            while not outcome:
                await self.wait_to_route(retry)
                if not outcome:
                    retry()
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _forget_held_demand(self) -> None:
        if self.held_at is not None:
            ep, tokens = self.held_at
            ep.inflight.held_tokens = max(0, ep.inflight.held_tokens - tokens)
            self.held_at = None

    def _unhold(self) -> None:
        self._forget_held_demand()
        if self.held_since is not None:
            m = self.d.metrics
            m.prefill_gate_held.dec()
            m.prefill_gate_hold.observe(time.monotonic() - self.held_since)
            self.held_since = None

    def _prefill_finished(self) -> None:
        self.prefill_pending = False
        flow = self.d.flow
        if self.long:
            self.long = False
            if self.gate is not None and flow.parked:
                flow.gate_released(self.d.datastore.endpoints())
        flow.kick()  # the server has room in its queue again

    def _candidates(self, req: IncomingRequest) -> list[Endpoint]:
        eps = self.d.datastore.endpoints()
        subset = req.subset
        if subset is not None and self.d.use_subset_hint:
            # Match ip:port when the hint has ports; a bare IP matches every port of that pod.
            wanted = set(subset)
            eps = tuple(e for e in eps if e.hostport in wanted or e.address in wanted)
        if not eps:
            raise self._fail(
                EppError(ErrorCode.SERVICE_UNAVAILABLE, "failed to find endpoint candidates for serving the request")
            )
        return list(self.d.reachability.usable(eps, time.monotonic()))

    @staticmethod
    def _request_id_header(req: IncomingRequest) -> list[tuple[str, str]]:
        if "x-request-id" in req.headers:
            return []
        rid = str(uuid.uuid4())
        req.headers["x-request-id"] = rid
        return [("x-request-id", rid)]

    @staticmethod
    def _removals(req: IncomingRequest) -> list[str]:
        h = req.headers
        return [k for k in CONTROL_HEADERS if k in h]

    def _fail(self, err: EppError) -> EppError:
        self.failed = True
        self.d.metrics.request_error_total.labels(self.incoming_label, self.target_label, err.code.value).inc()
        return err

    # ---- response path -----------------------------------------------------------------------

    def response_headers(self, headers: dict[str, str], served: str | None = None) -> ResponseHeadersDecision:
        return self.relay.headers(headers, served)

    def response_chunk(self, chunk: bytes, eos: bool) -> bytes | None:
        """The bytes to forward now (None: held for the model name write-back)."""
        if self.prefill_pending and chunk:
            self.first_byte()
        data = self.relay.chunk(chunk, eos)
        if eos:
            self.finish(completed=True)
        return data

    def _end_trace(self, completed: bool) -> None:
        trace = self.trace
        assert trace is not None
        self.trace = None
        if not trace.recording:  # sampled out: close the root, nothing to describe
            trace.end({})
            return
        status, usage, ep = self.relay.status, self.relay.usage, self.endpoint
        attrs: dict[str, str | int] = {"http.response.status_code": status}
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if ep is not None and trace.t_routed:
            trace.phase("epp.response", trace.t_routed, now_ns(), attrs)
        root = dict(attrs, **{"gen_ai.request.model": self.incoming_model, "gen_ai.response.model": self.target_model})
        if ep is not None:
            root["epp.endpoint"] = ep.hostport
        error = (
            None
            if completed and (not status or 200 <= status < 300)
            else ("aborted" if not completed else f"HTTP {status}")
        )
        trace.end(root, error)

    def first_byte(self) -> None:
        """The first response byte: the server has finished this request's prefill."""
        if self.prefill_pending and self.endpoint is not None:
            self.endpoint.inflight.prefill_done(self.tokens, self.long)
            self._prefill_finished()

    def finish(self, completed: bool) -> None:
        """Release in-flight load and record metrics, exactly once (stream end, abort or error)."""
        if self.closed:
            return
        self.closed = True
        if self.trace is not None:
            self._end_trace(completed)
        self._unhold()  # a held request whose client went away
        ticket = self.ticket
        if ticket is not None:
            d = self.d
            if ticket.done is not None and not ticket.done.done():
                d.flow.cancel(ticket)  # still waiting: it leaves the queue, nothing is counted
            elif completed and self.relay.usage is not None:
                u = self.relay.usage
                d.flow.served(ticket, u.prompt_tokens, u.completion_tokens)
        if self.parsing is not None:
            if self.parsing.done() and not self.parsing.cancelled():
                self.parsing.exception()  # retrieved: the client has gone, nobody will read it
            self.parsing.cancel()
            self.parsing = None
        if self.tokenizing is not None:
            self.tokenizing.cancel()
            self.tokenizing = None
        ep = self.endpoint
        if ep is None:
            if completed and self.result is None and self.relay.usage is not None:
                # A stream first seen at its response (a gateway that skips the request phases,
                # or a stream moved between replicas): nothing was routed or counted in flight
                # here, but its tokens were served and are counted, under the model labels the
                # EPP knows (none).
                self._record_usage(self.d.metrics.series(self.incoming_label, self.target_label), None)
            return
        ep.inflight.release(self.tokens, self.prefill_pending, self.long)
        self.d.flow.kick()
        relay = self.relay
        status = relay.status
        self.d.reachability.request_finished(ep, status, time.monotonic())
        if 200 <= status < 300:
            self.d.model_labels.confirmed(self.incoming_model)
        if self.prefill_pending:
            self._prefill_finished()
        m = self.d.metrics
        inc, tgt = self.incoming_label, self.target_label
        series = self.series
        assert series is not None  # set together with the endpoint
        series.running.dec()
        if status and not 200 <= status < 300:  # the model server answered with an error
            m.request_error_total.labels(inc, tgt, ErrorCode.MODEL_SERVER_ERROR.value).inc()
        if self.result is not None and self.sched_req is not None:
            # Plugins that count what is in flight must hear about aborts too (usage is None then).
            for plugin in self.d.scheduler.config.response_complete:
                try:
                    plugin.response_complete(self.sched_req, self.result, relay.usage if completed else None)
                except Exception:  # a plugin bug must not break the response path
                    log.exception("response-complete plugin %s failed", plugin.name)
        if not completed:
            return
        duration = time.monotonic() - self.start
        series.request_duration.observe(duration)
        series.response_sizes.observe(relay.size)
        self._record_usage(series, duration)

    def _record_usage(self, series: ObjectiveSeries, duration: float | None) -> None:
        """Token metrics from the response's usage; NTPOT only when the whole request was timed."""
        usage = self.relay.usage
        if usage is None:
            return
        if usage.prompt_tokens > 0:
            series.input_tokens.observe(usage.prompt_tokens)
        if usage.completion_tokens > 0:
            series.output_tokens.observe(usage.completion_tokens)
            if duration is not None:
                series.ntpot.observe(duration / usage.completion_tokens)
        series.prompt_cached_tokens.observe(usage.cached_tokens)
