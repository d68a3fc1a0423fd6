"""A self-contained HTML report of a parity run and/or a latency run: what to attach to a release.

Overlaid ROC curves per condition (reference, each engine), the embedding-cosine distribution,
latency histograms per pipeline, and the same tables the CLI prints. Figures are matplotlib PNGs
embedded as base64, so the file is one page with no scripts and nothing to fetch.
"""
from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # no display on build machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge_retina.bench.latency import STAGES, latency_table_rows, system_table_rows  # noqa: E402
from edge_retina.bench.parity import ParityReport, parity_tables  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
.footnote { margin-top: -1.2em; font-size: 0.85em; color: #555; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.fail { color: #b00; font-weight: bold; } .pass { color: #070; font-weight: bold; }
img { max-width: 100%; } .figures { display: flex; flex-wrap: wrap; gap: 1em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(title: str, headers: list[str], rows: list[list[str]], footnote: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    under = f'<p class="footnote">{html.escape(footnote)}</p>' if footnote else ""
    return f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>{under}"


def _roc_figure(report: ParityReport, index: int) -> str:
    condition = report.conditions[index]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for k, (name, (fpr, tpr)) in enumerate(condition.roc.items()):
        # The engines usually overlay the reference exactly: dashes of growing length keep each visible.
        style = "-" if k == 0 else (0, (2 + 2 * k, 2 + k))
        ax.plot(fpr, tpr, linestyle=style, linewidth=1.6, label=f"{name} ({condition.models[name].auroc:.4f})")
    ax.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{condition.condition} (n+ {condition.n_pos}, n- {condition.n_neg})")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _cosine_figure(report: ParityReport) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, values in report.cosine.items():
        # 1 - cosine on a log axis: FP32 engines sit near 1e-13 (measured on the reference model),
        # quantised ones orders of magnitude higher; identical embeddings give 0, shown at the floor.
        distance = np.clip(1.0 - values, 1e-16, None)
        bins = np.logspace(-16, 0, 65)
        ax.hist(distance, bins=bins, histtype="step", linewidth=1.5, label=name)
    ax.set(xscale="log", xlabel=f"1 - cosine to {report.reference} (per image; 0 shown at 1e-16)",
           ylabel="images")
    ax.legend(fontsize=7)
    return _png(fig)


def _parity_section(report: ParityReport, max_drop: float | None, gate_baseline: str | None) -> str:
    parts = ["<h2>Accuracy parity</h2>",
             f"<p>Reference: <b>{html.escape(report.reference)}</b>; {report.n_images} images. "
             "ΔAUROC = engine - reference, with a paired stratified bootstrap 95 % CI and DeLong's test; "
             "sensitivity and specificity at the bundle's referral thresholds.</p>"]
    if max_drop is not None:
        failures = report.failures(max_drop, gate_baseline)
        verdict = ('<span class="fail">FAIL</span>: ' + html.escape("; ".join(failures))) if failures else \
            '<span class="pass">PASS</span>'
        baseline = html.escape(gate_baseline or report.reference)
        parts.append(f"<p>Release gate (no engine's AUROC more than {max_drop} below {baseline}'s): {verdict}</p>")
    parts.append('<div class="figures">' + "".join(_roc_figure(report, i) for i in range(len(report.conditions)))
                 + "</div>")
    parts += [_table(*t) for t in parity_tables(report)]
    if report.cosine:
        parts.append(_cosine_figure(report))
    if report.skipped:
        parts.append("<h3>Images left out</h3><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in report.skipped)
                     + "</ul>")
    return "\n".join(parts)


def _latency_figure(latency: dict[str, Any], stage: str) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    samples = {name: p["samples_ms"][stage] for name, p in latency["pipelines"].items() if stage in p["samples_ms"]}
    low = max(min(min(v) for v in samples.values()), 1e-3)
    high = max(max(v) for v in samples.values())
    # A log axis only when the pipelines differ by an order of magnitude (research baseline vs engines).
    logarithmic = high / low > 10
    bins = np.logspace(math.log10(low), math.log10(high * 1.01), 40) if logarithmic else np.linspace(low, high, 40)
    for name, values in samples.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name)
    if logarithmic:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set(xlabel=f"{stage} ms", ylabel="runs", title=f"{stage} latency")
    ax.legend(fontsize=7)
    return _png(fig)


def _latency_section(latency: dict[str, Any]) -> str:
    machine = latency["machine"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    parts = [
        "<h2>Latency</h2>",
        f"<p>{len(latency['images'])} images x {latency['iterations']} rounds, pipelines interleaved; threads "
        f"{latency['threads'] or 'backend default'}. Machine: {html.escape(str(machine['cpu_model']))}, "
        f"{machine['usable_cores']} usable cores, flags {html.escape(' '.join(machine['cpu_flags']))}, "
        f"load average {machine['load_average_1min']}; {html.escape(libraries)}.</p>",
        '<div class="figures">' + _latency_figure(latency, "total") + _latency_figure(latency, "inference") + "</div>",
        _table(f"Per stage, median ms; speed-up against {latency['baseline']}", *latency_table_rows(latency)),
        _table("Throughput, cold start, memory", *system_table_rows(latency)),
    ]
    return "\n".join(parts)


def write_report(path: Path, *, parity: ParityReport | None = None, latency: dict[str, Any] | None = None,
                 max_drop: float | None = None, gate_baseline: str | None = None,
                 title: str = "edge-retina bench report") -> Path:
    """Write the HTML report; ``latency`` is ``LatencyReport.to_dict()`` (or the JSON it was saved as)."""
    if parity is None and latency is None:
        raise ValueError("nothing to report: give a parity report, a latency report or both")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = ([_parity_section(parity, max_drop, gate_baseline)] if parity is not None else []) + \
        ([_latency_section(latency)] if latency is not None else [])
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>Created {created}. "
            f"Stages: {', '.join(STAGES)}.</p>{''.join(sections)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
