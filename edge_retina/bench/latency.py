"""Latency of the deployed pipeline per stage, against other engines and the research-code way.

Every pipeline (an engine of the bundle through the Screener, or the research baseline) runs the
same images interleaved, in an order rotated every round (A B, B A, ...), so drift on a shared
machine hits all of them alike; compare medians and ratios, not absolute numbers across runs.

Measured per pipeline: per-stage wall times (decode; preprocess = field-of-view detection, crop,
resize, quality gate, normalise; inference; prompt lookup; total), the raw engine on a prepared
tensor (what benchmark_app / onnxruntime_perf_test would time), throughput at batch 1 and with S
concurrent streams, through the screening pipeline (``edge_retina.pipeline``: what ``screen`` runs,
decode on ``workers`` threads), and cold start and peak RSS in fresh processes.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from edge_retina.bench.machine import machine_info
from edge_retina.bundle import EngineEntry, load_bundle
from edge_retina.errors import EdgeRetinaError, named_once
from edge_retina.pipeline import ScreeningPipeline, usable_cores
from edge_retina.screener import STAGES, Screener
from edge_retina.wording import plural


class Pipeline(Protocol):
    name: str

    def run(self, image: Path) -> dict[str, float]:
        """Screen one image; milliseconds per stage (``STAGES``)."""

    def prepared_tensor(self, image: Path) -> np.ndarray:
        """The model input for ``image``, for timing the engine alone."""

    def run_engine(self, tensor: np.ndarray) -> None:
        """Run just the model on a prepared tensor."""

    def unusable(self, image: Path) -> str | None:
        """Why this pipeline cannot time ``image`` end to end ("<image>: <why>"), or None."""

    def close(self) -> None: ...


class DeployedPipeline:
    """One engine of a bundle behind the runtime's Screener: what ``edge-retina screen`` runs."""

    def __init__(self, bundle_path: Path, engine: EngineEntry, threads: int | None = None):
        self.name = engine.describe()
        self.screener = Screener.from_bundle(bundle_path, backend=engine.backend, precision=engine.precision,
                                             threads=threads)

    def run(self, image: Path) -> dict[str, float]:
        result = self.screener.screen(image)
        if result.error:
            raise EdgeRetinaError(named_once(image, result.error))
        return result.timings_ms

    def unusable(self, image: Path) -> str | None:
        """Why ``image`` cannot be timed end to end (unreadable, or ungradable: no inference), or None."""
        result = self.screener.screen(image)
        if result.error:
            return named_once(image, result.error)
        return None if result.gradable else f"{image}: ungradable ({result.ungradable_reason})"

    def prepared_tensor(self, image: Path) -> np.ndarray:
        return self.screener.preprocessor.prepare(image).tensor

    def run_engine(self, tensor: np.ndarray) -> None:
        self.screener.runner.infer(tensor)

    def close(self) -> None:
        self.screener.close()


def summary(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    p90, p99 = np.percentile(a, [90, 99])
    return {"n": int(a.size), "median": float(np.median(a)), "p90": float(p90), "p99": float(p99),
            "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


@dataclass
class PipelineLatency:
    name: str
    stages_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    engine_ms: list[float] = field(default_factory=list)  # the raw engine on a prepared tensor
    # Process CPU time of each end-to-end run: on a machine shared with other jobs, wall time includes
    # waiting for a core and CPU time does not, so it is the steadier measure of the work itself.
    cpu_ms: list[float] = field(default_factory=list)
    throughput: dict[str, float] = field(default_factory=dict)  # images/s: "batch1", "streams"
    cold_start: list[dict[str, float]] = field(default_factory=list)  # one per fresh process

    @property
    def after_decode_ms(self) -> list[float]:
        """Per image: everything but the decode (what the runtime adds around the engine, and the engine)."""
        return [t - d for t, d in zip(self.stages_ms["total"], self.stages_ms["decode"])]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"stages_ms": {s: summary(v) for s, v in self.stages_ms.items() if v},
                             "samples_ms": {s: [round(x, 4) for x in v] for s, v in self.stages_ms.items() if v}}
        if self.cpu_ms:
            d["cpu_ms"] = summary(self.cpu_ms)
        if self.engine_ms:
            d["engine_ms"] = summary(self.engine_ms)
            d["engine_samples_ms"] = [round(x, 4) for x in self.engine_ms]
            engine = statistics.median(self.engine_ms)
            d["runtime_overhead_over_engine"] = statistics.median(self.after_decode_ms) / engine - 1.0
        if self.throughput:
            d["throughput_images_per_s"] = self.throughput
        if self.cold_start:
            d["cold_start"] = {"runs": self.cold_start,
                               **{f"median_{k}": statistics.median(r[k] for r in self.cold_start)
                                  for k in self.cold_start[0]}}
        return d


@dataclass
class LatencyReport:
    pipelines: dict[str, PipelineLatency]
    baseline: str
    images: list[str]
    iterations: int
    threads: int | None
    streams: int
    machine: dict[str, Any]
    left_out: list[str] = field(default_factory=list)  # images that could not be timed, with why
    workers: int | None = None  # the screening pipeline's worker threads in the throughput test

    def speedup(self, name: str, cpu: bool = False) -> float:
        """How many times faster than the baseline ``name`` is end to end at the median (wall or CPU time)."""
        def times(p: PipelineLatency) -> list[float]:
            return p.cpu_ms if cpu else p.stages_ms["total"]

        base, mine = times(self.pipelines[self.baseline]), times(self.pipelines[name])
        return statistics.median(base) / statistics.median(mine) if base and mine else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "images": self.images,
            "iterations": self.iterations,
            "threads": self.threads,
            "streams": self.streams,
            "workers": self.workers,
            "machine": self.machine,
            "left_out": self.left_out,
            "pipelines": {name: {**p.to_dict(), "speedup_vs_baseline": self.speedup(name),
                                 "cpu_speedup_vs_baseline": self.speedup(name, cpu=True)}
                          for name, p in self.pipelines.items()},
        }


