"""The chaos report: Markdown and JSON, with an SVG chart of recovery times per scenario."""
from __future__ import annotations

import html
import json
import statistics
from dataclasses import asdict
from pathlib import Path

from blackbox.events import format_ts
from chaos.harness import Outcome


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


def summarize(outcomes: list[Outcome]) -> list[dict]:
    """One row per (scenario, mode): injections, failures, recovery p50/p95/max."""
    rows: dict[tuple[str, str], dict] = {}
    for o in outcomes:
        r = rows.setdefault((o.scenario, o.mode), {"scenario": o.scenario, "mode": o.mode,
                                                   "injections": 0, "invariant_failures": 0,
                                                   "not_recovered": 0, "recovery": []})
        r["injections"] += 1
        r["invariant_failures"] += len(o.violations)
        if o.recovered and o.recovery_s is not None:
            r["recovery"].append(o.recovery_s)
        else:
            r["not_recovered"] += 1
    out = []
    for r in rows.values():
        rec = r.pop("recovery")
        r.update(p50=statistics.median(rec) if rec else None, p95=_pct(rec, 95),
                 max=max(rec) if rec else None)
        out.append(r)
    return out


def svg_chart(rows: list[dict]) -> str:
    """Horizontal bars: median recovery with a whisker to the max; red when not recovered."""
    bar_h, gap, left, width = 16, 8, 260, 420
    shown = sorted(rows, key=lambda r: (r["scenario"], r["mode"]))
    top = max((r["max"] or 0) for r in shown) if shown else 1
    top = max(top, 1.0)
    h = len(shown) * (bar_h + gap) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{h}" '
             'font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="14">recovery time (s), median bar, max whisker; 0 — {top:.1f} s</text>']
    for i, r in enumerate(shown):
        y = 24 + i * (bar_h + gap)
        label = html.escape(f"{r['scenario']} ({r['mode']})")
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{label}</text>')
        if r["p50"] is None:
            parts.append(f'<rect x="{left}" y="{y}" width="{width}" height="{bar_h}" fill="#e57373"/>')
            parts.append(f'<text x="{left + 4}" y="{y + 12}">never recovered</text>')
            continue
        w = max(1.0, r["p50"] / top * width)
        colour = "#64b5f6" if r["mode"] == "watchdog" else "#bdbdbd"
        if r["not_recovered"]:
            colour = "#ffb74d"
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
        mx = left + r["max"] / top * width
        parts.append(f'<line x1="{left + w:.1f}" y1="{y + bar_h / 2}" x2="{mx:.1f}" '
                     f'y2="{y + bar_h / 2}" stroke="#333"/>')
        note = f'{r["p50"]:.2f} s' + (f', {r["not_recovered"]} not recovered' if r["not_recovered"] else "")
        parts.append(f'<text x="{mx + 4:.1f}" y="{y + 12}">{html.escape(note)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def markdown(outcomes: list[Outcome], meta: dict) -> str:
    rows = summarize(outcomes)
    lines = [f"# tradeguard chaos report", "",
             f"- date: {meta['date']}", f"- command: `{meta['command']}`",
             f"- seed: {meta['seed']}, iterations per scenario: {meta['iterations']}",
             f"- result: **{'PASS' if meta['passed'] else 'FAIL'}** "
             f"({sum(o.failed for o in outcomes)} failed injections of "
             f"{sum(o.mode == 'watchdog' for o in outcomes)})", "",
             "| scenario | mode | injections | invariant failures | not recovered | recovery p50 | p95 | max |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["scenario"], r["mode"])):
        lines.append(f"| {r['scenario']} | {r['mode']} | {r['injections']} | "
                     f"{r['invariant_failures']} | {r['not_recovered']} | {_fmt(r['p50'])} | "
                     f"{_fmt(r['p95'])} | {_fmt(r['max'])} |")
    lines += ["", "Baseline rows run the same fault against the bot under plain supervisord "
              "without the watchdog (it restarts what exits, and never notices a hang).", "",
              "![recovery times](recovery.svg)", ""]
    failed = [o for o in outcomes if o.failed]
    if failed:
        lines += ["## Failures", ""]
        for o in failed:
            lines += [f"### {o.scenario} #{o.iteration} (seed `{o.seed}`)", "",
                      f"Reproduce: `tradeguard chaos run --scenario {o.scenario} "
                      f"--seed {meta['seed']} --iterations {o.iteration + 1} --keep`", ""]
            lines += [f"- **{v['invariant']}**: {v['detail']}" for v in o.violations]
            if not o.recovered:
                lines.append("- did not recover within the deadline")
            if o.note:
                lines.append(f"- note: {o.note}")
            lines += ["", "Black box (last events):", "", "```"]
            for e in o.blackbox[-30:]:
                when = format_ts(e["ts"]) if isinstance(e.get("ts"), (int, float)) else "?"
                lines.append(f"{when} {e.get('role', '')}[{e.get('pid', '')}] "
                             f"{e.get('kind', '')}: {e.get('message', '')}")
            lines += ["```", ""]
    return "\n".join(lines) + "\n"


def write(outcomes: list[Outcome], report_dir: Path, meta: dict) -> Path:
    """Write report.md, report.json and recovery.svg into ``report_dir``; return report.md."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "report.json").write_text(json.dumps(
        {"meta": meta, "summary": summarize(outcomes), "outcomes": [asdict(o) for o in outcomes]},
        indent=1, default=str))
    (report_dir / "recovery.svg").write_text(svg_chart(summarize(outcomes)))
    md = report_dir / "report.md"
    md.write_text(markdown(outcomes, meta))
    return md
