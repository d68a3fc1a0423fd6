"""Benchmark: camera JPEG -> model tensor on one core, against the PIL "research way".

Inputs (made from real photographs, nothing is stored in the repo):

- ``12mp``: a HEI-MED camera original (../shared/datasets/heimed/full, 2196x1958) upscaled to a
  height of 3000 px and centred on a black 4000x3000 canvas (a 4:3 sensor with the FoV in the
  middle), encoded at JPEG quality 95 like a camera;
- ``heimed-full``: the 8 real 4.3 MP camera originals as they are.

Per input, these run interleaved (in rotating order, so drift hits all alike) ``--repeats`` times:

- ``prepare``: ``Preprocessor(spec).prepare(path)``, end to end (read, probe, reduced decode, FoV,
  crop, resize, quality gate, normalise), with a per-stage breakdown measured by calling the same
  stages one by one;
- ``pil``: ``Image.open(path).convert("RGB").resize((W, H), BILINEAR)`` then the same
  normalisation in numpy (full decode, as research code does);
- ``decode-floor``: reading the file and ``cv2.imdecode`` at the same libjpeg reduction and
  nothing else: the lower bound for any libjpeg-based pipeline (Huffman decoding of every
  coefficient cannot be skipped, whatever the output scale).

Everything is single-threaded (OpenCV set to one thread; Pillow and numpy are here). ``--pin``
also pins the process to one CPU, which on a shared machine makes it wait for that CPU. Prints
median and p90 in ms of wall time, and for the end-to-end variants also of process CPU time
(``(cpu)`` rows: what the work costs when other processes compete for the cores); ``--json``
writes everything (including the machine and its load) to a file. Usage::

    .venv/bin/python benchmarks/bench_preprocess.py --repeats 30 --json bench_preprocess.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edge_retina.bench.machine import machine_info
from edge_retina.preprocess import InputSpec, Preprocessor, crop_to_fov, decode_image, find_field_of_view
from edge_retina.preprocess.decode import choose_reduction
from edge_retina.preprocess.fov import downscale
from edge_retina.preprocess.pipeline import ASSUMED_FOV_FRACTION
from edge_retina.preprocess.resize import normalise, resize_to_spec
from edge_retina.quality import assess_quality

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = Path(os.environ.get("EDGE_RETINA_DATASETS", REPO.parent / "shared" / "datasets"))


def make_12mp_jpeg(original: Path, out: Path) -> Path:
    photo = cv2.imread(str(original), cv2.IMREAD_COLOR)
    scale = 3000 / photo.shape[0]
    photo = cv2.resize(photo, (round(photo.shape[1] * scale), 3000), interpolation=cv2.INTER_CUBIC)
    canvas = np.zeros((3000, 4000, 3), np.uint8)
    left = (4000 - photo.shape[1]) // 2
    canvas[:, left : left + photo.shape[1]] = photo
    cv2.imwrite(str(out), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


def pil_research_way(path: Path, spec: InputSpec) -> np.ndarray:
    image = Image.open(path).convert("RGB").resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    return normalise(np.asarray(image), spec)


def decode_floor(path: Path, spec: InputSpec) -> np.ndarray:
    data = np.frombuffer(path.read_bytes(), np.uint8)
    with Image.open(path) as im:
        reduction = choose_reduction(*im.size, math.ceil(max(spec.size) / ASSUMED_FOV_FRACTION))
    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }
    return cv2.imdecode(data, flags[reduction])


def stages(path: Path, spec: InputSpec) -> dict[str, float]:
    """The stages of ``Preprocessor.prepare`` one by one, timed (seconds)."""
    times = {}
    start = time.perf_counter()
    decoded = decode_image(path, min_short_side=math.ceil(max(spec.size) / ASSUMED_FOV_FRACTION))
    times["decode"] = (now := time.perf_counter()) - start
    small = downscale(decoded.rgb)
    small_fov = find_field_of_view(small)
    fov = small_fov.scaled(decoded.rgb.shape[1], decoded.rgb.shape[0])
    times["fov"] = (then := time.perf_counter()) - now
    image = resize_to_spec(crop_to_fov(decoded.rgb, fov), spec)
    times["crop+resize"] = (now := time.perf_counter()) - then
    assess_quality(small, small_fov)
    times["quality"] = (then := time.perf_counter()) - now
    normalise(image, spec)
    times["normalise"] = time.perf_counter() - then
    return times


def bench(inputs: dict[str, list[Path]], spec: InputSpec, repeats: int) -> dict[str, dict[str, list[float]]]:
    pre = Preprocessor(spec)
    variants = {
        "prepare": lambda p: pre.prepare(p),
        "pil": lambda p: pil_research_way(p, spec),
        "decode-floor": lambda p: decode_floor(p, spec),
    }
    results: dict[str, dict[str, list[float]]] = {}
    for name, paths in inputs.items():
        samples: dict[str, list[float]] = {}
        for path in paths:  # warm-up: page cache, lazy imports, OpenCV's first-call setup
            for run in variants.values():
                run(path)
        for i in range(repeats):
            order = list(variants)[i % len(variants) :] + list(variants)[: i % len(variants)]
            for path in paths:
                for variant in order:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    variants[variant](path)
                    samples.setdefault(variant, []).append(time.perf_counter() - start)
                    samples.setdefault(f"{variant} (cpu)", []).append(time.process_time() - cpu_start)
                for stage, seconds in stages(path, spec).items():
                    samples.setdefault(f"  {stage}", []).append(seconds)
        results[name] = samples
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=224, help="square model input side")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--pin", action="store_true", help="pin the process to one CPU")
    args = parser.parse_args()

    if args.pin:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    cv2.setNumThreads(1)
    spec = InputSpec(size=(args.size, args.size))
    originals = sorted((args.datasets / "heimed" / "full").glob("*.jpg"))
    if not originals:
        raise SystemExit(f"no HEI-MED originals under {args.datasets} (set --datasets)")

    with tempfile.TemporaryDirectory() as tmp:
        twelve = make_12mp_jpeg(originals[0], Path(tmp) / "camera_12mp.jpg")
        inputs = {"12mp": [twelve], "heimed-full": originals}
        megabytes = twelve.stat().st_size / 1e6
        sizes = {"12mp": f"4000x3000, {megabytes:.1f} MB", "heimed-full": "2196x1958, 8 files"}
        results = bench(inputs, spec, args.repeats)

    report = {"machine": machine_info(), "spec": spec.to_dict(), "repeats": args.repeats, "inputs": sizes}
    report["results"] = {}
    m = report["machine"]
    cpus = f"{m['logical_cores']} CPUs ({m['usable_cores']} usable)"
    print(f"{m['cpu_model']}, {cpus}, single-threaded, load average {m['load_average_1min']}")
    print(f"model input {args.size}x{args.size}; {args.repeats} interleaved repeats per file\n")
    print(f"{'input':<12} {'variant':<20} {'median ms':>10} {'p90 ms':>8}")
    for name, samples in results.items():
        report["results"][name] = {}
        for variant, seconds in samples.items():
            median, p90 = (float(np.percentile(seconds, q)) * 1e3 for q in (50, 90))
            report["results"][name][variant.strip()] = {"median_ms": median, "p90_ms": p90, "n": len(seconds)}
            print(f"{name:<12} {variant:<20} {median:>10.2f} {p90:>8.2f}")
        timed = report["results"][name]
        ratio = timed["pil"]["median_ms"] / timed["prepare"]["median_ms"]
        timed["speedup_vs_pil"] = ratio
        print(f"{name:<12} {'pil / prepare':<20} {ratio:>10.1f}x   ({sizes[name]})\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
