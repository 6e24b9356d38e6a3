"""The report document rendered for people: JSON text, a terminal table (rich) and one HTML page.

The HTML page is self-contained (inline CSS and server-side SVG, no script, font, style sheet or
image fetched from anywhere), so it can be mailed, archived and opened offline. Every string that
comes from a config or from the data is escaped: a description is free text.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from router.reports.model import ComparisonReport, MetricReport, Report, VariantReport


def render_json(report: Report) -> str:
    """The report as JSON text; refuses NaN, which would make it invalid JSON."""
    return json.dumps(report, indent=2, allow_nan=False)


# -- verdicts, shared by the table and the page -------------------------------------------------


class Tone(StrEnum):
    """How a verdict reads; the metric's good direction is not configured, so no good/bad colours."""

    HIGHER = "higher"  # the always-valid interval excludes 0, above
    LOWER = "lower"
    PROVISIONAL = "provisional"  # significant at the fixed horizon only
    FLAT = "flat"  # no detectable difference
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One sentence about one treatment of one metric."""

    variant: str
    tone: Tone
    text: str


def verdicts(metric: MetricReport, alpha: float) -> list[Verdict]:
    """What a reader should conclude about each treatment of `metric`, in one sentence each."""
    several = len(metric["comparisons"]) > 1
    return [_verdict(metric["control"], c, alpha, several) for c in metric["comparisons"]]


def _verdict(control: str, c: ComparisonReport, alpha: float, several: bool) -> Verdict:
    name = c["variant"]
    lift, p, seq_p = c["relative_lift"], c["p_value"], c["sequential_p_value"]
    if c["status"] != "ok" or lift is None or p is None or seq_p is None:
        why = c["detail"] or c["reason"] or "no estimate"
        return Verdict(name, Tone.INSUFFICIENT, f"{name} vs {control}: not enough data yet ({why}).")
    direction = "higher" if lift > 0 else "lower"
    fixed = f"{_pct(lift)} (95% CI {_pct(c['ci_low'])} to {_pct(c['ci_high'])}, p = {_p(p)})"
    always = f"{_pct(c['sequential_ci_low'])} to {_pct(c['sequential_ci_high'])}"
    holm = c["p_value_holm"]
    if seq_p < alpha and not (several and holm is not None and holm >= alpha):
        tone = Tone.HIGHER if lift > 0 else Tone.LOWER
        return Verdict(
            name,
            tone,
            f"{name} is {direction} than {control}: {fixed}. The always-valid interval ({always}) excludes 0, "
            "so this holds however often the report was read.",
        )
    if p < alpha:
        if several and holm is not None and holm >= alpha:
            caveat = f"after Holm correction over the treatments p = {_p(holm)}: treat it as a lead, not a result"
        else:
            caveat = f"the always-valid interval ({always}) still includes 0: keep collecting before acting on it"
        return Verdict(name, Tone.PROVISIONAL, f"{name} looks {direction} than {control}: {fixed}, but {caveat}.")
    return Verdict(name, Tone.FLAT, f"No detectable difference between {name} and {control} yet: {fixed}.")


# -- number formats ------------------------------------------------------------------------------

DASH: Final = "\u2014"


def _pct(x: float | None, *, signed: bool = True) -> str:
    if x is None:
        return DASH
    value = x * 100
    digits = 2 if abs(value) < 1 else 1
    return f"{value:+.{digits}f}%" if signed else f"{value:.{digits}f}%"


def _p(p: float | None) -> str:
    if p is None:
        return DASH
    return "<0.0001" if p < 1e-4 else f"{p:.3g}"


def _num(x: float | None) -> str:
    return DASH if x is None else f"{x:.4g}"


def _mean(x: float | None, kind: str) -> str:
    return _pct(x, signed=False) if kind == "binomial" else _num(x)


def _ms(x: float | None) -> str:
    return DASH if x is None else f"{x:.1f}"


def _int(n: int) -> str:
    return f"{n:,}"


# -- terminal table ------------------------------------------------------------------------------

_TONE_STYLES: Final = {
    Tone.HIGHER: "bold blue",
    Tone.LOWER: "bold dark_orange",
    Tone.PROVISIONAL: "yellow",
    Tone.FLAT: "",
    Tone.INSUFFICIENT: "dim",
}


def report_renderable(report: Report) -> RenderableType:
    """The report as rich renderables for a terminal; config strings are Text, never markup."""
    parts: list[RenderableType] = [
        Text.assemble(
            ("Experiment ", "bold"),
            (report["experiment"], "bold cyan"),
            f"  config v{report['config_version']} · {report['status']} · "
            f"{_int(report['total_units'])} exposed units · {report['generated_at']}",
        )
    ]
    srm = report["srm"]
    if not srm["passed"]:
        parts.append(Panel(Text(srm["message"], style="bold"), title="SAMPLE RATIO MISMATCH", style="red"))
    else:
        parts.append(Text(srm["message"], style="green" if srm["p_value"] is not None else "dim"))
    parts.append(_variants_table(report["variants"]))
    for metric in report["metrics"]:
        parts.append(_metric_table(metric))
        parts.extend(Text("  " + v.text, style=_TONE_STYLES[v.tone]) for v in verdicts(metric, report["alpha"]))
    return Group(*parts)


def render_table(report: Report, *, width: int = 140) -> str:
    """The terminal table as plain text (no colour codes), for files and tests."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False).print(
        report_renderable(report)
    )
    return buffer.getvalue()


