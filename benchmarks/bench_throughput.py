"""Throughput of screening: the pipeline against one photo at a time and the research-code way, raw
frames against JPEGs through the bridge, and peak memory on a large folder.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_throughput.py --bundle artifacts/demo/default-bundle \\
        --json bench_throughput.json

Inputs (made here from real photographs, nothing stored): the 8 HEI-MED camera originals
(../shared/datasets/heimed/full), each upscaled onto a 4000x3000 canvas at JPEG quality 95 as in
bench_preprocess.py ("12 MP camera JPEGs"); folders of hard links to them (distinct paths, no disk).

Measured, every variant interleaved round by round (rotating order) because the machine is shared:

- **screen**: ``edge-retina screen FOLDER --json --workers N`` in a fresh process per run, on a folder
  of ``--folder-size`` photos: its own throughput line (first photo to last result, start-up apart)
  for N = 1 and N = each of ``--workers``;
- **research**: the research-code way (PIL full decode + the PyTorch FP32 teacher, one torch thread,
  as in "Latency and parity") on the 8 distinct photos, in this process, in the same rounds;
- **pipeline variants** (in this process): micro-batches (``max_batch``) and engine threads, to decide
  whether batching pays for this engine;
- **bridge**: one camera over a Unix socket, each photo sent as its 12 MP JPEG, as a 3 MP RGB8 raw
  frame (the same canvas resized to 2000x1500) and as the RGGB mosaic of that frame, in rotating
  order, fresh request ids; per-photo round trip (client send to RESULT) and the server's screening
  time;
- **memory**: peak RSS (VmHWM) of ``screen`` on ``--rss-photos`` photos.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_preprocess import make_12mp_jpeg  # noqa: E402
from bridge_support import ServerProcess, connect  # noqa: E402

from edge_retina.bench.machine import machine_info  # noqa: E402
from edge_retina.pipeline import ScreeningPipeline  # noqa: E402
from edge_retina.screener import Screener  # noqa: E402

DEFAULT_DATASETS = Path(os.environ.get("EDGE_RETINA_DATASETS", REPO.parent / "shared" / "datasets"))


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rotated(variants: list, round_index: int) -> list:
    shift = round_index % len(variants)
    return variants[shift:] + variants[:shift]


def folder_of(work: Path, name: str, photos: list[Path], count: int) -> Path:
    folder = work / name
    folder.mkdir(exist_ok=True)
    for i in range(count):
        link = folder / f"IMG_{i:05d}.jpg"
        if not link.exists():
            os.link(photos[i % len(photos)], link)
    return folder


#: ``edge-retina screen`` that reports its peak RSS (VmHWM: this program's own high-water mark; a
#: child's ru_maxrss would include the parent's memory it was forked from) on stderr as it exits.
_SCREEN_REPORTING_PEAK_RSS = (
    "import atexit, sys\n"
    "from edge_retina.bench.cold_start import peak_rss_mb\n"
    "atexit.register(lambda: print(f'peak_rss_mb={peak_rss_mb()}', file=sys.stderr))\n"
    "from edge_retina.cli.main import cli\n"
    "cli(['screen', *sys.argv[1:]])\n"
)


def run_screen(bundle: Path, folder: Path, workers: int) -> dict:
    """One ``screen`` process: its throughput summary and its peak RSS."""
    command = [sys.executable, "-c", _SCREEN_REPORTING_PEAK_RSS, str(folder), "--bundle", str(bundle), "--json",
               "--workers", str(workers)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise RuntimeError(f"screen exited with status {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)["summary"]
    peak = float(done.stderr.rsplit("peak_rss_mb=", 1)[1].split()[0])
    return {**summary["throughput"], "errors": summary["error"], "engine": summary["engine"]["backend"] + "/"
            + summary["engine"]["precision"], "peak_rss_mb": round(peak, 1)}


def research_throughput(research, photos: list[Path]) -> float:
    start = time.perf_counter()
    for photo in photos:
        research.run(photo)
    return len(photos) / (time.perf_counter() - start)


def pipeline_throughput(screener: Screener, photos: list[Path], workers: int, max_batch: int) -> float:
    with ScreeningPipeline(screener, workers=workers, max_batch=max_batch) as pipeline:
        for result in pipeline.screen(photos):
            assert result.error is None, result.error
        return pipeline.throughput.images_per_s


def bench_screen(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    folder = folder_of(work, "folder", photos, args.folder_size)
    research = None
    if not args.skip_research:
        from edge_retina.bench.parity import bundle_prompt_table
        from converters.research_baseline import ResearchPipeline
        from edge_retina.bundle import load_bundle
        from converters.parity_references import bundle_teacher

        loaded = load_bundle(bundle)
        teacher = bundle_teacher(loaded.manifest, None)
        research = ResearchPipeline(teacher.image_encoder, teacher.input_spec, bundle_prompt_table(loaded), threads=1)
        research.run(photos[0])  # warm-up
    variants = [("screen --workers 1", 1)] + [(f"screen --workers {w}", w) for w in args.workers]
    samples: dict[str, list] = {name: [] for name, _ in variants}
    samples["research"] = []
    loads = []
    for r in range(args.rounds):
        for name, workers in rotated(variants, r):
            samples[name].append(run_screen(bundle, folder, workers))
        if research is not None:
            samples["research"].append(research_throughput(research, photos))
        loads.append(load())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {s[-1]['images_per_s'] if isinstance(s[-1], dict) else s[-1]:.1f}" for n, s in samples.items() if s),
            file=sys.stderr)
    medians = {name: statistics.median(s["images_per_s"] for s in runs) for name, runs in samples.items()
               if runs and isinstance(runs[0], dict)}
    out = {"folder_size": args.folder_size, "runs": samples, "median_images_per_s": medians, "load_average": loads,
           "ratio_vs_workers_1": {n: m / medians["screen --workers 1"] for n, m in medians.items()},
           "startup_s_median": {n: statistics.median(s["startup_s"] for s in runs) for n, runs in samples.items()
                                if runs and isinstance(runs[0], dict)}}
    if samples["research"]:
        base = statistics.median(samples["research"])
        out["research_images_per_s"] = base
        out["ratio_vs_research"] = {n: m / base for n, m in medians.items()}
        # Ratios taken within each round (same load), then the median: steadier than a ratio of medians.
        out["ratio_vs_research_paired"] = {
            n: statistics.median(s["images_per_s"] / b for s, b in zip(samples[n], samples["research"]))
            for n in medians}
    return out


def bench_pipeline_variants(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    images = [photos[i % len(photos)] for i in range(args.folder_size)]
    screeners = {"default threads": Screener.from_bundle(bundle), "1 engine thread": Screener.from_bundle(bundle, threads=1)}
    variants = [(f"workers {w}, max_batch {b}, {t}", w, b, t) for t in screeners for w in (1, max(args.workers))
                for b in (1, 4)]
    samples: dict[str, list[float]] = {v[0]: [] for v in variants}
    for screener in screeners.values():
        pipeline_throughput(screener, images[:4], 1, 1)  # warm-up
    for r in range(args.rounds):
        for name, workers, batch, threads in rotated(variants, r):
            samples[name].append(pipeline_throughput(screeners[threads], images, workers, batch))
    engine = screeners["default threads"].engine_info
    for screener in screeners.values():
        screener.close()
    return {"samples": samples, "median_images_per_s": {n: statistics.median(s) for n, s in samples.items()},
            "engine": f"{engine['backend']}/{engine['precision']}", "load_average": load()}


def bench_bridge(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    jpegs = [p.read_bytes() for p in photos]
    frames, mosaics = [], []
    for p in photos:
        rgb = cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (2000, 1500), interpolation=cv2.INTER_AREA)
        frames.append(np.ascontiguousarray(rgb).tobytes())
        mosaic = rgb[:, :, 1].copy()  # what an RGGB sensor records: R and B on alternate sites of alternate rows
        mosaic[0::2, 0::2], mosaic[1::2, 1::2] = rgb[0::2, 0::2, 0], rgb[1::2, 1::2, 2]
        mosaics.append(mosaic.tobytes())
    server = ServerProcess(bundle, work / "bridge.sqlite3", transport=("--socket", str(work / "bridge.sock")))
    samples: dict[str, list[float]] = {"jpeg 12 MP": [], "raw rgb8 3 MP": [], "raw bayer_rggb8 3 MP": []}
    server_ms: dict[str, list[float]] = {k: [] for k in samples}
    probabilities: list[float] = []
    try:
        with connect(server.address, timeout=120) as client:
            client.screen("warm-up", jpegs[0])
            for r in range(args.bridge_rounds):
                i = r % len(photos)
                sends = {"jpeg 12 MP": lambda: client.screen(f"j{r}", jpegs[i]),
                         "raw rgb8 3 MP": lambda: client.screen_raw(f"r{r}", frames[i], width=2000, height=1500),
                         "raw bayer_rggb8 3 MP": lambda: client.screen_raw(f"b{r}", mosaics[i], width=2000, height=1500,
                                                                           pixel_format="bayer_rggb8")}
                replies = {}
                for name in rotated(list(sends), r):
                    start = time.perf_counter()
                    replies[name] = sends[name]()
                    samples[name].append((time.perf_counter() - start) * 1e3)
                    server_ms[name].append(replies[name]["result"]["timings_ms"]["total"])
                a, b = (replies[n]["result"]["probabilities"] for n in ("jpeg 12 MP", "raw rgb8 3 MP"))
                probabilities.append(max(abs(a[c] - b[c]) for c in a))
    finally:
        server.stop()
    medians = {n: statistics.median(s) for n, s in samples.items()}
    return {"round_trip_ms": samples, "median_round_trip_ms": medians,
            "median_server_screening_ms": {n: statistics.median(s) for n, s in server_ms.items()},
            "speedup_vs_jpeg": {n: medians["jpeg 12 MP"] / m for n, m in medians.items()},
            "speedup_vs_jpeg_paired": {n: statistics.median(j / x for j, x in zip(samples["jpeg 12 MP"], s))
                                       for n, s in samples.items()},
            "max_probability_difference_raw_vs_jpeg": max(probabilities), "frame_bytes": {
                "jpeg 12 MP": statistics.median(len(j) for j in jpegs), "raw rgb8 3 MP": len(frames[0]),
                "raw bayer_rggb8 3 MP": len(mosaics[0])},
            "load_average": load()}


def bench_memory(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    folder = folder_of(work, "large", photos, args.rss_photos)
    return {"photos": args.rss_photos, **run_screen(bundle, folder, max(args.workers)), "load_average": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="Worker counts compared with 1.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder-size", type=int, default=64)
    parser.add_argument("--bridge-rounds", type=int, default=24)
    parser.add_argument("--rss-photos", type=int, default=1000)
    parser.add_argument("--skip-research", action="store_true", help="No host extras: leave the research baseline out.")
    parser.add_argument("--only", nargs="+", choices=["screen", "variants", "bridge", "memory"],
                        default=["screen", "variants", "bridge", "memory"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    originals = sorted((args.datasets / "heimed" / "full").glob("*.jpg"))
    if not originals:
        sys.exit(f"no HEI-MED originals under {args.datasets / 'heimed' / 'full'}")
    report: dict = {"machine": machine_info(), "bundle": str(args.bundle), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "load_average_start": load()}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work = Path(tmp)
        photos = [make_12mp_jpeg(o, work / f"12mp-{i}.jpg") for i, o in enumerate(originals)]
        steps = {"screen": bench_screen, "variants": bench_pipeline_variants, "bridge": bench_bridge,
                 "memory": bench_memory}
        for name in args.only:
            print(f"-- {name}", file=sys.stderr)
            report[name] = steps[name](args, args.bundle, photos, work)
            print(json.dumps({k: v for k, v in report[name].items() if "median" in k or "ratio" in k or "speedup" in k
                              or k in ("peak_rss_mb", "images_per_s")}, indent=1), file=sys.stderr)
    report["load_average_end"] = load()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
