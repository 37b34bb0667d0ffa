"""The selective parser agrees with prometheus_client on every wanted sample."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.promtext import Sample, parse, parse_bytes


def test_reads_only_wanted_and_handles_labels_timestamps_specials():
    text = (
        "# HELP a_metric some help with \\\\ and \\n\n"
        "# TYPE a_metric gauge\n"
        'a_metric{x="1",y="quote \\" backslash \\\\ newline \\n brace } comma ,"} 3.5 1700000000000\n'
        "a_metric_other 7\n"
        "a_metric 4\n"
        "# TYPE c_total counter\n"
        "c_total 12\n"
        "nan_metric NaN\n"
        'inf_metric{a="b",} +Inf\n'
        "neg_inf_metric -Inf\n"
    )
    got = parse(text, ["a_metric", "c", "nan_metric", "inf_metric", "neg_inf_metric", "absent"])
    assert got["a_metric"] == [
        Sample("a_metric", {"x": "1", "y": 'quote " backslash \\ newline \n brace } comma ,'}, 3.5, 1700000000000),
        Sample("a_metric", {}, 4.0, None),
    ]
    assert got["c"] == [Sample("c_total", {}, 12.0, None)]  # counter asked for by family name
    assert math.isnan(got["nan_metric"][0].value)
    assert got["inf_metric"][0].value == math.inf and got["inf_metric"][0].labels == {"a": "b"}
    assert got["neg_inf_metric"][0].value == -math.inf
    assert "absent" not in got


def test_first_line_and_no_trailing_newline():
    assert parse("m 1\nother 2", ["m", "other"]) == {
        "m": [Sample("m", {}, 1.0, None)],
        "other": [Sample("other", {}, 2.0, None)],
    }


def test_prefix_sharing_names_are_different_metrics():
    text = "foo_bar 1\nfoo_totally 2\nfoo 3\n"
    assert parse(text, ["foo"]) == {"foo": [Sample("foo", {}, 3.0, None)]}


def test_malformed_wanted_lines_are_skipped_not_fatal():
    text = 'm{a="unterminated} 1\nm{a="ok"} notanumber\nm 1_000\nm{a="x",a="y"} 1\nm{b="fine"} 2\n'
    assert parse(text, ["m"]) == {"m": [Sample("m", {"b": "fine"}, 2.0, None)]}


def test_bytes_with_invalid_utf8_do_not_raise():
    assert parse_bytes(b"\xff\xfe garbage\nm 5\n", ["m"]) == {"m": [Sample("m", {}, 5.0, None)]}
    assert parse_bytes(b"\x00\xff<html>", ["m"]) == {}


def test_comment_lines_never_match():
    text = "# HELP m help\n# TYPE m gauge\n#m 9\n"
    assert parse(text, ["m"]) == {}


# ---- property test against prometheus_client ----------------------------------------------

_NAME_START = "abcxyzABZ_:"
_NAME_REST = "abcxyz019_:"
_metric_prefix = st.builds(lambda a, b: a + b, st.sampled_from(_NAME_START), st.text(_NAME_REST, max_size=6))
_label_name = st.builds(lambda a, b: a + b, st.sampled_from("abcxyzAB"), st.text("abcxyz019_", max_size=5))
_label_value = st.text(
    st.one_of(
        st.sampled_from(['"', "\\", "\n", "}", "{", ",", "=", " ", "#", "é", "€", "\t"]),
        st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    ),
    max_size=12,
)
_value = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
)
_timestamp = st.one_of(st.none(), st.integers(-(2**40), 2**45))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt_value(v) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


@st.composite
def _sample_line(draw, name: str, extra: dict[str, str] | None = None) -> str:
    labels = dict(draw(st.dictionaries(_label_name, _label_value, max_size=4)))
    for k in list(labels):
        if k in ("le", "quantile"):
            del labels[k]
    labels.update(extra or {})
    sep = draw(st.sampled_from([",", ", "]))
    trailing = draw(st.sampled_from(["", ","])) if labels else ""
    inner = sep.join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + trailing
    label_part = f"{{{inner}}}" if labels or draw(st.booleans()) else ""
    gap = draw(st.sampled_from([" ", "  "]))
    line = f"{name}{label_part}{gap}{_fmt_value(draw(_value))}"
    ts = draw(_timestamp)
    if ts is not None:
        line += f" {ts}"
    return line


@st.composite
def _exposition(draw) -> tuple[str, list[str]]:
    lines: list[str] = []
    names: list[str] = []  # sample names present
    n_families = draw(st.integers(0, 8))
    for i in range(n_families):
        base = draw(_metric_prefix) + f"_f{i}"
        kind = draw(st.sampled_from(["gauge", "counter", "untyped", "histogram", "summary"]))
        family = base + "_total" if kind == "counter" else base
        if draw(st.booleans()):
            help_text = draw(st.text("abc \\", max_size=10)).replace("\\", "\\\\")
            lines.append(f"# HELP {family} {help_text}")
        if kind != "untyped" or draw(st.booleans()):
            lines.append(f"# TYPE {family} {kind}")
        n_samples = draw(st.integers(1, 4))
        for _ in range(n_samples):
            if kind == "histogram":
                le = draw(st.sampled_from(["0.1", "1.0", "+Inf"]))
                lines.append(draw(_sample_line(base + "_bucket", {"le": le})))
                lines.append(draw(_sample_line(base + "_count")))
                lines.append(draw(_sample_line(base + "_sum")))
                names += [base + "_bucket", base + "_count", base + "_sum"]
            elif kind == "summary":
                q = draw(st.sampled_from(["0.5", "0.99"]))
                lines.append(draw(_sample_line(base, {"quantile": q})))
                lines.append(draw(_sample_line(base + "_count")))
                names += [base, base + "_count"]
            else:
                lines.append(draw(_sample_line(family)))
                names.append(family)
                if kind == "counter":
                    names.append(base)  # the family name without _total selects it too
    text = "\n".join(lines) + ("\n" if draw(st.booleans()) else "")
    extra = draw(st.lists(st.one_of(_metric_prefix, st.sampled_from([n[:-1] for n in names] or ["x"])), max_size=3))
    wanted = sorted(set(draw(st.lists(st.sampled_from(names), max_size=6)) if names else []) | set(extra))
    return text, wanted


def _key(s) -> tuple:
    value = "nan" if math.isnan(s[2]) else float(s[2])
    return (s[0], dict(s[1]), value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_exposition())
def test_matches_prometheus_client(case):
    text, wanted = case
    ref = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    got = parse(text, wanted)
    for w in wanted:
        expected = [s for s in ref if s.name in (w, w + "_total")]
        mine = got.get(w, [])
        assert [_key(s) for s in mine] == [_key(s) for s in expected], (w, text)
        assert [None if s.timestamp_ms is None else s.timestamp_ms / 1000 for s in mine] == [
            s.timestamp for s in expected
        ]
    assert set(got) <= set(wanted)
