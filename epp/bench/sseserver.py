"""A paced SSE backend for `epp-bench overhead --streaming`: real token streams at a set rate.

Every POST is answered like vLLM's streamed completion: `text/event-stream`, one `data:`
event per token written on its own (so each becomes one HTTP chunk, one Envoy body chunk and
one ext_proc message), a final event with `usage`, then `data: [DONE]`. Tokens come every
`--interval-ms` and each request gets `--chunks` of them (a request header `x-chunks`
overrides). GET /metrics answers a vLLM page so the EPP's scraper sees a healthy server.

Written on raw asyncio streams rather than a web framework, so the backend costs as little
CPU as it can on a 2-core box where the EPP, Envoy and the load generator share the cores.

    python -m epp.bench.sseserver --port 8400 --chunks 64 --interval-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from epp.datalayer.vllmpage import VllmState, vllm_page

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def token_event(i: int) -> bytes:
    return (
        b'data: {"id":"cmpl-bench","object":"text_completion","created":1,"model":"m","choices":'
        b'[{"index":0,"text":" tok%d","logprobs":null,"finish_reason":null}]}\n\n' % i
    )


def usage_event(n: int) -> bytes:
    return (
        b'data: {"id":"cmpl-bench","object":"text_completion","created":1,"model":"m","choices":[],'
        b'"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n, n + 12)
    )


class SseBackend:
    def __init__(self, chunks: int, interval: float) -> None:
        self.chunks = chunks
        self.interval = interval
        self.metrics = vllm_page(VllmState(running=1, kv_usage=0.1)).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    headers[k.strip().lower()] = v.strip()
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:  # Envoy streams a body it did not get a content-length for
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                else:
                    length = int(headers.get(b"content-length", b"0"))
                    if length:
                        await reader.readexactly(length)
                if method == b"GET" and path.startswith(b"/metrics"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(self.metrics), self.metrics)
                    )
                    continue
                n = int(headers.get(b"x-chunks", self.chunks))
                writer.write(_HEAD)
                for i in range(n):
                    await asyncio.sleep(self.interval)
                    writer.write(_chunk(token_event(i)))
                await asyncio.sleep(self.interval)
                writer.write(_chunk(usage_event(n) + b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (asyncio.LimitOverrunError, ValueError) as exc:
            print(f"bad request from the gateway, connection closed: {exc!r}", flush=True)
        finally:
            writer.close()


async def serve(host: str, port: int, chunks: int, interval: float) -> None:
    backend = SseBackend(chunks, interval)
    server = await asyncio.start_server(backend.handle, host, port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sse backend on http://{host}:{port} ({chunks} chunks every {interval * 1000:g} ms)", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--interval-ms", type=float, default=10.0)
    a = ap.parse_args()
    asyncio.run(serve(a.host, a.port, a.chunks, a.interval_ms / 1000))


if __name__ == "__main__":
    main()
