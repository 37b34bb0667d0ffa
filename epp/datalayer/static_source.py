"""`--static-endpoints`: a fixed list of model servers, so the EPP runs with no cluster.

Syntax: `host:port[@engine][,host:port[@engine]...]`
- `host` is an IPv4 address, a hostname, or a bracketed IPv6 address (`[::1]:8000`);
- `@engine` optionally names the metrics mapping (vllm, sglang, trtllm-serve,
  triton-tensorrt-llm); default vllm;
- metrics are scraped from `http://host:port/metrics`;
- the endpoint's name is `host:port` (IPv6 bracketed), which is also what the gateway is
  sent in `x-gateway-destination-endpoint`.
Examples: `10.0.0.5:8000`, `10.0.0.5:8000,10.0.0.6:8000@sglang`, `[fd00::1]:8000@vllm`.
Blank items (a trailing comma) are ignored; anything else malformed raises ValueError naming
the item.
"""

from __future__ import annotations

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.engines import DEFAULT_ENGINE, ENGINES


def _parse_item(item: str) -> Endpoint:
    target, sep, engine = item.partition("@")
    engine = engine.strip()
    if sep and not engine:
        raise ValueError(f"static endpoint {item!r}: empty engine after '@'")
    if engine and engine not in ENGINES:
        raise ValueError(f"static endpoint {item!r}: unknown engine {engine!r} (known: {', '.join(sorted(ENGINES))})")
    if target.startswith("["):
        close = target.find("]")
        if close < 0 or target[close + 1 : close + 2] != ":":
            raise ValueError(f"static endpoint {item!r}: expected [ipv6]:port")
        host, port_text = target[1:close], target[close + 2 :]
        if not host or ":" not in host:
            raise ValueError(f"static endpoint {item!r}: brackets are only for IPv6 addresses")
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep or not host:
            raise ValueError(f"static endpoint {item!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"static endpoint {item!r}: write IPv6 addresses as [addr]:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"static endpoint {item!r}: port must be 1-65535, got {port_text!r}")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"static endpoint {item!r}: invalid host {host!r}")
    port = int(port_text)
    ep = Endpoint(name="", address=host, port=port, engine=engine or DEFAULT_ENGINE)
    ep.name = ep.hostport
    return ep


def parse_static_endpoints(spec: str) -> list[Endpoint]:
    """Parse the flag value; raises ValueError naming the first bad (or duplicate) item."""
    eps: list[Endpoint] = []
    seen: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        ep = _parse_item(item)
        if ep.name in seen:
            raise ValueError(f"static endpoint {item!r}: {ep.name} is listed twice")
        seen.add(ep.name)
        eps.append(ep)
    if not eps:
        raise ValueError(f"--static-endpoints {spec!r}: no endpoints given")
    return eps


def load_static_endpoints(datastore: Datastore, spec: str) -> list[Endpoint]:
    """Fill `datastore` with exactly the listed endpoints and mark it synced."""
    eps = parse_static_endpoints(spec)
    datastore.replace_all(eps)
    return eps
