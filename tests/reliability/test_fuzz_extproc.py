"""Fuzzed ext_proc streams over real gRPC cost only their own stream (issue 13).

2,000 hypothesis-generated streams (epp/bench/reliability/fuzzstreams.py: Envoy-shaped, mangled
and any-order message sequences; random flags, body modes, header maps, subset hints; valid,
duplicate-key, deep, huge and invalid bodies; garbage bytes as messages; streams cancelled
mid-way) against an in-process EPP whose static endpoints are a real epp-sim fleet, scraped
at the default interval. Each stream must end within a bound, and every message the EPP sends
must be a valid ProcessingResponse (never the servicer's catch-all 500), or the stream must
end with a gRPC status a hostile client deserves. Afterwards no endpoint has in-flight load,
the running-requests gauge is 0, nothing was logged as an error, and a well-formed request
is still routed. Derandomized, so CI always sends the same streams;
`make bench-reliability` sends 20,000 more with other seeds.
"""

from __future__ import annotations

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, Phase, example, given, settings

from epp.bench.reliability.fuzz import FuzzTally, InProcessEpp
from epp.bench.reliability.fuzzstreams import FuzzStream, fuzz_streams
from epp.bench.reliability.stack import MODEL, Stack
from tests.support.extproc_client import request_body, request_headers, response_body, response_headers

EXAMPLES = 2000
BOUND_S = 10.0  # a stream still open this long after its last message is a hang


def _wire(*messages: pb.ProcessingRequest) -> tuple[bytes, ...]:
    return tuple(m.SerializeToString() for m in messages)


def _completion(raw: bytes | None = None) -> bytes:
    return raw or orjson.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 2})


# The orders and bodies issue 13 found, always among the examples.
RESPONSE_BEFORE_REQUEST = FuzzStream(
    _wire(
        response_headers({":status": "200"}),
        response_body(b"{}", eos=True),
        request_headers(),
        request_body(_completion()),
    ),
    None,
    False,
)
DUPLICATE_MODEL_UNDER_REWRITE = FuzzStream(
    _wire(
        request_headers(extra={"x-gateway-model-name-rewrite": "other-model"}),
        request_body(b'{"model":"a","prompt":"hi","model":"b"}'),
    ),
    None,
    False,
)
CANCELLED_AFTER_THE_PICK = FuzzStream(
    _wire(request_headers(), request_body(_completion()), response_headers({":status": "200"})), 2, True
)
GARBAGE_FIRST = FuzzStream((b"\xff" * 16, *_wire(request_headers(), request_body(_completion()))), None, False)


@pytest.fixture(scope="module")
def fleet_and_epp(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("fuzz")) as st:
        sims = st.sims(2)
        target = InProcessEpp(sims.hostports).start()
        try:
            yield sims, target
        finally:
            target.close()


@pytest.mark.timeout(240)
def test_fuzzed_streams_end_cleanly_and_leave_nothing_counted(fleet_and_epp):
    sims, target = fleet_and_epp
    tally = FuzzTally()

    @example(RESPONSE_BEFORE_REQUEST)
    @example(DUPLICATE_MODEL_UNDER_REWRITE)
    @example(CANCELLED_AFTER_THE_PICK)
    @example(GARBAGE_FIRST)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(fuzz_streams())
    def one(stream: FuzzStream) -> None:
        out = target.run(stream, BOUND_S)
        tally.add(stream, out)
        assert not out.problems, tally.failures[-1]

    one()

    assert tally.streams >= 2000, tally
    # The fuzz reached both the routing path (picks add in-flight load) and the edges.
    assert target.picks() > 300 and tally.cancelled > 200 and tally.grpc_codes.get("INVALID_ARGUMENT", 0) > 20, (
        target.picks(),
        tally,
    )
    print(
        f"{tally.streams} streams, {target.picks()} picks, codes {tally.grpc_codes}, immediate {tally.immediate}, slowest {tally.slowest_s:.2f} s"
    )
    acc = target.settled()
    assert acc.clean, f"load still counted after every stream ended: {acc}"
    assert target.errors() == []
    assert target.route_one() in sims.hostports
