"""N independent simulated servers in one asyncio process.

Replicas share nothing but the tokenizer tables (read-only) and the event loop; each has
its own engine, KV cache, driver task, HTTP port and KV-event socket.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from epp.sim.hftokenizer import HFTokenizer
from epp.sim.server import ReplicaConfig, SimServer
from epp.sim.tokenizer import OutputVocab, Tokenizer


class Fleet:
    def __init__(self, configs: list[ReplicaConfig]) -> None:
        tok = Tokenizer()
        vocab = OutputVocab(tok)
        files = {c.tokenizer_file for c in configs if c.tokenizer_file}
        prompt = {f: HFTokenizer(f) for f in files}
        self.servers = [SimServer(c, tok, vocab, prompt.get(c.tokenizer_file or "")) for c in configs]

    async def start(self, announce: TextIO | None = sys.stdout) -> None:
        started: list[SimServer] = []
        try:
            for s in self.servers:
                await s.start()
                started.append(s)
        except BaseException:
            for s in started:
                await s.stop()
            raise
        if announce is not None:
            # One line per replica, then a summary: parents wait for these lines.
            for s in self.servers:
                print(f"listening on {s.url} as {s.cfg.pod_name}", file=announce)
            print(f"epp-sim ready: {len(self.servers)} replicas", file=announce, flush=True)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]
