"""flowcontrol.md and flowcontrol-<scenario>.png from flowcontrol.json (a pure function of the JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PRIORITY_GOAL = 1.25  # critical TTFT p90 flooded / alone
FAIRNESS_TTFT_GOAL = 1.5  # tenant B TTFT p90 beside A / alone
FAIRNESS_TPUT_GOAL = 0.95  # fleet output tokens/s against global-strict


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _verdict(x: float | None, goal: float, upper: bool = True) -> str:
    if x is None:
        return "n/a"
    return "yes" if (x <= goal if upper else x >= goal) else "**no**"


def _flow_rows(rows: list[dict], scenario: str) -> list[dict]:
    return [r for r in rows if r.get("scenario") == scenario and "flows" in r]


def _by(rows: list[dict], variant: str, run: str, seed: int) -> dict | None:
    for r in rows:
        if r["variant"] == variant and r["run"] == run and r["seed"] == seed:
            return r
    return None


def priority_headline(rows: list[dict], meta: dict) -> list[dict]:
    rows = _flow_rows(rows, "priority")
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for seed in sorted({r["seed"] for r in rows if r["variant"] == variant}):
            alone, flooded = _by(rows, variant, "alone", seed), _by(rows, variant, "flooded", seed)
            if not alone or not flooded:
                continue
            ca, cf, sh = alone["flows"]["critical"], flooded["flows"]["critical"], flooded["flows"].get("sheddable", {})
            out.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "alone_p90": ca["ttft_p90"],
                    "flooded_p90": cf["ttft_p90"],
                    "ratio": _ratio(cf["ttft_p90"], ca["ttft_p90"]),
                    "critical_ok": cf["ok"],
                    "critical_sent": cf["sent"],
                    "sheddable": sh,
                    "fleet_tok_s": flooded.get("fleet_output_tokens_per_s"),
                }
            )
    return out


def fairness_headline(rows: list[dict], meta: dict) -> list[dict]:
    rows = _flow_rows(rows, "fairness")
    baseline = meta.get("fairness_baseline", "fc-global-strict")
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for seed in sorted({r["seed"] for r in rows if r["variant"] == variant}):
            alone, mixed = _by(rows, variant, "alone", seed), _by(rows, variant, "mixed", seed)
            if not alone or not mixed:
                continue
            base = _by(rows, baseline, "mixed", seed)
            ba, bm = alone["flows"]["tenant-b"], mixed["flows"]["tenant-b"]
            tput = mixed.get("fleet_output_tokens_per_s")
            out.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "alone_p90": ba["ttft_p90"],
                    "mixed_p90": bm["ttft_p90"],
                    "ratio": _ratio(bm["ttft_p90"], ba["ttft_p90"]),
                    "fleet_tok_s": tput,
                    "tput_vs_baseline": _ratio(tput, base.get("fleet_output_tokens_per_s")) if base else None,
                    "b_ok": bm["ok"],
                    "b_sent": bm["sent"],
                }
            )
    return out


def _flow_table(rows: list[dict]) -> list[str]:
    lines = [
        "| variant | seed | run | flow | sent | ok | 429 | 503 | other | TTFT p50 / p90 / p99 (s) | e2e p90 (s) "
        "| out tok/s | fleet tok/s | gen tok/s loaded | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, st in r["flows"].items():
            other = st["other_errors"]
            if other:
                other = f"{other} ({', '.join(f'{k} {v}' for k, v in st['errors'].items())})"
            lines.append(
                f"| {r['variant']} | {r['seed']} | {r['run']} | {name} | {st['sent']} | {st['ok']} | "
                f"{st['http_429']} | {st['http_503']} | {other} | {_f(st['ttft_p50'])} / {_f(st['ttft_p90'])} / "
                f"{_f(st['ttft_p99'])} | {_f(st['e2e_p90'])} | {st['output_tokens_per_s']} | "
                f"{_f(r.get('fleet_output_tokens_per_s'), 1)} | "
                f"{_f(r.get('generated_tokens_per_s_while_loaded'), 1)} | {r['wall_s']} |"
            )
    return lines


def _configs_section(meta: dict) -> list[str]:
    used = []
    for sc in (meta.get("scenarios") or {}).values():
        used += [v for v in sc.get("variants", []) if v not in used]
    out = [
        "## Configs",
        "",
        "Every EPP ran with `--static-objectives " + meta.get("static_objectives", "") + "` and one of these "
        "(`epp/bench/flowbench.py` `CONFIGS`; `--config NAME=FILE` replaces or adds one):",
        "",
    ]
    for name in used:
        text = (meta.get("configs") or {}).get(name)
        if text is None:
            continue
        out += [
            f"<details><summary><code>{name}</code></summary>",
            "",
            "```yaml",
            text.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return out


def _labels(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition("{")
    return name, dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv)


def _engaged_section(rows: list[dict]) -> list[str]:
    """What the EPP's flow-control counters say each run did (rows whose counters all stayed at 0 are left out)."""
    out = ["## Was flow control engaged?", ""]
    lines = []
    for r in rows:
        mt = {k: v for k, v in (r.get("epp_flow_control_metrics") or {}).items() if v}
        if not mt:
            continue
        ts = r.get("time_scale") or 1.0
        outcomes, waits = [], []
        for k, v in mt.items():
            name, lab = _labels(k)
            if name == "requests_total":
                outcomes.append(f"{lab.get('priority', '?')}: {lab.get('outcome', '?')} {v:g}")
            elif name == "request_queue_duration_seconds_sum":
                n = mt.get(k.replace("_sum{", "_count{"), 0)
                if n:
                    waits.append(
                        f"{lab.get('fairness_id', '?')}/{lab.get('priority', '?')}/{lab.get('outcome', '?')}: "
                        f"{v / n / ts:.3f}"
                    )
        run = r.get("run") or f"{r.get('workload')} {r.get('load')} seed {r.get('seed')}"
        lines.append(
            f"| {r.get('scenario')} | {r.get('variant')} | {run} | "
            f"{mt.get('dispatches_total', 0):g} | {'; '.join(outcomes) or '–'} | {'; '.join(waits) or '–'} |"
        )
    if lines:
        out += [
            "Change of the EPP's flow-control counters over each run: requests dispatched from a queue "
            "(`epp_flow_control_dispatches_total`), outcomes by priority "
            "(`inference_extension_flow_control_requests_total`) and the mean time in flow control by "
            "fairness id / priority / outcome (simulated s, from the queue-duration histogram's sum and count). "
            "Runs whose counters all stayed at zero (legacy admission) are not listed.",
            "",
            "| scenario | variant | run | dispatched from a queue | outcomes | mean time in flow control (s) |",
            "|---|---|---|---|---|---|",
            *lines,
        ]
    else:
        out += ["No run's EPP counted anything in its flow-control metrics: nothing went through flow control."]
    return [*out, ""]


