"""Benchmark: the default bundle's INT8 engines through the accuracy guard's whole ladder, QAT included.

Runs ``convert`` exactly as ``make demo`` does (``converters.demo.demo_settings``: calibrated on 128
training-split images, guarded on every labelled non-test image not calibrated on, thresholded on the
validation splits) with ``--qat`` set, into a fresh step cache (``--cache-dir``, default a temporary
folder) so every step is timed from scratch, then reports per INT8 engine what shipped, by which
rung (post-training, layers excluded, QAT), every guard check with its margin, and the QAT wall time.
Then the speed of each engine alone (a prepared tensor, batch 1, ``--threads`` threads, engines
interleaved in rotating order, ``--rounds`` rounds): medians, and ratios to ONNX Runtime FP32.

    nice -n 10 .venv/bin/python benchmarks/bench_int8_qat.py --json bench_int8_qat.json
    .venv/bin/python benchmarks/bench_int8_qat.py --report bench_int8_qat.json   # the tables again

``--student`` takes another distilled student (.safetensors); the default is the default bundle's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_int8 import interleaved_ms

REPO = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from converters.convert_pipeline import EngineTarget, convert
    from converters.demo import default_recipe, demo_settings
    from converters.teachers import load_teacher
    from edge_retina.backends import create_runner
    from edge_retina.bench.machine import machine_info
    from edge_retina.bundle import load_bundle

    teacher = load_teacher("reference")
    recipe = default_recipe(teacher)
    if args.student:
        from converters.distill.bundling import student_recipe

        recipe = student_recipe(teacher, args.student)
    settings = demo_settings(args.datasets)
    validated = set(settings.validation.labels)
    recipe.conditions = [c for c in recipe.conditions if c.normal or c.name in validated]
    targets = [EngineTarget("onnxruntime", "fp32"), EngineTarget("openvino", "fp32"),
               EngineTarget("onnxruntime", "int8"), EngineTarget("openvino", "int8")]
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="bench-int8-qat-"))
    settings = replace(settings, targets=targets, qat=args.qat, cache_dir=cache, threads=args.threads)
    log: list[tuple[float, str]] = []
    started = time.time()

    def progress(message: str) -> None:
        log.append((round(time.time() - started, 1), message))
        print(f"[{time.time() - started:7.1f} s] {message}", flush=True)

    bundle_dir = convert(recipe, Path(tempfile.mkdtemp(prefix="bench-int8-qat-bundle-")) / "bundle", settings,
                         progress=progress)
    convert_seconds = time.time() - started
    manifest = load_bundle(bundle_dir).manifest
    engines = {}
    for e in manifest.engines:
        guard = e.notes.get("accuracy_guard")
        engines[e.describe()] = {
            "backend": e.backend, "precision": e.precision,
            "method": (e.fallback or {}).get("method", "qat" if "qat" in e.notes else "ptq") if guard else None,
            "excluded_nodes": (e.fallback or {}).get("excluded_nodes", []),
            "attempts": [{"precision": a["precision"], "method": a["method"], "excluded": len(a["excluded_nodes"]),
                          "passed": a["check"]["passed"], "failures": a["check"]["failures"]}
                         for a in (e.fallback or {}).get("attempts", [])],
            "guard": guard, "qat": e.notes.get("qat"),
        }

    # Engine alone, interleaved: the bundle's engines, and the QAT artefacts when the ladder made them
    # (whether or not they shipped), from the step cache.
    size = manifest.input.size
    tensor = np.random.default_rng(0).normal(size=(1, 3, *size)).astype(np.float32)
    runners = {name: create_runner("onnxruntime" if e.backend == "tensorrt" else e.backend,
                                   bundle_dir / e.primary_file, precision=e.precision, threads=args.threads)
               for name, e in ((e.describe(), e) for e in manifest.engines)}
    from converters.quantize.qat import QAT_IR, QAT_ONNX

    for qat_dir in sorted(cache.glob("qat-*")):
        runners["onnxruntime int8 (QAT Q/DQ)"] = create_runner("onnxruntime", qat_dir / QAT_ONNX, precision="int8",
                                                               threads=args.threads)
        runners["openvino int8 (QAT IR)"] = create_runner("openvino", qat_dir / QAT_IR, precision="int8",
                                                          threads=args.threads)
    names = list(runners)
    times = interleaved_ms(runners, tensor, args.rounds)
    medians = {n: statistics.median(v) for n, v in times.items()}
    baseline = next(n for n in names if n.startswith("onnxruntime/fp32"))
    latency = {n: {"median_ms": medians[n], "p90_ms": float(np.percentile(times[n], 90)),
                   "speedup_vs_ort_fp32": medians[baseline] / medians[n]} for n in names}
    return {"machine": machine_info(), "qat_mode": args.qat, "threads": args.threads, "rounds": args.rounds,
            "student": str(args.student or "default"), "convert_seconds": round(convert_seconds, 1),
            "engines": engines, "latency": latency, "log": log}


def markdown(results: dict) -> str:
    lines = ["| engine | shipped | by | closest check (margin) | guard images | QAT s |", "|---|---|---|---|---|---|"]
    for name, e in results["engines"].items():
        if e["guard"] is None:
            continue
        closest = min(e["guard"]["checks"], key=lambda c: c["margin"])
        qat = f"{e['qat']['seconds']:.0f}" if e["qat"] else "-"
        by = e["method"] + (f", {len(e['excluded_nodes'])} layers in float" if e["excluded_nodes"] else "")
        lines.append(f"| {name} | {e['precision']} | {by} | {closest['check']} ({closest['margin']:+.4f}) | "
                     f"{e['guard']['images']} | {qat} |")
    lines += ["", "| engine alone (batch 1) | median ms | p90 ms | vs ORT FP32 |", "|---|---|---|---|"]
    for name, t in results["latency"].items():
        lines.append(f"| {name} | {t['median_ms']:.2f} | {t['p90_ms']:.2f} | {t['speedup_vs_ort_fp32']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--student", type=Path, default=None)
    parser.add_argument("--qat", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--cache-dir", type=Path, default=None, help="step cache (default: a fresh temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="only print the tables of a saved --json file")
    args = parser.parse_args()
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