def select_engines(bundle_path: Path, backend: str = "all", precision: str = "all") -> list[EngineEntry]:
    """The bundle's engines matching ``backend`` / ``precision`` ("all" matches any), in manifest order."""
    engines = [e for e in load_bundle(bundle_path).manifest.engines
               if backend in ("all", e.backend) and precision in ("all", e.precision)]
    if not engines:
        raise EdgeRetinaError(f"no engine in {bundle_path} matches backend={backend}, precision={precision}")
    return engines


def measure_interleaved(pipelines: Sequence[Pipeline], images: Sequence[Path], iterations: int,
                        warmup: int = 2) -> dict[str, PipelineLatency]:
    """Per-stage times of every pipeline on every image, ``iterations`` rounds, interleaved.

    Right after each pipeline run comes one run of its engine alone on a prepared tensor (the first
    image's: the model's input has a fixed size, so its cost does not depend on the photo), so the
    runtime's overhead over the engine is measured under the same load.
    """
    out = {p.name: PipelineLatency(p.name) for p in pipelines}
    tensors = {p.name: p.prepared_tensor(images[0]) for p in pipelines}
    for p in pipelines:  # warm-up: first-run allocations, lazy compilation, caches
        for image in list(images)[:max(warmup, 1)]:
            p.run(image)
            p.run_engine(tensors[p.name])
    for round_index in range(iterations):
        shift = round_index % len(pipelines)
        order = list(pipelines[shift:]) + list(pipelines[:shift])
        for image in images:
            for p in order:
                cpu_start = time.process_time()
                stages = p.run(image)
                out[p.name].cpu_ms.append((time.process_time() - cpu_start) * 1e3)
                for stage, ms in stages.items():
                    if stage in out[p.name].stages_ms:
                        out[p.name].stages_ms[stage].append(ms)
                start = time.perf_counter()
                p.run_engine(tensors[p.name])
                out[p.name].engine_ms.append((time.perf_counter() - start) * 1e3)
    return out


def measure_throughput(pipelines: Sequence[Pipeline], images: Sequence[Path], rounds: int = 1) -> float:
    """Images per second with one thread per pipeline, each screening ``images`` ``rounds`` times.

    One pipeline: batch-1 throughput. Several (each with its own engine, as separate camera
    streams would have): concurrent-stream throughput; OpenCV and the engines release the GIL.
    """
    errors: list[BaseException] = []

    def work(p: Pipeline) -> None:
        try:
            for _ in range(rounds):
                for image in images:
                    p.run(image)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in pipelines]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return len(pipelines) * rounds * len(images) / elapsed


def measure_pipeline_throughput(screener: Screener, images: Sequence[Path], workers: int, rounds: int = 1) -> float:
    """Images per second through the screening pipeline (decode on ``workers`` threads, results in
    order): what ``edge-retina screen --workers`` achieves on a folder of ``images``."""
    with ScreeningPipeline(screener, workers=workers) as pipeline:
        for result in pipeline.screen([image for _ in range(rounds) for image in images]):
            if result.error:
                raise EdgeRetinaError(named_once(result.source, result.error))
        return pipeline.throughput.images_per_s