QUEUEING_TITLES = {
    "queueing": "Queueing: existing workloads past capacity",
    "queueing-bounded": "Queueing where a server queue exists: servers with a bounded batch",
}
QUEUEING_BASELINE = "default-nofc"  # "without flow control" in the paired table
REPEAT = "nofc-repeat"  # the baseline's config again: the spread between identical runs


def _mean_wait(r: dict) -> float | None:
    """Mean simulated seconds a run's requests spent in flow control (None: nothing went through it)."""
    mt = r.get("epp_flow_control_metrics") or {}
    total = sum(v for k, v in mt.items() if k.startswith("request_queue_duration_seconds_sum"))
    n = sum(v for k, v in mt.items() if k.startswith("request_queue_duration_seconds_count"))
    return total / n / (r.get("time_scale") or 1.0) if n else None


def queueing_pairs(rows: list[dict], scenario: str, baseline: str = QUEUEING_BASELINE) -> list[dict]:
    """Each flow-control variant's point beside the baseline's point of the same workload, load and seed."""
    qrows = [r for r in rows if r.get("scenario") == scenario]
    base = {(r["workload"], r["load"], r["seed"]): r for r in qrows if r["variant"] == baseline}
    out = []
    for r in qrows:
        b = base.get((r["workload"], r["load"], r["seed"]))
        if r["variant"] == baseline or b is None:
            continue
        out.append(
            {
                "workload": r["workload"],
                "load": r["load"],
                "seed": r["seed"],
                "variant": r["variant"],
                "p90": (b["ttft_p90"], r["ttft_p90"], _ratio(r["ttft_p90"], b["ttft_p90"])),
                "p99": (b["ttft_p99"], r["ttft_p99"], _ratio(r["ttft_p99"], b["ttft_p99"])),
                "tok_s": (
                    b["output_tokens_per_s"],
                    r["output_tokens_per_s"],
                    _ratio(r["output_tokens_per_s"], b["output_tokens_per_s"]),
                ),
                "ok": (b["success_rate"], r["success_rate"]),
                "from_queue": (r.get("epp_flow_control_metrics") or {}).get("dispatches_total", 0.0),
                "mean_wait": _mean_wait(r),
            }
        )
    return sorted(out, key=lambda p: (p["workload"], p["load"], p["seed"], p["variant"]))


