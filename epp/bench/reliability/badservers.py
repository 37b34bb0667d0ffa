"""Model servers that misbehave on purpose, one child process serving many ports (127.0.0.1).

    python -m epp.bench.reliability.badservers pages --ports 20000-20999
    python -m epp.bench.reliability.badservers endless --ports 20000
    python -m epp.bench.reliability.badservers big --ports 20000,20001 --big-mb 80

Every port answers /v1/completions (and chat) with a small JSON completion, with the
`x-inference-port` header epp-sim sends. `/metrics` is a realistic vLLM page (vllmpage.py),
except in `endless` mode: a page that never ends, line after valid line. In `big` mode
`/v1/embeddings` answers one non-streamed JSON body of `--big-mb` megabytes, usage at its end
(an embeddings batch). A separate process, so the server's CPU is never counted as the EPP's
and a stage can stop it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import orjson
from aiohttp import web

from epp.datalayer.vllmpage import VllmState, vllm_page

COMPLETION = orjson.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": "ok", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
)


def parse_ports(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def big_body(mb: int) -> bytes:
    row = b'{"object":"embedding","index":0,"embedding":[' + b"0.0123456," * 100 + b"0.1]},"
    rows = mb * 1_000_000 // len(row) + 1
    return (
        b'{"object":"list","model":"m","data":[' + row * rows + b'{"object":"embedding","index":1,"embedding":[]}]'
        b',"usage":{"prompt_tokens":1000,"total_tokens":1000}}'
    )


def app(mode: str, ports: list[int], big_mb: int) -> web.Application:
    pages = {
        p: vllm_page(VllmState(waiting=i % 3, running=i % 5, kv_usage=(i % 10) / 20), seed=i).encode()
        for i, p in enumerate(ports)
    }
    big = big_body(big_mb) if mode == "big" else b""

    def port_of(request: web.Request) -> int:
        return request.transport.get_extra_info("sockname")[1]

    async def metrics(request: web.Request) -> web.StreamResponse:
        if mode != "endless":
            return web.Response(body=pages[port_of(request)], content_type="text/plain")
        resp = web.StreamResponse(headers={"content-type": "text/plain; version=0.0.4"})
        await resp.prepare(request)
        page = pages[port_of(request)]
        line = 0
        while True:  # until the scraper gives up and closes the connection
            await resp.write(page)
            await resp.write(b"".join(b'filler_series{n="%d"} 1\n' % (line + i) for i in range(2000)))
            line += 2000

    async def completion(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=COMPLETION, content_type="application/json", headers={"x-inference-port": str(port_of(request))}
        )

    async def embeddings(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=big or COMPLETION, content_type="application/json", headers={"x-inference-port": str(port_of(request))}
        )

    a = web.Application(client_max_size=64 << 20)
    a.router.add_get("/metrics", metrics)
    a.router.add_post("/v1/completions", completion)
    a.router.add_post("/v1/chat/completions", completion)
    a.router.add_post("/v1/embeddings", embeddings)
    return a


async def serve(mode: str, ports: list[int], big_mb: int) -> None:
    runner = web.AppRunner(app(mode, ports, big_mb), access_log=None)
    await runner.setup()
    for p in ports:
        await web.TCPSite(runner, "127.0.0.1", p, backlog=1024).start()
    print(f"serving {mode} on {len(ports)} ports", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("pages", "endless", "big"))
    ap.add_argument("--ports", required=True, help="comma-separated ports or ranges (a-b)")
    ap.add_argument("--big-mb", type=int, default=80)
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.mode, parse_ports(args.ports), args.big_mb))


if __name__ == "__main__":
    main()
