"""The grpc.aio ExternalProcessor servicer: drives one StreamState per stream."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf.message import DecodeError

from epp.errors import EppError, ErrorCode
from epp.extproc.stream import Exchange, StreamState, error_response
from epp.observability.logs import RateLimitedLog

log = logging.getLogger("epp.extproc")
# Anyone who reaches the port can send these; one line per 10 s, with a count of the rest.
_corrupt_log = RateLimitedLog(log)
_internal_log = RateLimitedLog(log)

DEFAULT_MAX_BODY = 64 * 1024 * 1024


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, new_exchange: Callable[[], Exchange], max_body: int = DEFAULT_MAX_BODY) -> None:
        self.new_exchange = new_exchange
        self.max_body = max_body
        self.active_streams = 0
        self.last_activity = 0.0  # monotonic time of the last stream start or end, for the drain

    async def Process(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        state = StreamState(self.new_exchange(), self.max_body)
        self.active_streams += 1
        self.last_activity = time.monotonic()
        read, write = context.read, context.write
        try:
            while True:
                try:
                    req = await read()
                except DecodeError:
                    _corrupt_log.warning(
                        "ext_proc stream from %s sent a message that is not a ProcessingRequest; "
                        "closed with INVALID_ARGUMENT",
                        context.peer(),
                    )
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "message is not an envoy.service.ext_proc.v3.ProcessingRequest",
                    )
                if req is grpc.aio.EOF:
                    return
                try:
                    responses, close = state.handle(req)
                    if state.held is not None:  # the prefill gate holds it: wait, then route again
                        responses = await state.settle_hold()
                except EppError as err:
                    await write(error_response(err))
                    return
                except Exception:
                    _internal_log.log(
                        logging.ERROR, "internal error while processing an ext_proc message", exc_info=True
                    )
                    await write(error_response(EppError(ErrorCode.INTERNAL, "internal error")))
                    return
                for r in responses:
                    await write(r)
                if close:
                    return
        except (grpc.aio.AioRpcError, ConnectionError) as exc:
            log.debug("ext_proc stream ended by peer: %s", exc)
        finally:
            self.active_streams -= 1
            self.last_activity = time.monotonic()
            # Releases in-flight load if the response never finished (client gone, upstream reset...).
            state.exchange.finish(completed=False)
