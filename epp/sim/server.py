"""One simulated vLLM server: an aiohttp app in front of an engine and its real-time driver.

Tokens reach HTTP handlers through a per-request TokenSink: the engine loop appends the
step's tokens and resolves one future; the handler wakes once per step, not per token,
and writes all the chunks it has in one write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from aiohttp import web

from epp.sim.anthropic import MessagesWriter, parse_messages
from epp.sim.costmodel import CostModel
from epp.sim.engine import FINISHED, Engine, EngineConfig, SimRequest, StepResult, TokenEvent
from epp.sim.hftokenizer import HFTokenizer
from epp.sim.kvevents import KVEventPublisher, offset_endpoint
from epp.sim.metrics import CONTENT_TYPE, MetricsRenderer
from epp.sim.protocol import DONE, ApiError, ParsedRequest, ResponseWriter, parse_request, usage_dict
from epp.sim.realtime import RealtimeDriver
from epp.sim.tokenizer import VOCAB_SIZE, OutputVocab, Tokenizer, natural_output_len, render_chat, request_key

log = logging.getLogger(__name__)


class PromptTokenizer(Protocol):
    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...


@dataclass(frozen=True)
class ReplicaConfig:
    index: int = 0
    host: str = "127.0.0.1"
    port: int = 8000  # 0 = any free port
    pod_name: str = "sim-0"
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    served_model_names: tuple[str, ...] = ()  # default: (model,)
    lora_modules: tuple[str, ...] = ()
    engine: EngineConfig = field(default_factory=EngineConfig)
    cost: CostModel = field(default_factory=CostModel)
    time_scale: float = 1.0
    engine_kind: str = "vllm"
    seed: int = 0
    fail_rate: float = 0.0
    natural_output_len: int = 256  # mean EOS position when ignore_eos is off
    kv_events_endpoint: str | None = None
    kv_events_connect: bool = False
    kv_events_topic: str = "kv@{host}:{port}@{model}"
    kv_events_format: str = "array"
    kv_events_replay_endpoint: str | None = None  # ROUTER; replica i binds PORT+i
    kv_events_buffer_steps: int = 10_000
    tokenizer_file: str | None = None  # a Hugging Face tokenizer.json for prompts (default: our own)
    lora_ids: tuple[tuple[str, int], ...] = ()  # adapter -> lora_int_id, shared across the fleet

    @property
    def names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.model,)


class TokenSink:
    __slots__ = ("buf", "waiter")

    def __init__(self) -> None:
        self.buf: list[TokenEvent] = []
        self.waiter: asyncio.Future[None] | None = None

    def push(self, ev: TokenEvent) -> None:
        self.buf.append(ev)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def take(self) -> list[TokenEvent]:
        if not self.buf:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        out, self.buf = self.buf, []
        return out


class SimServer:
    def __init__(
        self,
        cfg: ReplicaConfig,
        tokenizer: Tokenizer | None = None,
        vocab: OutputVocab | None = None,
        prompt_tokenizer: PromptTokenizer | None = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer or Tokenizer()
        self.vocab = vocab or OutputVocab(self.tokenizer)
        # Output tokens always come from our own vocabulary (pseudo-words of one token each);
        # prompts may be tokenized by a real tokenizer.json, which the EPP can load too.
        if prompt_tokenizer is None and cfg.tokenizer_file:
            prompt_tokenizer = HFTokenizer(cfg.tokenizer_file)
        self.prompt_tokenizer: PromptTokenizer = prompt_tokenizer or self.tokenizer
        self.engine = Engine(cfg.engine, cfg.cost, self.vocab.token, dict(cfg.lora_ids))
        self.metrics = MetricsRenderer(self.engine, cfg.names[0], cfg.engine_kind)
        self.port = cfg.port
        self.driver: RealtimeDriver | None = None
        self.publisher: KVEventPublisher | None = None
        self._runner: web.AppRunner | None = None
        self._rng = random.Random(cfg.seed * 1_000_003 + cfg.index)
        self._headers: dict[str, str] = {}
        self._by_id = self.vocab.by_id
        self.created = int(time.time())
        self._replay_task: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/v1/completions/render", self.render_completion)
        app.router.add_post("/v1/chat/completions/render", self.render_chat)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_handler)
        app.on_response_prepare.append(self._add_headers)
        return app

    async def start(self) -> None:
        self.driver = RealtimeDriver(self.engine, self.cfg.time_scale, self._on_step)
        # handler_cancellation: a client that hangs up cancels its handler, which aborts
        # the request in the engine and frees its KV blocks.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        server = site._server  # the only way to learn the port when binding port 0
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._headers = {"x-inference-pod": self.cfg.pod_name, "x-inference-port": str(self.port)}
        if self.cfg.kv_events_endpoint:
            ep = self.cfg.kv_events_endpoint
            if not self.cfg.kv_events_connect:
                ep = offset_endpoint(ep, self.cfg.index)
            topic = self.cfg.kv_events_topic.format(
                host=self.cfg.host, port=self.port, pod=self.cfg.pod_name, model=self.cfg.names[0]
            )
            replay = self.cfg.kv_events_replay_endpoint
            if replay:
                replay = offset_endpoint(replay, self.cfg.index)
            self.publisher = KVEventPublisher(
                ep,
                topic,
                self.cfg.kv_events_format,
                connect=self.cfg.kv_events_connect,
                replay_endpoint=replay,
                buffer_steps=self.cfg.kv_events_buffer_steps,
            )
            if replay:
                self._replay_task = asyncio.create_task(self._serve_replays())
        self.driver.start()

    async def _serve_replays(self) -> None:
        pub = self.publisher
        assert pub is not None
        while True:
            pub.serve_replays()
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            self._replay_task = None
        if self.driver is not None:
            await self.driver.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.publisher is not None:
            self.publisher.close()

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    # ---- engine -> streams ---------------------------------------------------------------

    def _on_step(self, res: StepResult) -> None:
        for ev in res.tokens:
            sink = ev.request.handle
            if sink is not None:
                sink.push(ev)
        if self.publisher is not None and res.kv_events:
            self.publisher.publish(res.kv_events)

    # ---- handlers ------------------------------------------------------------------------

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(self._headers)
        # What a traced model server would parent its spans on, shown to the client for tests.
        traceparent = request.headers.get("traceparent")
        if traceparent:
            response.headers["x-sim-traceparent"] = traceparent

    def _error(self, e: ApiError) -> web.Response:
        return web.Response(status=e.status, body=e.body(), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        perm = [
            {
                "id": "modelperm-sim",
                "object": "model_permission",
                "created": self.created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ]
        data = [
            {
                "id": n,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.cfg.model,
                "parent": None,
                "max_model_len": self.cfg.engine.max_model_len,
                "permission": perm,
            }
            for n in self.cfg.names
        ]
        data += [
            {
                "id": a,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": f"/adapters/{a}",
                "parent": self.cfg.names[0],
                "max_model_len": None,
                "permission": perm,
            }
            for a in self.cfg.lora_modules
        ]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True, anthropic=True)

    def _prepare(self, p: ParsedRequest) -> SimRequest:
        cfg = self.cfg
        if p.model in cfg.names:
            lora = None
        elif p.model in cfg.lora_modules:
            lora = p.model
        else:
            raise ApiError(404, f"The model `{p.model}` does not exist.", param="model")
        if cfg.fail_rate > 0 and self._rng.random() < cfg.fail_rate:
            raise ApiError(500, "Simulated failure (--fail-rate).")
        ids = self._prompt_ids(p)
        n = len(ids)
        limit = cfg.engine.max_model_len
        if p.max_tokens is None:
            if n >= limit:
                raise ApiError(
                    400,
                    f"This model's maximum context length is {limit} tokens. "
                    f"However, your request has {n} input tokens. "
                    "Please reduce the length of the input messages.",
                )
            max_tokens = limit - n
        else:
            max_tokens = p.max_tokens
            if n + max_tokens > limit:
                raise ApiError(
                    400,
                    f"This model's maximum context length is {limit} tokens. "
                    f"However, you requested {n + max_tokens} tokens "
                    f"({n} in the messages, {max_tokens} in the completion). "
                    "Please reduce the length of the messages or completion.",
                )
        key = request_key(cfg.seed, ids)
        if p.ignore_eos:
            out_len, reason = max_tokens, "length"
        else:
            natural = natural_output_len(key, cfg.natural_output_len)
            out_len, reason = (natural, "stop") if natural < max_tokens else (max_tokens, "length")
        rid = ("chatcmpl-" if p.chat else "cmpl-") + os.urandom(16).hex()
        return SimRequest(rid, ids, max_tokens, output_len=out_len, lora=lora, output_key=key, finish_reason=reason)

    def _prompt_ids(self, p: ParsedRequest) -> list[int]:
        if p.chat:
            return self.prompt_tokenizer.encode(render_chat(p.messages or []))
        if p.prompt_token_ids is not None:
            ids = p.prompt_token_ids
            if any(t < 0 or t >= VOCAB_SIZE for t in ids):
                raise ApiError(400, f"Token id out of vocabulary (size {VOCAB_SIZE}).", param="prompt")
            return ids
        # vLLM prepends BOS to completion prompts for Llama tokenizers.
        return self.prompt_tokenizer.encode(p.prompt_text or "", add_bos=True)

    # ---- tokenization endpoints (vLLM's /tokenize and the render endpoints) -------------------

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's POST /tokenize: {"model", "prompt"} or {"model", "messages"} -> {"count",
        "max_model_len", "tokens"} — the tokens the same request would be prefilled with."""
        try:
            raw = await request.read()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise ApiError(400, f"Invalid JSON body: {e}") from None
            chat = isinstance(body, dict) and "messages" in body
            ids = self._render_ids(raw, chat)
        except ApiError as e:
            return self._error(e)
        return web.Response(
            body=orjson.dumps(
                {"count": len(ids), "max_model_len": self.cfg.engine.max_model_len, "tokens": ids, "token_strs": None}
            ),
            content_type="application/json",
        )

    async def render_completion(self, request: web.Request) -> web.Response:
        return await self._render(request, chat=False)

    async def render_chat(self, request: web.Request) -> web.Response:
        return await self._render(request, chat=True)

    async def _render(self, request: web.Request, chat: bool) -> web.Response:
        try:
            ids = self._render_ids(await request.read(), chat)
        except ApiError as e:
            return self._error(e)
        return web.Response(body=orjson.dumps({"token_ids": ids, "count": len(ids)}), content_type="application/json")

    def _render_ids(self, raw: bytes, chat: bool) -> list[int]:
        p = parse_request(raw, chat)
        if p.model not in self.cfg.names and p.model not in self.cfg.lora_modules:
            raise ApiError(404, f"The model `{p.model}` does not exist.", param="model")
        return self._prompt_ids(p)

    async def _generate(self, request: web.Request, chat: bool, anthropic: bool = False) -> web.StreamResponse:
        driver = self.driver
        assert driver is not None
        try:
            raw = await request.read()
            p = parse_messages(raw) if anthropic else parse_request(raw, chat)
            req = self._prepare(p)
        except ApiError as e:
            return self._error(e)
        arrival = driver.now_sim()
        sink = TokenSink()
        req.handle = sink
        submitted = False
        try:
            delay = self.cfg.cost.frontend_latency * self.cfg.time_scale
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                driver.submit(req, arrival)
            except ValueError as e:
                return self._error(ApiError(400, str(e)))
            submitted = True
            if anthropic:
                return await self._messages_response(request, p, req, sink)
            writer = ResponseWriter(chat, req.request_id, p.model)
            if p.stream:
                return await self._stream(request, p, req, sink, writer)
            texts: list[str] = []
            by_id = self._by_id
            while True:
                evs = await sink.take()
                texts.extend(by_id[ev.token_id].text for ev in evs)
                if evs[-1].finished:
                    break
            usage = usage_dict(req.num_prompt_tokens, req.num_output_tokens, max(0, req.num_cached_tokens))
            return web.Response(
                body=writer.full("".join(texts), req.finish_reason, usage), content_type="application/json"
            )
        finally:
            if submitted and req.status != FINISHED:
                driver.abort(req.request_id)

    async def _messages_response(
        self, request: web.Request, p: ParsedRequest, req: SimRequest, sink: TokenSink
    ) -> web.StreamResponse:
        """/v1/messages: one JSON message, or its event stream (epp/sim/anthropic.py)."""
        writer = MessagesWriter(p.model)
        by_id = self._by_id
        if not p.stream:
            texts: list[str] = []
            while True:
                evs = await sink.take()
                texts.extend(by_id[ev.token_id].text for ev in evs)
                if evs[-1].finished:
                    break
            body = writer.full(
                "".join(texts),
                req.finish_reason,
                req.num_prompt_tokens,
                req.num_output_tokens,
                max(0, req.num_cached_tokens),
            )
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        first = True
        while True:
            evs = await sink.take()
            parts: list[bytes] = []
            if first:
                parts.append(writer.start(req.num_prompt_tokens, max(0, req.num_cached_tokens)))
                first = False
            parts += [writer.token(by_id[ev.token_id].json) for ev in evs]
            done = evs[-1].finished
            if done:
                parts.append(writer.end(req.finish_reason, req.num_output_tokens))
            try:
                await resp.write(b"".join(parts))
            except (ConnectionError, RuntimeError):
                return resp  # client went away; the finally in _generate aborts
            if done:
                break
        await resp.write_eof()
        return resp

    async def _stream(
        self, request: web.Request, p: ParsedRequest, req: SimRequest, sink: TokenSink, writer: ResponseWriter
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        by_id = self._by_id
        first = True
        while True:
            evs = await sink.take()
            parts: list[bytes] = []
            if first and p.chat:
                parts.append(writer.role_chunk())
            first = False
            done = evs[-1].finished
            last = len(evs) - 1
            for i, ev in enumerate(evs):
                parts.append(
                    writer.token_chunk(by_id[ev.token_id].json, req.finish_reason if (done and i == last) else None)
                )
            if done:
                if p.include_usage:
                    parts.append(
                        writer.usage_chunk(
                            usage_dict(req.num_prompt_tokens, req.num_output_tokens, max(0, req.num_cached_tokens))
                        )
                    )
                parts.append(DONE)
            try:
                await resp.write(b"".join(parts))
            except (ConnectionError, RuntimeError):
                return resp  # client went away; the finally in _generate aborts
            if done:
                break
        await resp.write_eof()
        return resp