def _variants_table(variants: Sequence[VariantReport]) -> Table:
    table = Table(title=Text("Variants"), box=box.SIMPLE_HEAVY, title_justify="left")
    for header in ("variant", "weight", "units", "share", "requests", "errors", "error rate", "p50 ms", "p95 ms"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    table.add_column("p99 ms", justify="right")
    for v in variants:
        table.add_row(
            Text(v["name"] + (" (control)" if v["control"] else "")),
            _pct(v["weight"], signed=False),
            _int(v["units"]),
            f"{_pct(v['observed_share'], signed=False)} / {_pct(v['expected_share'], signed=False)}",
            _int(v["requests"]),
            _int(v["errors"]),
            _pct(v["error_rate"], signed=False),
            _ms(v["latency_ms"]["p50"]),
            _ms(v["latency_ms"]["p95"]),
            _ms(v["latency_ms"]["p99"]),
        )
    return table


def _metric_table(metric: MetricReport) -> Table:
    table = Table(title=Text(f"Metric {metric['name']} ({metric['kind']})"), box=box.SIMPLE_HEAVY, title_justify="left")
    headers = ("variant", "units", "mean", "lift", "95% CI", "p", "p Holm", "P(beat ctrl)", "always-valid CI", "seq p")
    for header in headers:
        table.add_column(header, justify="left" if header == "variant" else "right")
    comparisons = {c["variant"]: c for c in metric["comparisons"]}
    for arm in metric["arms"]:
        name = arm["variant"]
        cells: list[str | Text] = [Text(name), _int(arm["units"]), _mean(arm["mean"], metric["kind"])]
        c = comparisons.get(name)
        if c is None:
            cells += ["control", "", "", "", "", "", ""]
        elif c["status"] != "ok":
            cells += [Text(f"no estimate: {c['reason']}", style="dim"), "", "", "", "", "", ""]
        else:
            cells += [
                _pct(c["relative_lift"]),
                f"{_pct(c['ci_low'])} to {_pct(c['ci_high'])}",
                _p(c["p_value"]),
                _p(c["p_value_holm"]),
                _pct(c["chance_to_beat_control"], signed=False),
                f"{_pct(c['sequential_ci_low'])} to {_pct(c['sequential_ci_high'])}",
                _p(c["sequential_p_value"]),
            ]
        table.add_row(*cells)
    return table


# -- HTML page -----------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escape for HTML text and attribute values alike."""
    return html.escape(str(value), quote=True)


_CSS: Final = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#d9e2ec; --bg:#ffffff; --panel:#f5f7fa;
        --higher:#1f6fb4; --lower:#c8590a; --provisional:#a16207; --bad:#b42318; --good:#1b7f3b; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; } h1 code { font-size: 24px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.meta, .muted, figcaption { color: var(--muted); }
.description { margin: 6px 0 0; }
.banner { border-radius: 6px; padding: 12px 16px; margin: 18px 0; }
.srm-fail { background: #fdecea; border: 2px solid var(--bad); color: #7a1a12; }
.srm-fail strong { display:block; font-size: 17px; color: var(--bad); }
.srm-ok { background: #edf7ef; border: 1px solid #b7dfc1; color: #14532d; }
.srm-unknown { background: var(--panel); border: 1px solid var(--line); color: var(--muted); }
ul.verdicts { list-style: none; padding: 0; margin: 0; }
ul.verdicts li { padding: 6px 10px 6px 12px; margin: 4px 0; border-left: 4px solid var(--line);
                 background: var(--panel); border-radius: 0 4px 4px 0; }
li.tone-higher { border-left-color: var(--higher); } li.tone-lower { border-left-color: var(--lower); }
li.tone-provisional { border-left-color: var(--provisional); } li.tone-insufficient { color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 14px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 6px 7px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { font-size: 12px; line-height: 1.25; color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line);
     white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
td.note { text-align: left; color: var(--muted); white-space: normal; }
tr.control td { background: var(--panel); }
.tag { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
       border: 1px solid var(--line); border-radius: 3px; padding: 0 4px; margin-left: 6px; }
figure { margin: 12px 0 8px; } svg { display: block; max-width: 100%; height: auto; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: var(--ink); }
svg text.axis { fill: var(--muted); font-size: 11px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 8px 32px; }
footer { margin-top: 40px; font-size: 13px; color: var(--muted); border-top: 1px solid var(--line); padding-top: 12px; }
"""

_TONE_COLOURS: Final = {
    Tone.HIGHER: "#1f6fb4",
    Tone.LOWER: "#c8590a",
    Tone.PROVISIONAL: "#a16207",
    Tone.FLAT: "#52606d",
    Tone.INSUFFICIENT: "#9aa5b1",
}


def render_html(report: Report) -> str:
    """One self-contained page: verdicts, SRM banner, a table and a lift chart per metric, operations."""
    name = _e(report["experiment"])
    description = report["description"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Experiment report: {name}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<header><h1>Experiment <code>{name}</code></h1>",
        f'<p class="meta">config version {_e(report["config_version"])} · status {_e(report["status"])} · '
        f"{_e(_int(report['total_units']))} exposed units · generated {_e(report['generated_at'])}</p>",
        f'<p class="description">{_e(description)}</p>' if description else "",
        "</header>",
        _srm_html(report),
        _verdicts_html(report),
    ]
    for metric in report["metrics"]:
        parts.append(_metric_html(metric, report["alpha"]))
    parts.append(_operations_html(report))
    parts.append(_FOOTER.format(alpha=_e(f"{report['alpha']:g}"), threshold=_e(f"{report['srm']['threshold']:g}")))
    parts.append("</main></body></html>")
    return "\n".join(part for part in parts if part)


_FOOTER: Final = """<footer><p><strong>How to read this page.</strong> Each treatment is compared with the control
on the relative lift <code>(mean_t - mean_c) / |mean_c|</code>. The 95% CI and p-value are Welch t-tests
(alpha {alpha}) and are valid once, at a sample size fixed in advance; p (Holm) corrects them for several
treatments. The always-valid interval and sequential p-value (GrowthBook's asymptotic confidence sequence,
tuned for 5000 units) stay valid however often this page is read: act on those when peeking.
Chance to beat control and risk come from a flat-prior Gaussian posterior; risk is the expected relative loss
of keeping the control and of shipping the treatment. The sample-ratio check is a chi-square test of units
against the configured weights (fails below p = {threshold}); the sequential SRM p-value is Optimizely's
ssrm. Methods and references: docs/statistics.md.</p></footer>"""


def _srm_html(report: Report) -> str:
    srm = report["srm"]
    sequential = srm["sequential_p_value"]
    seq_note = f" Sequential SRM p = {_p(sequential)}." if sequential is not None else ""
    if not srm["passed"]:
        return (
            '<div class="banner srm-fail" role="alert"><strong>Sample ratio mismatch</strong>'
            f"{_e(srm['message'])}{_e(seq_note)}</div>"
        )
    css = "srm-ok" if srm["p_value"] is not None else "srm-unknown"
    return f'<p class="banner {css}">{_e(srm["message"])}{_e(seq_note)}</p>'


def _verdicts_html(report: Report) -> str:
    if not report["metrics"]:
        return '<section><h2>Verdicts</h2><p class="muted">The experiment declares no metrics.</p></section>'
    items = []
    for metric in report["metrics"]:
        items.append(f"<h3>{_e(metric['name'])} <span class='tag'>{_e(metric['kind'])}</span></h3>")
        lines = [f'<li class="tone-{v.tone}">{_e(v.text)}</li>' for v in verdicts(metric, report["alpha"])] or [
            '<li class="tone-insufficient">No treatment to compare.</li>'
        ]
        items.append('<ul class="verdicts">' + "".join(lines) + "</ul>")
    return "<section><h2>Verdicts</h2>" + "".join(items) + "</section>"


def _html_table(headers: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _metric_html(metric: MetricReport, alpha: float) -> str:
    headers = [
        "Variant",
        "Units",
        "Mean",
        "Absolute effect",
        "Lift",
        "95% CI",
        "p",
        "p (Holm)",
        "Chance to beat control",
        "Risk: keep control / ship",
        "Always-valid 95% CI",
        "Sequential p",
    ]
    rows = []
    comparisons = {c["variant"]: c for c in metric["comparisons"]}
    kind = metric["kind"]
    for arm in metric["arms"]:
        name = arm["variant"]
        c = comparisons.get(name)
        head = [_e(name) + (' <span class="tag">control</span>' if c is None else ""), _e(_int(arm["units"]))]
        head.append(_e(_mean(arm["mean"], kind)))
        if c is None:
            cells = [*head, *([DASH] * (len(headers) - 3))]
            rows.append('<tr class="control">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
            continue
        if c["status"] != "ok":
            note = f'<td class="note" colspan="{len(headers) - 3}">not enough data: {_e(c["detail"])}</td>'
            rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in head) + note + "</tr>")
            continue
        absolute = _pct(c["absolute_effect"]) if kind == "binomial" else _num(c["absolute_effect"])
        risk = c["risk"]
        cells = [
            *head,
            _e(absolute),
            f"<strong>{_e(_pct(c['relative_lift']))}</strong>",
            _e(f"{_pct(c['ci_low'])} to {_pct(c['ci_high'])}"),
            _e(_p(c["p_value"])),
            _e(_p(c["p_value_holm"])),
            _e(_pct(c["chance_to_beat_control"], signed=False)),
            _e(DASH if risk is None else f"{_pct(risk[0], signed=False)} / {_pct(risk[1], signed=False)}"),
            _e(f"{_pct(c['sequential_ci_low'])} to {_pct(c['sequential_ci_high'])}"),
            _e(_p(c["sequential_p_value"])),
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    table = _html_table(headers, rows)
    if any(c["status"] == "ok" for c in metric["comparisons"]):
        caption = (
            "Relative lift of each treatment over the control: the dark bar is the fixed-horizon 95% CI, "
            "the pale band the always-valid 95% interval, the dot the estimate; the vertical line is no effect."
        )
        figure = f"<figure>{_lift_chart(metric, alpha)}<figcaption>{_e(caption)}</figcaption></figure>"
    else:
        figure = "<p class='muted'>No lift to chart until a treatment and the control have enough data.</p>"
    return (
        f"<section><h2>Metric <code>{_e(metric['name'])}</code> <span class='tag'>{_e(kind)}</span></h2>"
        f"<p class='muted'>control: {_e(metric['control'])}</p>{table}{figure}</section>"
    )


def _operations_html(report: Report) -> str:
    headers = ["Variant", "Weight", "Units", "Observed share", "Requests", "Errors", "Error rate", "p50", "p95", "p99"]
    rows = []
    for v in report["variants"]:
        name = _e(v["name"]) + (' <span class="tag">control</span>' if v["control"] else "")
        cells = [
            name,
            _e(_pct(v["weight"], signed=False)),
            _e(_int(v["units"])),
            _e(_pct(v["observed_share"], signed=False)),
            _e(_int(v["requests"])),
            _e(_int(v["errors"])),
            _e(_pct(v["error_rate"], signed=False)),
            *(_e(_ms(v["latency_ms"][q])) for q in ("p50", "p95", "p99")),
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    table = _html_table(headers, rows)
    table += "<p class='muted'>Latency in milliseconds, interpolated from the shared histograms.</p>"
    return (
        "<section><h2>Traffic and operations</h2>"
        + table
        + '<div class="grid">'
        + f"<figure>{_share_chart(report['variants'])}<figcaption>Share of exposed units per variant; "
        "the black tick is the configured share.</figcaption></figure>"
        + f"<figure>{_error_chart(report['variants'])}<figcaption>Error rate per variant "
        "(errors over requests).</figcaption></figure>"
        + f"<figure>{_latency_chart(report['variants'])}<figcaption>Latency p50, p95 and p99 per variant, "
        "in milliseconds.</figcaption></figure>" + "</div></section>"
    )


# -- inline SVG charts ---------------------------------------------------------------------------

_WIDTH: Final = 980
_BAR_CHART_WIDTH: Final = 540  # two side by side on a wide screen
_LABEL_W: Final = 150
_RIGHT_PAD: Final = 24
_LABEL_CHARS: Final = 20  # longer variant names are cut in charts; the tooltip has them whole


def _short(name: str) -> str:
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "\u2026"


def _svg(width: int, height: float, label: str, body: Sequence[str]) -> str:
    # No xmlns: inline SVG in HTML needs none, and the page then names no URL at all.
    return (
        f'<svg viewBox="0 0 {width} {height:.0f}" width="{width}" height="{height:.0f}" role="img" '
        f'aria-label="{_e(label)}">' + "".join(body) + "</svg>"
    )


def _ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round tick values covering [low, high]."""
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step)
    last = math.floor(high / step)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _tick_label(x: float, y: float, text: str) -> str:
    return f'<text class="axis" x="{x:.1f}" y="{y:.1f}" text-anchor="middle">{_e(text)}</text>'


def _lift_chart(metric: MetricReport, alpha: float) -> str:
    comparisons = metric["comparisons"]
    if not comparisons:
        return '<p class="muted">No treatment to compare.</p>'
    values = [0.0]
    for c in comparisons:
        values += [
            x for x in (c["ci_low"], c["ci_high"], c["sequential_ci_low"], c["sequential_ci_high"]) if x is not None
        ]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.01, high + 0.01
    pad = (high - low) * 0.08
    low, high = low - pad, high + pad
    row_h, top = 44, 12
    plot_w = _WIDTH - _LABEL_W - _RIGHT_PAD
    height = top + row_h * len(comparisons) + 58

    def x(v: float) -> float:
        return _LABEL_W + (v - low) / (high - low) * plot_w

    axis_y = top + row_h * len(comparisons)
    body: list[str] = []
    for tick in _ticks(low, high):
        body.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{axis_y}" stroke="#e4e7eb"/>')
        body.append(_tick_label(x(tick), axis_y + 16, f"{tick * 100:g}%"))
    body.append(
        f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 4}" y2="{axis_y}" stroke="#1f2933" stroke-width="1.5"/>'
    )
    tones = {v.variant: v.tone for v in verdicts(metric, alpha)}
    for i, c in enumerate(comparisons):
        mid = top + row_h * i + row_h / 2
        body.append(f'<text x="{_LABEL_W - 10}" y="{mid + 4:.1f}" text-anchor="end">{_e(_short(c["variant"]))}</text>')
        lift, lo, hi, slo, shi = (
            c["relative_lift"],
            c["ci_low"],
            c["ci_high"],
            c["sequential_ci_low"],
            c["sequential_ci_high"],
        )
        if lift is None or lo is None or hi is None or slo is None or shi is None:
            body.append(
                f'<text class="axis" x="{_LABEL_W + 8}" y="{mid + 4:.1f}">not enough data: {_e(c["reason"])}</text>'
            )
            continue
        colour = _TONE_COLOURS[tones.get(c["variant"], Tone.FLAT)]
        tip = (
            f"{c['variant']}: lift {_pct(lift)}; 95% CI {_pct(lo)} to {_pct(hi)}; "
            f"always-valid {_pct(slo)} to {_pct(shi)}"
        )
        body.append(
            f"<g><title>{_e(tip)}</title>"
            f'<rect x="{x(slo):.1f}" y="{mid - 9:.1f}" width="{max(x(shi) - x(slo), 1):.1f}" height="18" '
            f'rx="3" fill="{colour}" fill-opacity="0.18"/>'
            f'<rect x="{x(lo):.1f}" y="{mid - 3:.1f}" width="{max(x(hi) - x(lo), 1):.1f}" height="6" '
            f'rx="2" fill="{colour}"/>'
            f'<circle cx="{x(lift):.1f}" cy="{mid:.1f}" r="5.5" fill="#ffffff" stroke="{colour}" stroke-width="2.5"/>'
            "</g>"
        )
    legend_y = axis_y + 40
    body.append(
        f'<rect x="{_LABEL_W}" y="{legend_y - 9}" width="26" height="6" rx="2" fill="#52606d"/>'
        f'<text class="axis" x="{_LABEL_W + 32}" y="{legend_y - 2}">95% CI (fixed horizon)</text>'
        f'<rect x="{_LABEL_W + 190}" y="{legend_y - 12}" width="26" height="14" rx="3" fill="#52606d" '
        'fill-opacity="0.18"/>'
        f'<text class="axis" x="{_LABEL_W + 222}" y="{legend_y - 2}">always-valid 95% interval (sequential)</text>'
        f'<circle cx="{_LABEL_W + 478}" cy="{legend_y - 6}" r="5" fill="#ffffff" stroke="#52606d" stroke-width="2.5"/>'
        f'<text class="axis" x="{_LABEL_W + 490}" y="{legend_y - 2}">estimate</text>'
    )
    return _svg(_WIDTH, height, f"relative lift of each treatment of {metric['name']} with its intervals", body)


@dataclass(frozen=True, slots=True)
class _Bar:
    value: float | None
    colour: str
    label: str


def _bar_chart(
    title: str,
    rows: Sequence[tuple[str, Sequence[_Bar]]],
    *,
    maximum: float,
    markers: Sequence[float | None] = (),
    tick_format: str = "{:g}",
) -> str:
    """Horizontal bars, one group per row, each bar labelled with its value."""
    bar_h, gap = 14, 4
    value_w = 170  # room for the value labels right of the longest bar
    plot_w = _BAR_CHART_WIDTH - _LABEL_W - value_w
    maximum = maximum if maximum > 0 else 1.0
    top = 8
    heights = [len(bars) * (bar_h + gap) + 12 for _, bars in rows]
    axis_y = top + sum(heights)
    body: list[str] = []
    for tick in _ticks(0.0, maximum, 4):
        tx = _LABEL_W + tick / maximum * plot_w
        body.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{axis_y}" stroke="#e4e7eb"/>')
        body.append(_tick_label(tx, axis_y + 15, tick_format.format(tick)))
    y = top
    for index, ((name, bars), row_h) in enumerate(zip(rows, heights, strict=True)):
        body.append(
            f'<text x="{_LABEL_W - 10}" y="{y + row_h / 2 + 2:.1f}" text-anchor="end">{_e(_short(name))}</text>'
        )
        by = y + 6
        for bar in bars:
            width = 0.0 if bar.value is None else max(min(bar.value / maximum, 1.0), 0.0) * plot_w
            body.append(
                f"<g><title>{_e(name + ': ' + bar.label)}</title>"
                f'<rect x="{_LABEL_W}" y="{by:.1f}" width="{width:.1f}" height="{bar_h}" rx="2" fill="{bar.colour}"/>'
                f'<text class="axis" x="{_LABEL_W + width + 6:.1f}" y="{by + bar_h - 3:.1f}">{_e(bar.label)}</text></g>'
            )
            by += bar_h + gap
        marker = markers[index] if index < len(markers) else None
        if marker is not None:
            mx = _LABEL_W + min(marker / maximum, 1.0) * plot_w
            body.append(
                f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{y + 2:.1f}" y2="{y + row_h - 4:.1f}" '
                'stroke="#1f2933" stroke-width="2.5"/>'
            )
        y += row_h
    body.append(f'<line x1="{_LABEL_W}" x2="{_LABEL_W}" y1="{top}" y2="{axis_y}" stroke="#9aa5b1"/>')
    return _svg(_BAR_CHART_WIDTH, axis_y + 24, title, body)


def _share_chart(variants: Sequence[VariantReport]) -> str:
    rows = [
        (
            v["name"],
            [
                _Bar(
                    v["observed_share"],
                    "#3e7cb1",
                    f"{_pct(v['observed_share'], signed=False)} observed, {_pct(v['expected_share'], signed=False)} "
                    "configured",
                )
            ],
        )
        for v in variants
    ]
    return _bar_chart(
        "share of exposed units per variant against the configured share",
        rows,
        maximum=1.0,
        markers=[v["expected_share"] for v in variants],
        tick_format="{:.0%}",
    )


def _error_chart(variants: Sequence[VariantReport]) -> str:
    rates = [v["error_rate"] for v in variants]
    highest = max((r for r in rates if r is not None), default=0.0)
    rows = [
        (
            v["name"],
            [
                _Bar(
                    v["error_rate"],
                    "#c2410c",
                    f"{_pct(v['error_rate'], signed=False)} ({_int(v['errors'])} of {_int(v['requests'])})",
                )
            ],
        )
        for v in variants
    ]
    return _bar_chart(
        "error rate per variant", rows, maximum=highest * 1.15 if highest > 0 else 0.01, tick_format="{:.1%}"
    )


def _latency_chart(variants: Sequence[VariantReport]) -> str:
    shades: dict[Literal["p50", "p95", "p99"], str] = {"p50": "#9ecae1", "p95": "#4292c6", "p99": "#08519c"}
    highest = max((v["latency_ms"]["p99"] or v["latency_ms"]["p95"] or 0.0 for v in variants), default=0.0)
    rows = [
        (
            v["name"],
            [_Bar(v["latency_ms"][q], colour, f"{q} {_ms(v['latency_ms'][q])} ms") for q, colour in shades.items()],
        )
        for v in variants
    ]
    return _bar_chart(
        "latency quantiles per variant in milliseconds",
        rows,
        maximum=highest * 1.1 if highest > 0 else 1.0,
        tick_format="{:g} ms",
    )
