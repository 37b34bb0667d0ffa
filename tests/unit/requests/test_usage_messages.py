"""Usage from Anthropic Messages responses: split over message_start / message_delta in a stream."""

from __future__ import annotations

from epp.requests.usage import SseUsageScanner, Usage, usage_from_json_body

START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":'
    b'{"input_tokens":12,"cache_read_input_tokens":4,"cache_creation_input_tokens":0,"output_tokens":0}}}\n\n'
)
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"usage"}}\n\n'
END = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}'
    b'\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def test_stream_usage_joins_message_start_input_with_message_delta_output():
    for cut in range(1, len(START + DELTA + END), 37):  # however the chunks fall
        s = SseUsageScanner()
        data = START + DELTA + END
        s.feed(data[:cut])
        s.feed(data[cut:])
        assert s.usage == Usage(16, 7, 23, 4), cut


def test_stream_without_message_delta_keeps_the_input():
    s = SseUsageScanner()
    s.feed(START + DELTA)
    assert s.usage == Usage(16, 0, 16, 4)


def test_json_message_usage_counts_cache_reads_into_the_prompt():
    body = b'{"type":"message","usage":{"input_tokens":3,"cache_read_input_tokens":10,"output_tokens":5}}'
    assert usage_from_json_body(body) == Usage(13, 5, 18, 10)
    plain = b'{"type":"message","usage":{"input_tokens":3,"output_tokens":5}}'  # vLLM without cache fields
    assert usage_from_json_body(plain) == Usage(3, 5, 8, 0)


def test_openai_streams_still_keep_their_first_usage():
    s = SseUsageScanner()
    s.feed(b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\ndata: [DONE]\n\n')
    assert s.usage == Usage(5, 2, 7, 0)
