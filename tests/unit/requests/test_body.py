import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.errors import EppError
from epp.requests.apitype import ApiType, api_type_from_body, api_type_from_path
from epp.requests.body import find_model_value, parse_request, replace_model
from epp.requests.modelname import restore_model_name
from epp.requests.usage import SseUsageScanner, usage_from_json_body


@pytest.mark.parametrize(
    "path,api",
    [
        ("/v1/chat/completions", ApiType.CHAT_COMPLETIONS),
        ("/v1/completions?x=1", ApiType.COMPLETIONS),
        ("/v1/chat/completions?api-version=1", ApiType.CHAT_COMPLETIONS),
        ("/openai/v1/responses", ApiType.RESPONSES),
        ("/v1/conversations", ApiType.CONVERSATIONS),
        ("/v1/embeddings/", ApiType.EMBEDDINGS),
        ("/healthz", None),
    ],
)
def test_api_type_from_path(path, api):
    assert api_type_from_path(path) == api


def test_api_type_from_body_when_no_path():
    assert api_type_from_body({"messages": []}) is ApiType.CHAT_COMPLETIONS
    assert api_type_from_body({"prompt": "x"}) is ApiType.COMPLETIONS
    assert api_type_from_body({"input": "x"}) is ApiType.EMBEDDINGS
    assert api_type_from_body({"input": "x", "instructions": "y"}) is ApiType.RESPONSES
    req = parse_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}]}', None)
    assert req.api is ApiType.CHAT_COMPLETIONS


def test_parse_extracts_fields():
    req = parse_request(b'{"model":"m","prompt":["a","b"],"stream":true,"cache_salt":"s"}', "/v1/completions")
    assert (req.model, req.stream, req.cache_salt, req.prefix_input) == ("m", True, "s", b"a b")


def test_token_id_prompt_is_accepted():
    req = parse_request(b'{"model":"m","prompt":[1,2,3]}', "/v1/completions")
    assert req.prefix_input == b"[1,2,3]"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    before=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "model"), json_values, max_size=4),
    after=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "model"), json_values, max_size=4),
    model=st.text(min_size=1),
    new=st.text(min_size=1),
    indent=st.booleans(),
)
def test_replace_model_changes_only_the_model_value(before, after, model, new, indent):
    obj = {**before, "model": model, **{k: v for k, v in after.items() if k not in before}}
    raw = json.dumps(obj, indent=2 if indent else None, ensure_ascii=False).encode()
    out = replace_model(raw, new)
    assert orjson.loads(out) == {**orjson.loads(raw), "model": new}
    start, end = find_model_value(raw)
    assert out[:start] == raw[:start] and out[len(out) - (len(raw) - end) :] == raw[end:]


def test_replace_model_ignores_nested_and_string_lookalikes():
    raw = b'{"a":{"model":"x"},"s":"\\"model\\": \\"x\\"","model":"x","b":[{"model":"x"}]}'
    assert replace_model(raw, "y") == raw.replace(b',"model":"x",', b',"model":"y",')


def test_replace_model_handles_escaped_key():
    raw = b'{"mod\\u0065l": "x", "n": 1.50}'
    assert replace_model(raw, "y") == b'{"mod\\u0065l": "y", "n": 1.50}'


@pytest.mark.parametrize(
    "raw,fragment",
    [
        (b"", "error unmarshaling"),
        (b"\xff", "error unmarshaling"),
        (b'"str"', "got a string"),
        (b"null", "got null"),
        (b'{"model": null, "prompt": "x"}', "model not found"),
        (b'{"model": "", "prompt": "x"}', "model not found"),
        (b'{"model": ["m"], "prompt": "x"}', "model not found"),
    ],
)
def test_bad_bodies_raise_400(raw, fragment):
    with pytest.raises(EppError) as exc:
        parse_request(raw, "/v1/completions")
    assert exc.value.http_status == 400 and fragment in exc.value.message


def test_restore_model_name_compact_and_spaced():
    assert restore_model_name(b'{"model":"t","x":1}', "t", "i") == b'{"model":"i","x":1}'
    assert restore_model_name(b'{"model": "t"}', "t", "i") == b'{"model": "i"}'
    assert restore_model_name(b'{"model":"other"}', "t", "i") == b'{"model":"other"}'


def test_sse_usage_scanner_handles_split_lines():
    stream = (
        b'data: {"choices":[{"text":"a"}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6,'
        b'"prompt_tokens_details":{"cached_tokens":3}}}\n\ndata: [DONE]\n\n'
    )
    for cut in range(1, len(stream), 7):
        s = SseUsageScanner()
        s.feed(stream[:cut])
        s.feed(stream[cut:])
        assert s.usage is not None and (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.cached_tokens) == (
            4,
            2,
            3,
        )


def test_usage_from_responses_api_and_json():
    u = usage_from_json_body(b'{"object":"response","usage":{"input_tokens":5,"output_tokens":7}}')
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (5, 7, 12)
    s = SseUsageScanner()
    s.feed(b'data: {"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":2}}}\n')
    assert s.usage.completion_tokens == 2


def test_anthropic_messages_put_the_system_prompt_first_in_the_prefix():
    import orjson as _orjson

    from epp.requests.apitype import ApiType
    from epp.requests.body import parse_request as _parse

    body = {"model": "m", "max_tokens": 4, "system": "S" * 50, "messages": [{"role": "user", "content": "hi"}]}
    req = _parse(_orjson.dumps(body), "/v1/messages")
    assert req.api is ApiType.MESSAGES and req.model == "m"
    assert req.prefix_input.startswith(b'[{"system":"SSSS')
    # Without a path (NGINX shim), a top-level system prompt says Anthropic.
    assert _parse(_orjson.dumps(body), None).api is ApiType.MESSAGES
    for bad, msg in (({**body, "messages": []}, "messages"), ({**body, "system": 5}, "system")):
        try:
            _parse(_orjson.dumps(bad), "/v1/messages")
        except Exception as exc:  # EppError with a 400
            assert msg in str(exc)
        else:
            raise AssertionError(f"accepted {bad}")
