"""A Prometheus text-format (0.0.4) parser that reads only the samples it is asked for.

A vLLM /metrics page is 30–60 KB, almost all of it histograms nobody routes on; the EPP needs
half a dozen gauges out of it, 20 times a second, per endpoint. So instead of walking every
line we let `str.find` (C speed) jump straight to `"\\n" + name` for each wanted name and
parse only those lines. `# HELP` / `# TYPE` lines are never parsed: they start with `#`, so
a needle that begins with a newline followed by a metric name cannot land on them, and a
label value cannot contain a raw newline (the format escapes it), so every hit is the start
of a sample line.

Semantics, matched against `prometheus_client.parser` by a property test:
- A wanted name `n` selects sample lines whose metric name is exactly `n`, or `n_total`
  (a counter asked for by its family name). Histogram parts are asked for by sample name
  (`foo_bucket`, `foo_sum`, `foo_count`).
- Label values are unescaped (`\\\\`, `\\"`, `\\n`); values accept `NaN`, `+Inf`, `-Inf`;
  an optional integer timestamp (milliseconds) follows the value.
- Samples of one family are read from its first group only: the format requires a
  family's lines to be contiguous, so the search stops at the next `#` line after a hit.
  This bounds the cost of each name to "scan up to its family" instead of "scan the page".
- A malformed wanted line is skipped, not fatal: one bad line must not blank a whole scrape
  (the caller treats a family with no samples as missing and keeps the last good value).
Not supported (no model server emits them): UTF-8 quoted metric names (`{"a.b"}`),
lines with leading whitespace, CR-LF line ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float
    timestamp_ms: int | None


Families = dict[str, list[Sample]]

# One label pair: name = "value with \" escapes", then optional blanks. The value group
# stops at the first unescaped quote, so `}` or `,` inside a value are harmless.
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"([^"\\\n]*(?:\\.[^"\\\n]*)*)"[ \t]*')
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPE = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_NAME_END = frozenset("{ \t")


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPE[m.group(0)], value)


def _parse_labels(text: str, pos: int) -> tuple[dict[str, str], int] | None:
    """Parse `{...}` starting just after `{`; return labels and the index after `}`."""
    labels: dict[str, str] = {}
    match = _LABEL.match
    while True:
        # Skip blanks, then either the closing brace or another pair.
        while text[pos : pos + 1] in (" ", "\t"):
            pos += 1
        if text[pos : pos + 1] == "}":
            return labels, pos + 1
        m = match(text, pos)
        if m is None:
            return None
        key, value = m.group(1), m.group(2)
        if key in labels:
            return None
        labels[key] = _unescape(value) if "\\" in value else value
        pos = m.end()
        c = text[pos : pos + 1]
        if c == ",":
            pos += 1
        elif c != "}":
            return None


def _parse_float(token: str) -> float:
    # float() also takes "1_000" and "infinity"; the exposition format (and prometheus_client)
    # do not take underscores, so refuse them for identical results.
    if "_" in token:
        raise ValueError(token)
    return float(token)


def _parse_line(text: str, name: str, pos: int, end: int) -> Sample | None:
    """Parse one sample line whose metric name ends at `pos`; `end` is the line end."""
    while text[pos : pos + 1] in (" ", "\t") and pos < end:
        pos += 1
    labels: dict[str, str] = {}
    if text[pos : pos + 1] == "{":
        parsed = _parse_labels(text, pos + 1)
        if parsed is None:
            return None
        labels, pos = parsed
        if pos > end:  # the closing brace was on a later line: malformed
            return None
    rest = text[pos:end].split()
    try:
        if len(rest) == 1:
            return Sample(name, labels, _parse_float(rest[0]), None)
        if len(rest) == 2:
            return Sample(name, labels, _parse_float(rest[0]), int(rest[1]))
    except ValueError:
        return None
    return None


def parse(text: str, wanted: Iterable[str]) -> Families:
    """Return `{wanted_name: [samples in page order]}` for the wanted names present.

    Names with no (well-formed) sample lines are absent from the result.
    """
    out: Families = {}
    n = len(text)
    for want in wanted:
        samples: list[Sample] = []
        wl = len(want)
        # A match at offset 0 has no preceding newline; check it once, then search "\n"+name.
        needle = "\n" + want
        limit = -1  # end of the family's group, known after its first sample line
        i = 0 if text.startswith(want) else text.find(needle)
        if i > 0 or (i == 0 and text[0] == "\n"):
            i += 1
        while i >= 0:
            j = i + wl
            c = text[j : j + 1]
            name = want
            if c not in _NAME_END or c == "":
                # Only the `_total` suffix belongs to the wanted family; anything else is a
                # different metric that merely shares the prefix.
                if text.startswith("_total", j) and text[j + 6 : j + 7] in _NAME_END and j + 6 < n:
                    name = want + "_total"
                    j += 6
                else:
                    j = -1
            end = text.find("\n", i)
            if end < 0:
                end = n
            if j >= 0:
                sample = _parse_line(text, name, j, end)
                if sample is not None:
                    samples.append(sample)
                # The format keeps a family's lines in one group (Go's parser rejects a page
                # that splits one), so the next comment line ends the group: search no further.
                if limit < 0:
                    limit = text.find("\n#", end)
                    if limit < 0:
                        limit = n
            i = text.find(needle, end, n if limit < 0 else limit)
            if i >= 0:
                i += 1
        if samples:
            out[want] = samples
    return out


def parse_bytes(body: bytes, wanted: Iterable[str]) -> Families:
    """Decode a /metrics body (UTF-8, per the format) and parse it."""
    return parse(body.decode("utf-8", "replace"), wanted)
