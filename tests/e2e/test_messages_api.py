"""Anthropic's Messages API (/v1/messages) through real Envoy + the EPP to epp-sim: routed with
prefix affinity on its system prompt, usage recorded from its event stream and its JSON body."""

from __future__ import annotations

import re

import httpx
import orjson

from tests.e2e.conftest import MODEL

SYSTEMS = [f"You are assistant number {k}. " + f"Rule {k}: answer briefly and precisely. " * 80 for k in range(3)]


def _usage_from_stream(text: str) -> tuple[int, int, int]:
    """(input incl. cache reads, cache reads, output) from the message_start and message_delta events."""
    events = [orjson.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    assert "content_block_delta" in kinds
    start = events[0]["message"]["usage"]
    return (
        start["input_tokens"] + start["cache_read_input_tokens"],
        start["cache_read_input_tokens"],
        events[-2]["usage"]["output_tokens"],
    )


def _histogram(metrics: str, name: str) -> tuple[float, float]:
    count = sum(float(m) for m in re.findall(rf"^{name}_count\{{[^}}]*\}} (\S+)$", metrics, re.M))
    total = sum(float(m) for m in re.findall(rf"^{name}_sum\{{[^}}]*\}} (\S+)$", metrics, re.M))
    return count, total


def test_messages_are_routed_by_their_system_prompt_and_their_usage_is_recorded(sim_fleet, epp_server, envoy):
    fleet = sim_fleet(4, time_scale="0.2")
    epp = epp_server(fleet.hostports)
    gw = envoy("original-dst", epp)
    pods: dict[int, set[str]] = {k: set() for k in range(len(SYSTEMS))}
    expected_in = expected_out = 0
    cached_later = []
    before = epp.metrics()  # the fixture's own routability probe is counted already
    with httpx.Client(timeout=60) as c:
        for turn in range(3):
            for k, system in enumerate(SYSTEMS):
                body = {
                    "model": MODEL,
                    "max_tokens": 8,
                    "system": system,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": f"Question {turn}?"}]}],
                    "stream": turn != 1,  # one round as a JSON body, two as event streams
                }
                r = c.post(f"{gw.url}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
                assert r.status_code == 200, r.text
                pods[k].add(r.headers["x-inference-pod"])
                if body["stream"]:
                    assert r.headers["content-type"].startswith("text/event-stream")
                    prompt, cached, out = _usage_from_stream(r.text)
                else:
                    u = r.json()["usage"]
                    assert r.json()["type"] == "message" and r.json()["content"][0]["type"] == "text"
                    prompt, cached, out = (
                        u["input_tokens"] + u["cache_read_input_tokens"],
                        u["cache_read_input_tokens"],
                        u["output_tokens"],
                    )
                assert out == 8 and prompt > 700
                expected_in += prompt
                expected_out += out
                if turn > 0:
                    cached_later.append(cached / prompt)
    # Prefix affinity: every request with the same system prompt went to one server, which then
    # held it (its cache reads cover the system prompt, not just a few blocks).
    assert all(len(p) == 1 for p in pods.values()), pods
    assert min(cached_later) > 0.9, cached_later
    after = epp.metrics()
    for name, total in (
        ("inference_objective_input_tokens", expected_in),
        ("inference_objective_output_tokens", expected_out),
    ):
        (c0, s0), (c1, s1) = _histogram(before, name), _histogram(after, name)
        assert (c1 - c0, s1 - s0) == (9.0, float(total)), name
