"""End to end: client -> real Envoy -> (ext_proc) our EPP -> epp-sim servers, both Envoy configs."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import orjson
import pytest

from tests.e2e.conftest import MODEL

KINDS = ["original-dst", "override-host"]


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


@pytest.fixture(params=KINDS)
def stack(request, sim_fleet, epp_server, envoy):
    fleet = sim_fleet(2)
    epp = epp_server(fleet.hostports)
    gw = envoy(request.param, epp, fleet.hostports)
    return fleet, epp, gw


def test_completions_and_chat_streaming_and_not(stack):
    _fleet, epp, gw = stack
    pods = set()
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "Say hi", "max_tokens": 5, "ignore_eos": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion" and body["model"] == MODEL
        assert body["usage"]["completion_tokens"] == 5
        pods.add(r.headers["x-inference-pod"])

        r = c.post(
            "/v1/chat/completions",
            json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello there"}]},
        )
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        assert r.json()["choices"][0]["message"]["role"] == "assistant"

        for path, payload in [
            ("/v1/completions", {"prompt": "Stream me"}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Stream me"}]}),
        ]:
            with c.stream(
                "POST",
                path,
                json={
                    "model": MODEL,
                    "max_tokens": 6,
                    "stream": True,
                    "ignore_eos": True,
                    "stream_options": {"include_usage": True},
                    **payload,
                },
            ) as s:
                assert s.status_code == 200
                assert s.headers["content-type"].startswith("text/event-stream")
                events = sse_events(s.read().decode())
            assert events[-1] == "[DONE]"
            objs = [orjson.loads(e) for e in events[:-1]]
            assert objs[-1]["usage"]["completion_tokens"] == 6
    assert pods <= {"sim-0", "sim-1"} or all(p.startswith("sim") for p in pods)
    # The EPP saw the responses: usage reached its token histograms.
    assert f'inference_objective_output_tokens_sum{{model_name="{MODEL}",target_model_name="{MODEL}"}}' in epp.metrics()


def test_4mb_body_passes_intact(stack):
    fleet, _epp, gw = stack
    blob = "".join(f"{i:08d}" for i in range(512 * 1024))  # 4 MiB of distinct digits
    payload = {"model": MODEL, "prompt": "short prompt", "max_tokens": 2, "user": blob}
    r = httpx.post(
        f"{gw.url}/v1/completions",
        content=orjson.dumps(payload),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:300]
    direct = httpx.post(f"http://{fleet.hostports[0]}/v1/completions", json=payload, timeout=60).json()
    assert r.json()["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]


def test_model_rewrite_is_seen_by_the_server_and_undone_for_the_client(stack):
    _fleet, _epp, gw = stack
    r = httpx.post(
        f"{gw.url}/v1/completions",
        json={"model": "my-alias", "prompt": "hi", "max_tokens": 2},
        headers={"x-gateway-model-name-rewrite": MODEL},
        timeout=30,
    )
    # The simulator 404s unknown models, so a 200 proves it received the rewritten name.
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "my-alias"
    r = httpx.post(f"{gw.url}/v1/completions", json={"model": "my-alias", "prompt": "hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 404


def test_invalid_json_is_400_at_the_client(stack):
    _fleet, _epp, gw = stack
    r = httpx.post(
        f"{gw.url}/v1/completions",
        content=b'{"model": "x", "prompt": ',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.text.startswith("inference error: BadRequest - ")


def test_subset_metadata_is_honoured(sim_fleet, epp_server, envoy):
    fleet = sim_fleet(3)
    epp = epp_server(fleet.hostports)

    def add_subset_filter(conf):
        hcm = conf["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.header_to_metadata",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                    "request_rules": [
                        {
                            "header": "x-subset",
                            "remove": True,
                            "on_header_present": {
                                "metadata_namespace": "envoy.lb.subset_hint",
                                "key": "x-gateway-destination-endpoint-subset",
                                "type": "STRING",
                            },
                        }
                    ],
                },
            },
        )

    gw = envoy("override-host", epp, fleet.hostports, mutate=add_subset_filter)
    target = fleet.hostports[2]
    for i in range(8):
        r = httpx.post(
            f"{gw.url}/v1/completions",
            json={"model": MODEL, "prompt": f"p{i}", "max_tokens": 1},
            headers={"x-subset": target},
            timeout=30,
        )
        assert r.status_code == 200 and r.headers["x-inference-port"] == target.split(":")[1]


def test_routing_follows_load(sim_fleet, epp_server, envoy):
    fleet = sim_fleet(2, "--max-num-seqs", "2")
    epp = epp_server(fleet.hostports)
    gw = envoy("original-dst", epp)
    busy, idle = fleet.ports
    # Make server 0 busy from outside the gateway: long generations queue behind 2 slots.
    pool = concurrent.futures.ThreadPoolExecutor(8)
    hogs = [
        pool.submit(
            httpx.post,
            f"http://127.0.0.1:{busy}/v1/completions",
            json={"model": MODEL, "prompt": f"hog {i}", "max_tokens": 3000, "ignore_eos": True},
            timeout=120,
        )
        for i in range(6)
    ]
    deadline = time.monotonic() + 10
    while fleet.metric(0, "vllm:num_requests_waiting") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few scrape intervals
    ports = [
        httpx.post(
            f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": f"question {i}", "max_tokens": 2}, timeout=30
        ).headers["x-inference-port"]
        for i in range(10)
    ]
    assert ports == [str(idle)] * 10
    for h in hogs:
        h.cancel()
    pool.shutdown(wait=False, cancel_futures=True)


def test_epp_restart_while_envoy_keeps_running(sim_fleet, epp_server, envoy):
    fleet = sim_fleet(2)
    epp = epp_server(fleet.hostports)
    gw = envoy("original-dst", epp)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    assert httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30).status_code == 200
    epp.proc.kill()
    r = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30)
    assert r.status_code >= 500  # FailClose: no EPP, no routing
    epp.proc.start()
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        status = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30).status_code
        if status == 200:
            break
        time.sleep(0.25)
    assert status == 200
    ok = sum(httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30).status_code == 200 for _ in range(10))
    assert ok == 10


def test_tls_is_required_between_envoy_and_epp(sim_fleet, epp_server, envoy):
    fleet = sim_fleet(1)
    plaintext_epp = epp_server(fleet.hostports, tls=False)
    gw = envoy("original-dst", plaintext_epp, epp_tls=True, wait=False)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    # Envoy speaks TLS to the EPP; a plaintext EPP cannot answer, and FailClose turns that into a 500.
    assert httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30).status_code == 500
    # The same EPP, with Envoy told it is plaintext, works: the failure above was the TLS mismatch.
    gw2 = envoy("original-dst", plaintext_epp, epp_tls=False)
    assert httpx.post(f"{gw2.url}/v1/completions", json=body, timeout=30).status_code == 200


def test_override_host_fails_open_when_the_epp_is_down(sim_fleet, epp_server, envoy):
    """FailOpen with FULL_DUPLEX_STREAMED only holds while no body chunk has reached the ext_proc
    stream (Envoy #41276); a POST races with the refused connection, a bodyless GET does not."""
    fleet = sim_fleet(2)
    epp = epp_server(fleet.hostports)
    gw = envoy("override-host", epp, fleet.hostports)
    epp.proc.kill()
    time.sleep(0.5)
    rs = [httpx.get(f"{gw.url}/v1/models", timeout=30) for _ in range(6)]
    assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
    assert {r.headers["x-inference-port"] for r in rs} == {str(p) for p in fleet.ports}  # round-robin fallback