def measure_cold_start(bundle_path: Path, engine: EngineEntry, images: Sequence[Path],
                       threads: int | None = None, runs: int = 3) -> list[dict[str, float]]:
    """``runs`` fresh processes, each loading the bundle and screening ``images`` (see cold_start.py)."""
    command = [sys.executable, "-m", "edge_retina.bench.cold_start", str(bundle_path), "--backend", engine.backend,
               "--precision", engine.precision, *(["--threads", str(threads)] if threads else []),
               *map(str, images)]
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise EdgeRetinaError(f"cold-start process failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        results.append({**measured, "process_wall_ms": wall * 1e3})
    return results


def run_latency(
    bundle_path: Path,
    engines: Sequence[EngineEntry],
    images: Sequence[Path],
    *,
    iterations: int = 10,
    threads: int | None = None,
    streams: int = 2,
    workers: int | None = None,
    cold_runs: int = 3,
    extra_pipelines: Sequence[Pipeline] = (),
    baseline: str | None = None,
    max_images: int | None = None,
) -> LatencyReport:
    """The whole latency benchmark for ``engines`` of a bundle (plus e.g. the research baseline).

    ``baseline`` names the pipeline ratios are taken against (default: the first extra pipeline,
    else the first engine). ``workers``: the pipeline throughput test's (default: the usable cores).
    ``max_images``: time the first that many usable images (one left out does not take a place).
    """
    workers = workers or usable_cores()
    deployed = [DeployedPipeline(bundle_path, e, threads) for e in engines]
    pipelines: list[Pipeline] = [*deployed, *extra_pipelines]
    try:
        # Every pipeline times the same images, or its medians and the speed-ups would compare
        # different work (a DICOM's decode, a large photo's): an image one of them cannot run (the
        # research baseline's PIL opens no DICOM) is left out of all, with why. The engines share
        # the runtime's decoder, so the first stands for them all.
        judges = [deployed[0], *extra_pipelines]
        left_out, timed = [], []
        for image in map(Path, images):
            if len(timed) == max_images:
                break
            why = next(filter(None, (p.unusable(image) for p in judges)), None)  # the first reason given
            if why is None:
                timed.append(image)
            else:
                left_out.append(why)
        images = timed
        if not images:
            raise EdgeRetinaError("no image to benchmark: " + ("; ".join(left_out) or "none given"))
        results = measure_interleaved(pipelines, images, iterations)
        for p in pipelines:
            results[p.name].throughput["batch1"] = measure_throughput([p], images)
        for p in deployed:
            results[p.name].throughput["pipeline"] = measure_pipeline_throughput(p.screener, images, workers)
    finally:
        for p in deployed:
            p.close()
    for engine in engines:
        name = engine.describe()
        stream_pipelines = [DeployedPipeline(bundle_path, engine, threads) for _ in range(streams)]
        try:
            for p in stream_pipelines:
                p.run(images[0])
            results[name].throughput[f"streams_{streams}"] = measure_throughput(stream_pipelines, images)
        finally:
            for p in stream_pipelines:
                p.close()
        if cold_runs:
            results[name].cold_start = measure_cold_start(bundle_path, engine, images, threads, cold_runs)
    names = list(results)
    chosen = baseline or (extra_pipelines[0].name if extra_pipelines else names[0])
    if chosen not in results:
        raise EdgeRetinaError(f"baseline {chosen!r} is not one of the pipelines {names}")
    return LatencyReport(results, chosen, [str(i) for i in images], iterations, threads, streams, machine_info(),
                         left_out, workers)


def latency_table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the per-stage median table (ms) from ``LatencyReport.to_dict()`` (or its
    JSON): shared by the CLI, the HTML report and the demo. Columns go most telling first, so a
    terminal that cannot show them all keeps total and speed-up (against ``report["baseline"]``)."""
    stages_shown = ("inference", *(s for s in STAGES if s not in ("inference", "total")))
    headers = ["pipeline", "total", "speed-up wall/CPU", *stages_shown, "total p90",
               "total p99", "CPU", "engine alone", "overhead over engine"]
    rows = []
    for name, p in report["pipelines"].items():
        stages = p["stages_ms"]
        cells = [f"{stages[s]['median']:.2f}" if s in stages else "-" for s in stages_shown]
        engine = p.get("engine_ms")
        overhead = p.get("runtime_overhead_over_engine")
        rows.append([name, f"{stages['total']['median']:.2f}",
                     f"{p['speedup_vs_baseline']:.2f}x / {p['cpu_speedup_vs_baseline']:.2f}x", *cells,
                     f"{stages['total']['p90']:.2f}", f"{stages['total']['p99']:.2f}",
                     f"{p['cpu_ms']['median']:.2f}" if "cpu_ms" in p else "-",
                     f"{engine['median']:.2f}" if engine else "-",
                     f"{overhead * 100:+.1f} %" if overhead is not None else "-"])
    return headers, rows


def system_table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): throughput, cold start and peak RSS per pipeline, from ``LatencyReport.to_dict()``."""
    streams = report["streams"]
    headers = ["pipeline", "batch 1 img/s", f"{plural(streams, 'stream')} img/s",
               f"{plural(report.get('workers'), 'worker')} img/s", "load to 1st result ms", "start to 1st result ms",
               "peak RSS MB"]
    rows = []
    for name, p in report["pipelines"].items():
        throughput = p.get("throughput_images_per_s", {})
        cold = p.get("cold_start", {})

        def fmt(value: float | None, digits: int = 0) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        rows.append([name, fmt(throughput.get("batch1"), 1), fmt(throughput.get(f"streams_{streams}"), 1),
                     fmt(throughput.get("pipeline"), 1),
                     fmt(cold.get("median_load_to_first_result_ms")),
                     fmt(cold.get("median_process_to_first_result_ms")),
                     fmt(cold.get("median_peak_rss_mb"))])
    return headers, rows
