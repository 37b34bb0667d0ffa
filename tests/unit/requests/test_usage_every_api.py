"""Usage from the response of every API the request parser knows, streamed and not, however the
chunks fall: through `ResponseRelay`, the response path both process modes run."""

from __future__ import annotations

import pytest

from epp.requestcontrol.relay import ResponseRelay
from epp.requests.apitype import ApiType
from epp.requests.usage import Usage

SSE, JSON = "text/event-stream", "application/json"

# (api, content type, body, expected usage) - bodies shaped as vLLM / OpenAI / Anthropic send them.
CASES = [
    (
        ApiType.COMPLETIONS,
        JSON,
        b'{"id":"c","object":"text_completion","model":"m","choices":[{"text":"hi"}],'
        b'"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}',
        Usage(12, 3, 15, 0),
    ),
    (
        ApiType.COMPLETIONS,
        SSE,
        b'data: {"object":"text_completion","choices":[{"text":"h"}]}\n\n'
        b'data: {"object":"text_completion","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,'
        b'"total_tokens":15}}\n\ndata: [DONE]\n\n',
        Usage(12, 3, 15, 0),
    ),
    (
        ApiType.CHAT_COMPLETIONS,
        JSON,
        b'{"object":"chat.completion","choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":40,'
        b'"completion_tokens":5,"total_tokens":45,"prompt_tokens_details":{"cached_tokens":32}}}',
        Usage(40, 5, 45, 32),
    ),
    (
        ApiType.CHAT_COMPLETIONS,
        SSE,
        b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":40,"completion_tokens":5,'
        b'"total_tokens":45,"prompt_tokens_details":{"cached_tokens":32}}}\n\ndata: [DONE]\n\n',
        Usage(40, 5, 45, 32),
    ),
    (
        ApiType.RESPONSES,
        JSON,
        b'{"id":"r","object":"response","status":"completed","output":[],"usage":{"input_tokens":30,'
        b'"input_tokens_details":{"cached_tokens":16},"output_tokens":7,"total_tokens":37}}',
        Usage(30, 7, 37, 16),
    ),
    (
        ApiType.RESPONSES,
        SSE,
        b'event: response.created\ndata: {"type":"response.created","response":{"id":"r","usage":null}}\n\n'
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"x"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r","usage":'
        b'{"input_tokens":30,"input_tokens_details":{"cached_tokens":16},"output_tokens":7,"total_tokens":37}}}\n\n',
        Usage(30, 7, 37, 16),
    ),
    (
        ApiType.CONVERSATIONS,
        JSON,
        b'{"id":"conv","object":"conversation","usage":{"input_tokens":9,"output_tokens":2}}',
        Usage(9, 2, 11, 0),
    ),
    (
        ApiType.EMBEDDINGS,
        JSON,
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"m",'
        b'"usage":{"prompt_tokens":8,"total_tokens":8}}',
        Usage(8, 0, 8, 0),
    ),
    (
        ApiType.MESSAGES,
        JSON,
        b'{"id":"msg","type":"message","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":10,'
        b'"cache_read_input_tokens":20,"cache_creation_input_tokens":0,"output_tokens":4}}',
        Usage(30, 4, 34, 20),
    ),
    (
        ApiType.MESSAGES,
        SSE,
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":10,'
        b'"cache_read_input_tokens":20,"cache_creation_input_tokens":0,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"x"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":4}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        Usage(30, 4, 34, 20),
    ),
]


def test_every_api_the_parser_knows_has_a_case():
    assert {api for api, *_ in CASES} == set(ApiType)


@pytest.mark.parametrize("api,content_type,body,expected", CASES, ids=[f"{c[0].value}-{c[1][-4:]}" for c in CASES])
def test_usage_is_read_from_the_response_however_it_is_chunked(api, content_type, body, expected):
    for size in (len(body), 97, 13, 1):
        relay = ResponseRelay()
        relay.routed("client-name", "served-name", [])  # a rewrite: the name is written back too
        relay.headers({":status": "200", "content-type": content_type})
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        out = b""
        for i, part in enumerate(parts):
            data = relay.chunk(part, i == len(parts) - 1)
            out += data or b""
        assert relay.usage == expected, (size, relay.usage)
        assert out == body  # these bodies hold no model name to write back: the bytes pass unchanged
