"""Both token sources give exactly the tokens the server prefills (epp-sim, real HTTP)."""

from __future__ import annotations

import pytest

from epp.scheduling.plugin import ConfigError, build_plugin
from epp.sim.engine import EngineConfig
from epp.sim.fleet import Fleet
from epp.sim.hftokenizer import HFTokenizer, build
from epp.sim.server import ReplicaConfig
from epp.sim.tokenizer import render_chat
from epp.stack.processes import free_port
from epp.tokenization.local import LocalTokenizer, TokenizerLoadError
from epp.tokenization.prompt import Prompt, prompt_of
from epp.tokenization.remote import RemoteTokenizeError, RemoteTokenizer

MODEL = "m"
MESSAGES = [
    {"role": "system", "content": "You are terse. " * 20},
    {"role": "user", "content": [{"type": "text", "text": "kabo of the?"}, {"type": "image_url"}]},
    {"role": "assistant", "content": None},
    {"role": "user", "content": "  and 12345 then  "},
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build(d)
    return d


@pytest.fixture
async def sim(tokenizer_dir, request):
    use_file = getattr(request, "param", False)
    cfg = ReplicaConfig(
        port=free_port(),
        model=MODEL,
        engine=EngineConfig(num_gpu_blocks=256, max_model_len=2048),
        tokenizer_file=str(tokenizer_dir / "tokenizer.json") if use_file else None,
    )
    fleet = Fleet([cfg])
    await fleet.start(announce=None)
    yield fleet.servers[0]
    await fleet.stop()


async def test_remote_tokenize_returns_the_servers_prompt_ids(sim):
    rt = RemoteTokenizer("tokenize")
    try:
        chat = await rt.tokenize(sim.url, Prompt(MODEL, messages=MESSAGES))
        assert chat == sim.prompt_tokenizer.encode(render_chat(MESSAGES))
        text = await rt.tokenize(sim.url, Prompt(MODEL, text="hello there"))
        assert text == sim.prompt_tokenizer.encode("hello there", add_bos=True)
        rr = RemoteTokenizer("render")
        assert await rr.tokenize(sim.url, Prompt(MODEL, messages=MESSAGES)) == chat
        await rr.close()
        with pytest.raises(RemoteTokenizeError, match="HTTP 404"):
            await rt.tokenize(sim.url, Prompt("no-such-model", text="x"))
        with pytest.raises(RemoteTokenizeError):
            await rt.tokenize(f"http://127.0.0.1:{free_port()}", Prompt(MODEL, text="x"))
    finally:
        await rt.close()


@pytest.mark.parametrize("sim", [True], indirect=True)
async def test_local_tokenizer_matches_a_server_with_the_same_files(sim, tokenizer_dir):
    local = LocalTokenizer(tokenizer_dir)
    rt = RemoteTokenizer()
    try:
        assert local.tokenize(Prompt(MODEL, messages=MESSAGES)) == await rt.tokenize(
            sim.url, Prompt(MODEL, messages=MESSAGES)
        )
        assert local.tokenize(Prompt(MODEL, text="a b c 99")) == await rt.tokenize(
            sim.url, Prompt(MODEL, text="a b c 99")
        )
    finally:
        await rt.close()
    # segments between special tokens are cached: the system prompt is tokenized once
    before = local.segments.misses
    other = [*MESSAGES[:1], {"role": "user", "content": "something else"}]
    local.tokenize(Prompt(MODEL, messages=other))
    assert local.segments.misses - before == 1  # only the new user text


def test_local_tokenizer_whole_equals_segmented(tokenizer_dir):
    from tokenizers import Tokenizer

    local = LocalTokenizer(tokenizer_dir)
    whole = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = local.render(MESSAGES)
    assert local.encode_text(text) == whole.encode(text, add_special_tokens=False).ids
    assert HFTokenizer(tokenizer_dir / "tokenizer.json").encode(text) == local.encode_text(text)


def test_bad_tokenizer_paths_are_config_errors(tmp_path):
    with pytest.raises(TokenizerLoadError, match=r"no tokenizer\.json"):
        LocalTokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"local\.path"):
        build_plugin("token-producer", "t", {"local": {"path": str(tmp_path)}})
    with pytest.raises(ConfigError, match="not both"):
        build_plugin("token-producer", "t", {"local": {"path": "x"}, "vllm": {}})


def test_what_gets_tokenized():
    assert prompt_of("completions", {"prompt": "x"}, "m") == Prompt("m", text="x")
    assert prompt_of("completions", {"prompt": [1, 2]}, "m") == Prompt("m", token_ids=[1, 2])
    assert prompt_of("completions", {"prompt": ["a", "b"]}, "m") is None  # a batch: no single prompt
    assert prompt_of("chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "m").messages
    assert prompt_of("embeddings", {"input": "x"}, "m") is None
    assert prompt_of("completions", None, "m") is None


def test_token_producer_caches_whole_prompts(tokenizer_dir):
    tp = build_plugin("token-producer", "t", {"local": {"path": str(tokenizer_dir)}})
    p = Prompt(MODEL, text="hello " * 50)
    first = tp.tokenize_now(p)
    assert tp.tokenize_now(p) == first and tp.counts["cache"] == 1 and tp.counts["local"] == 1


async def test_long_prompts_are_tokenized_off_the_event_loop(tokenizer_dir):
    tp = build_plugin("token-producer", "t", {"local": {"path": str(tokenizer_dir)}})
    long = Prompt(MODEL, text="the of and kabo " * 400)
    assert tp.tokenize_now(long) is None  # the director then awaits tokenize()
    ids = await tp.tokenize(long, [])
    assert list(ids) == LocalTokenizer(tokenizer_dir).tokenize(long) and tp.counts["local"] == 1
    assert list(tp.tokenize_now(long)) == list(ids) and tp.counts["cache"] == 1
    await tp.close()
