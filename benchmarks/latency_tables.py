"""Markdown tables for BENCHMARKS.md from the JSON reports `benchmarks/latency_parity.sh` writes.

    .venv/bin/python benchmarks/latency_tables.py artifacts/bench
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from edge_retina.bench import metrics
from edge_retina.screener import STAGES


def latency_table(report: dict) -> list[str]:
    lines = ["| pipeline | " + " | ".join(STAGES) + " | total p90 | total CPU | engine alone | overhead over engine "
             "| speed-up vs research (wall / CPU) |", "|---|" + "---:|" * (len(STAGES) + 5)]
    for name, p in report["pipelines"].items():
        stages = [f"{p['stages_ms'][s]['median']:.1f}" if s in p["stages_ms"] else "" for s in STAGES]
        overhead = p.get("runtime_overhead_over_engine")
        speedup = p.get("speedup_vs_baseline")
        overhead_text = "" if overhead is None else f"{overhead:+.1%}"
        speedup_text = "1.00x" if speedup is None else f"{speedup:.2f}x / {p['cpu_speedup_vs_baseline']:.2f}x"
        lines.append(
            f"| {name} | " + " | ".join(stages)
            + f" | {p['stages_ms']['total']['p90']:.1f} | {p['cpu_ms']['median']:.1f} | {p['engine_ms']['median']:.1f}"
            + f" | {overhead_text} | {speedup_text} |")
    return lines


def system_table(report: dict) -> list[str]:
    lines = ["| pipeline | batch-1 images/s | 2 streams images/s | bundle load to first result, ms (median) "
             "| process start to first result, ms | peak RSS, MB |", "|---|---:|---:|---:|---:|---:|"]
    for name, p in report["pipelines"].items():
        tp = p.get("throughput_images_per_s") or {}
        runs = (p.get("cold_start") or {}).get("runs") or []
        med = (lambda key: f"{statistics.median(r[key] for r in runs):.0f}") if runs else (lambda key: "")
        lines.append(f"| {name} | {tp.get('batch1', 0):.1f} | {'' if tp.get('streams_2') is None else format(tp['streams_2'], '.1f')} | "
                     f"{med('load_to_first_result_ms')} | {med('process_to_first_result_ms')} | {med('peak_rss_mb')} |")
    return lines


def parity_table(folder: Path) -> list[str]:
    lines = ["| dataset | condition | n+ / n- | threshold | model | AUROC | ΔAUROC [95 % CI] | DeLong p | retention "
             "| sensitivity | specificity | decisions as teacher |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    counts = []
    for path in sorted(folder.glob("parity-*.json")):
        report = json.loads(path.read_text())
        for row in report["conditions"]:
            for name, model in row["models"].items():
                delta, ci = model.get("delta_auroc"), model.get("delta_ci95") or [None, None]
                delta_text = "reference" if delta is None else f"{delta:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
                p_value = "" if model.get("delong_p") is None else f"{model['delong_p']:.3g}"
                agreement = "" if model.get("decision_agreement") is None else f"{model['decision_agreement']:.1%}"
                retention = "" if model.get("retention") is None else f"{model['retention']:.2f}"
                auroc = metrics.format_auroc(model["auroc"], row["n_pos"], row["n_neg"])
                lines.append(
                    f"| {path.stem.removeprefix('parity-')} | {row['condition']} | {row['n_pos']} / {row['n_neg']} "
                    f"| {row['threshold']:.3f} | {name} | {auroc} | {delta_text} | {p_value} | {retention} "
                    f"| {model.get('sensitivity', float('nan')):.1%} | {model.get('specificity', float('nan')):.1%} "
                    f"| {agreement} |")
            counts.append((row["n_pos"], row["n_neg"]))
    footnote = metrics.few_labels_footnote(counts)
    if footnote:
        lines += ["", footnote]
    return lines


def main(folder: str) -> None:
    folder = Path(folder)
    for name in ("latency-12mp.json", "latency-heimed-full.json"):
        report = json.loads((folder / name).read_text())
        print(f"\n#### {name}\n")
        print("\n".join(latency_table(report)))
        print()
        print("\n".join(system_table(report)))
    if list(folder.glob("parity-*.json")):
        print("\n#### parity\n")
        print("\n".join(parity_table(folder)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "artifacts/bench")