def _queueing_section(name: str, q: dict, rows: list[dict], info: dict, plot: str | None) -> list[str]:
    server = " ".join(q.get("server_args") or [])
    out = [f"## {QUEUEING_TITLES.get(name, name)}", ""]
    out += [
        f"Workloads {', '.join(q['workloads'])} (params {q['workload_params']}) at "
        f"{', '.join(str(x) for x in q['loads'])} of capacity"
        + (f", epp-sim with `{server}`" if server else "")
        + "; the `epp-bench run` measurement (TTFT over successful requests, out tok/s = output tokens of "
        "successful requests from the first arrival to the last completion). "
        + "; ".join(
            f"{w}: capacity {v['capacity']} req/s, time scale {v['time_scale']}, "
            f"{v['requests_per_point']} requests per point"
            for k, d in info.items()
            if k.startswith(f"{name}/")
            for w, v in d.items()
        )
        + ".",
        "",
    ]
    pairs = queueing_pairs(rows, name)
    if pairs:
        out += [
            f"With flow control against without (`{QUEUEING_BASELINE}`), same arrivals and lengths: ratios "
            "below 1 are better for TTFT, above 1 for throughput. `from queue` counts requests the EPP held and "
            "dispatched later; `mean wait` is the mean simulated time requests spent in flow control. "
            f"`{REPEAT}` is `{QUEUEING_BASELINE}` run again: its ratios are the run-to-run spread.",
            "",
            "| workload | load | seed | variant | TTFT p90 without / with (s) | p90 ratio | TTFT p99 without / with "
            "(s) | p99 ratio | out tok/s without / with | tok/s ratio | from queue | mean wait (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in pairs:
            out.append(
                f"| {p['workload']} | {p['load']} | {p['seed']} | {p['variant']} | "
                f"{_f(p['p90'][0])} / {_f(p['p90'][1])} | {_f(p['p90'][2], 2)} | "
                f"{_f(p['p99'][0])} / {_f(p['p99'][1])} | {_f(p['p99'][2], 2)} | "
                f"{_f(p['tok_s'][0], 1)} / {_f(p['tok_s'][1], 1)} | {_f(p['tok_s'][2], 3)} | "
                f"{p['from_queue']:g} | {_f(p['mean_wait'])} |"
            )
        out.append("")
    out += [
        "| workload | load | variant | seed | ok rate | TTFT p50 / p90 / p99 (s) | e2e p90 (s) | out tok/s | "
        "prefix hit | errors | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    qrows = sorted((r for r in rows if r.get("scenario") == name), key=lambda r: (r["workload"], r["load"], r["seed"]))
    for r in qrows:
        errs = ", ".join(f"{k} {v}" for k, v in (r.get("errors") or {}).items()) or "–"
        out.append(
            f"| {r['workload']} | {r['load']} | {r['variant']} | {r['seed']} | {r['success_rate']} | "
            f"{_f(r['ttft_p50'])} / {_f(r['ttft_p90'])} / {_f(r['ttft_p99'])} | {_f(r['e2e_p90'])} | "
            f"{r['output_tokens_per_s']} | {_f(r.get('prefix_cache_hit_rate'))} | {errs} | {r['wall_s']} |"
        )
    out.append("")
    if plot:
        out += [f"![{name}]({plot})", ""]
    return out


def render(data: dict, plot_names: dict[str, str] | None = None) -> str:
    meta, rows = data["meta"], data["rows"]
    m = meta.get("machine", {})
    plot_names = plot_names or {}
    out = [f"# Flow control: `epp-bench flowcontrol`{' (quick)' if meta.get('quick') else ''}", ""]
    out += [
        f"Commit `{meta.get('commit', '')}` (flow-control code `{meta.get('flowcontrol_fingerprint', '')}`), "
        f"{meta.get('date', '')}, {m.get('cores', '?')} × {m.get('cpu', '?')}, Python {m.get('python', '?')}, "
        f"load average at start {m.get('load_avg_at_start')}; "
        + ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
        + f"; `{meta.get('command', '')}`; "
        f"{meta.get('requests', '?')} requests in {meta.get('wall_s', '?')} s wall "
        f"(planned {meta.get('planned_wall_s', '?')} s).",
        "",
    ]
    out += [meta.get("how", ""), ""]
    scen = meta.get("scenarios") or {}
    info = meta.get("scenario_info") or {}

    if "priority" in scen:
        out += ["## Priority: critical beside a sheddable flood", ""]
        flows = {f["name"]: f for r in scen["priority"]["runs"] for f in r["flows"]}
        crit, shed = flows.get("critical", {}), flows.get("sheddable", {})
        out += [
            f"`critical` (objective priority 100) at {crit.get('load', 0):.0%} of capacity alone, then the same "
            f"requests beside `sheddable` (priority −1) at {shed.get('load', 0):.0%}: "
            f"{crit.get('load', 0) + shed.get('load', 0):.0%} offered. "
            + "; ".join(
                f"seed {k.split('/')[1]}: capacity {v['capacity']} req/s, time scale {v['time_scale']}"
                for k, v in info.items()
                if k.startswith("priority/")
            )
            + ".",
            "",
        ]
        out += [
            f"| variant | seed | critical TTFT p90 alone (s) | flooded (s) | flooded / alone | ≤ {PRIORITY_GOAL} | "
            "critical ok | sheddable sent | completed | 429 | 503 | other | sheddable out tok/s | fleet tok/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in priority_headline(rows, meta):
            sh = h["sheddable"]
            out.append(
                f"| {h['variant']} | {h['seed']} | {_f(h['alone_p90'])} | {_f(h['flooded_p90'])} | "
                f"{_f(h['ratio'], 2)} | {_verdict(h['ratio'], PRIORITY_GOAL)} | "
                f"{h['critical_ok']}/{h['critical_sent']} | "
                f"{sh.get('sent', '–')} | {sh.get('ok', '–')} | {sh.get('http_429', '–')} | "
                f"{sh.get('http_503', '–')} | "
                f"{sh.get('other_errors', '–')} | {sh.get('output_tokens_per_s', '–')} | {_f(h['fleet_tok_s'], 1)} |"
            )
        out += ["", *_flow_table(_flow_rows(rows, "priority")), ""]
        if "priority" in plot_names:
            out += [f"![priority]({plot_names['priority']})", ""]

    if "fairness" in scen:
        out += ["## Fairness: a small tenant beside a 10x larger one", ""]
        flows = {f["name"]: f for r in scen["fairness"]["runs"] for f in r["flows"]}
        a, b = flows.get("tenant-a", {}), flows.get("tenant-b", {})
        out += [
            f"`tenant-b` alone at {b.get('load', 0):.1%} of capacity, then beside `tenant-a` at {a.get('load', 0):.1%} "
            f"({a.get('load', 0) + b.get('load', 0):.0%} offered), both priority 0, fairness ids `tenant-a` / "
            f"`tenant-b`. Fleet tok/s is compared with `{meta.get('fairness_baseline', '')}` (no fairness) "
            "at the same seed. "
            + "; ".join(
                f"seed {k.split('/')[1]}: capacity {v['capacity']} req/s, time scale {v['time_scale']}"
                for k, v in info.items()
                if k.startswith("fairness/")
            )
            + ".",
            "",
        ]
        out += [
            f"| variant | seed | B TTFT p90 alone (s) | beside A (s) | beside / alone | ≤ {FAIRNESS_TTFT_GOAL} | "
            f"B ok | fleet tok/s | vs no fairness | ≥ {FAIRNESS_TPUT_GOAL} |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in fairness_headline(rows, meta):
            out.append(
                f"| {h['variant']} | {h['seed']} | {_f(h['alone_p90'])} | {_f(h['mixed_p90'])} | "
                f"{_f(h['ratio'], 2)} | {_verdict(h['ratio'], FAIRNESS_TTFT_GOAL)} | {h['b_ok']}/{h['b_sent']} | "
                f"{_f(h['fleet_tok_s'], 1)} | {_f(h['tput_vs_baseline'], 3)} | "
                f"{_verdict(h['tput_vs_baseline'], FAIRNESS_TPUT_GOAL, upper=False)} |"
            )
        out += ["", *_flow_table(_flow_rows(rows, "fairness")), ""]
        if "fairness" in plot_names:
            out += [f"![fairness]({plot_names['fairness']})", ""]

    for name, q in scen.items():
        if "workloads" in q:
            out += _queueing_section(name, q, rows, info, plot_names.get(name))

    out += _engaged_section(rows)
    skipped = meta.get("skipped") or {}
    if skipped:
        out += ["## Skipped", "", "| scenario/variant | reason |", "|---|---|"]
        out += [f"| {k} | {v.replace('|', '/')} |" for k, v in skipped.items()]
        out.append("")
    out += _configs_section(meta)
    costs = meta.get("scenario_wall_s") or {}
    if costs:
        out += ["## Cost", "", "| scenario/seed | wall s |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in costs.items()] + [""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg; no timestamps in the files).


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_priority(rows: list[dict], meta: dict, path: Path) -> Path | None:
    heads = priority_headline(rows, meta)
    if not heads:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _flow_rows(rows, "priority")
    labels = [f"{h['variant']}\nseed {h['seed']}" for h in heads]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    width = 0.13
    for k, (run, q) in enumerate(
        (("alone", 50), ("alone", 90), ("alone", 99), ("flooded", 50), ("flooded", 90), ("flooded", 99))
    ):
        ys = []
        for h in heads:
            r = _by(rows, h["variant"], run, h["seed"])
            v = r["flows"]["critical"][f"ttft_p{q}"] if r else None
            ys.append(v if v is not None else float("nan"))
        a.bar(
            [i + (k - 2.5) * width for i in range(len(heads))],
            ys,
            width,
            label=f"{run} p{q}",
            color=("#9ecae1", "#4292c6", "#084594", "#fdae6b", "#f16913", "#8c2d04")[k],
        )
    for i, h in enumerate(heads):  # the goal: flooded p90 within PRIORITY_GOAL x alone p90
        if h["alone_p90"] is not None:
            a.hlines(
                h["alone_p90"] * PRIORITY_GOAL,
                i - 3 * width,
                i + 3 * width,
                colors="k",
                linestyles="dashed",
                label=f"goal: {PRIORITY_GOAL} x alone p90" if i == 0 else None,
            )
    a.set_xticks(range(len(heads)), [t.replace("\n", " ") for t in labels], fontsize=7, rotation=35, ha="right")
    a.set_ylabel("critical TTFT (simulated s)")
    a.set_title("critical TTFT: alone vs beside the sheddable flood")
    a.legend(fontsize=7, ncol=2, loc="upper left")
    a.set_ylim(top=a.get_ylim()[1] * 1.3)  # room for the legend
    kinds = (
        ("ok", "completed", "#41ab5d"),
        ("http_429", "429", "#fd8d3c"),
        ("http_503", "503", "#e31a1c"),
        ("other_errors", "other errors", "#6a51a3"),
    )
    bottom = [0.0] * len(heads)
    for key, label, color in kinds:
        ys = [float(h["sheddable"].get(key, 0)) for h in heads]
        b.bar(range(len(heads)), ys, 0.6, bottom=bottom, label=label, color=color)
        bottom = [x + y for x, y in zip(bottom, ys, strict=True)]
    b.set_xticks(range(len(heads)), [t.replace("\n", " ") for t in labels], fontsize=7, rotation=35, ha="right")
    b.set_ylabel("sheddable requests")
    b.set_title("sheddable flood: outcome")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_fairness(rows: list[dict], meta: dict, path: Path) -> Path | None:
    heads = fairness_headline(rows, meta)
    if not heads:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _flow_rows(rows, "fairness")
    labels = [f"{h['variant']}\nseed {h['seed']}" for h in heads]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    series = (
        ("alone", "tenant-b", "B alone", "#9ecae1"),
        ("mixed", "tenant-b", "B beside A", "#08519c"),
        ("mixed", "tenant-a", "A beside B", "#f16913"),
    )
    width = 0.25
    for k, (run, flow, label, color) in enumerate(series):
        ys = []
        for h in heads:
            r = _by(rows, h["variant"], run, h["seed"])
            v = r["flows"][flow]["ttft_p90"] if r else None
            ys.append(v if v is not None else float("nan"))
        a.bar([i + (k - 1) * width for i in range(len(heads))], ys, width, label=label, color=color)
    for i, h in enumerate(heads):
        if h["alone_p90"] is not None:
            a.hlines(
                h["alone_p90"] * FAIRNESS_TTFT_GOAL,
                i - 1.5 * width,
                i + 1.5 * width,
                colors="k",
                linestyles="dashed",
                label=f"goal: {FAIRNESS_TTFT_GOAL} x B alone p90" if i == 0 else None,
            )
    a.set_xticks(range(len(heads)), [t.replace("\n", " ") for t in labels], fontsize=7, rotation=35, ha="right")
    a.set_ylabel("TTFT p90 (simulated s)")
    a.set_title("TTFT p90 per tenant")
    a.legend(fontsize=8, loc="upper left")
    a.set_ylim(top=a.get_ylim()[1] * 1.3)
    b.bar(range(len(heads)), [h["fleet_tok_s"] or 0.0 for h in heads], 0.6, color="#41ab5d")
    b.set_xticks(range(len(heads)), [t.replace("\n", " ") for t in labels], fontsize=7, rotation=35, ha="right")
    b.set_ylabel("fleet output tokens / simulated s")
    b.set_title("fleet output tokens/s, first arrival to last completion")
    for ax in (a, b):
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_queueing(rows: list[dict], meta: dict, path: Path, scenario: str = "queueing") -> Path | None:
    qrows = [r for r in rows if r.get("scenario") == scenario]
    if not qrows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in qrows))
    fig, axes = plt.subplots(len(workloads), 2, figsize=(11, 3.8 * len(workloads)), squeeze=False)
    for (a, b), w in zip(axes, workloads, strict=True):
        for variant in dict.fromkeys(r["variant"] for r in qrows):
            for seed in sorted({r["seed"] for r in qrows}):
                pts = sorted(
                    (r for r in qrows if r["workload"] == w and r["variant"] == variant and r["seed"] == seed),
                    key=lambda r: r["load"],
                )
                if not pts:
                    continue
                xs = [p["load"] for p in pts]
                lab = variant if len({r["seed"] for r in qrows}) == 1 else f"{variant} seed {seed}"
                a.plot(
                    xs,
                    [p["ttft_p90"] if p["ttft_p90"] is not None else float("nan") for p in pts],
                    marker="o",
                    label=lab,
                )
                b.plot(xs, [p["output_tokens_per_s"] for p in pts], marker="o", label=lab)
        a.set_yscale("log")
        a.set_title(f"{w}: TTFT p90")
        a.set_ylabel("TTFT p90 (simulated s)")
        b.set_title(f"{w}: output throughput")
        b.set_ylabel("output tokens / simulated s")
        for ax in (a, b):
            ax.set_xlabel("offered load (fraction of capacity)")
            ax.grid(True, alpha=0.3)
        b.legend(fontsize=8)
    return _save(fig, path)


PLOTTERS = {"priority": plot_priority, "fairness": plot_fairness, "queueing": plot_queueing}


def write_outputs(data: dict, json_path: Path) -> list[Path]:
    """`<stem>.md` and `<stem>-<scenario>.png` next to `<stem>.json`."""
    stem = json_path.with_suffix("")
    plots: dict[str, str] = {}
    written = []
    for name, desc in (data["meta"].get("scenarios") or {}).items():
        # A one-scenario run is already named for it (flowcontrol-queueing.json): no second suffix.
        path = Path(f"{stem}.png") if stem.name.endswith(f"-{name}") else Path(f"{stem}-{name}.png")
        if name in PLOTTERS:
            p = PLOTTERS[name](data["rows"], data["meta"], path)
        elif "workloads" in desc:
            p = plot_queueing(data["rows"], data["meta"], path, name)
        else:
            continue
        if p is not None:
            plots[name] = p.name
            written.append(p)
    md = json_path.with_suffix(".md")
    md.write_text(render(data, plots))
    return [md, *written]
