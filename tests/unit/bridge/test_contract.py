"""The HTTP picker contract: which headers reach the EPP, and what NGINX gets back."""

from __future__ import annotations

from epp.bridge.contract import BRIDGE_ERROR, DESTINATION, FALLBACKS, Cause, PickOutcome, request_headers


def test_headers_lower_cased_hop_by_hop_and_contract_headers_dropped():
    h = request_headers(
        [
            ("Content-Type", "application/json"),
            ("X-EPP-Host", "epp"),
            ("X-EPP-Port", "9002"),
            ("Connection", "keep-alive"),
            ("Content-Length", "12"),
            ("Host", "gw.example"),
            ("X-Original-Method", "PUT"),
            ("Accept", "a"),
            ("accept", "b"),
        ],
        "POST",
        "/",
    )
    assert h == {
        "content-type": "application/json",
        "host": "gw.example",
        "accept": "a, b",
        ":method": "PUT",
        ":scheme": "http",
        ":authority": "gw.example",
    }


def test_path_from_x_original_path_else_the_request_path_unless_bare_root():
    assert (
        request_headers([("X-Original-Path", "/v1/chat/completions?x=1")], "POST", "/")[":path"]
        == "/v1/chat/completions?x=1"
    )
    assert request_headers([], "POST", "/v1/completions")[":path"] == "/v1/completions"
    # NGF's epp.js always fetches "/": no path, so the EPP infers the API from the body.
    assert ":path" not in request_headers([], "POST", "/")
    assert request_headers([], "GET", "/")[":method"] == "GET"


def test_list_destination_gives_one_endpoint_and_fallbacks():
    o = PickOutcome.picked("10.0.0.1:8000, 10.0.0.2:8000,10.0.0.3:8000")
    assert (o.status, o.endpoint, o.fallbacks) == (200, "10.0.0.1:8000", ["10.0.0.2:8000", "10.0.0.3:8000"])
    assert o.headers()[DESTINATION] == "10.0.0.1:8000"
    assert o.headers()[FALLBACKS] == "10.0.0.2:8000,10.0.0.3:8000"
    assert FALLBACKS not in PickOutcome.picked("[fd00::1]:8000").headers()


def test_empty_destination_is_503_no_endpoint():
    o = PickOutcome.picked(" , ")
    assert (o.status, o.cause) == (503, Cause.NO_ENDPOINT)
    assert o.headers()[BRIDGE_ERROR] == "no_endpoint"


def test_immediate_response_keeps_the_epp_status_and_is_not_marked_as_a_bridge_error():
    o = PickOutcome.immediate(429, b"shed")
    assert (o.status, o.body) == (429, b"shed")
    assert BRIDGE_ERROR not in o.headers()
    assert PickOutcome.immediate(0, b"").status == 500


def test_bridge_failure_statuses():
    assert PickOutcome.failed(Cause.MISSING_HEADERS, "m").status == 400
    assert PickOutcome.failed(Cause.UNREACHABLE, "u").status == 502
    assert PickOutcome.failed(Cause.TIMEOUT, "t").status == 504
    assert PickOutcome.failed(Cause.TOO_LARGE, "b").status == 413
