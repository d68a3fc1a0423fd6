"""A raw camera frame against the JPEG made from it: pixels, probabilities, and how much of the
difference is the model's own sensitivity to rounding.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_raw_parity.py --bundle artifacts/demo/default-bundle \\
        --json bench_raw_parity.json

Real photographs (../shared/datasets/heimed), three kinds of pair (JPEG, raw frame):

- **camera originals**: HEI-MED's 8 full-size 2196x1958 camera JPEGs (decoded at 1/8 for a 192 px
  model); the frame is the JPEG's full decode (the sensor image the camera compressed);
- **1024 px photos**: HEI-MED's 169 photos (decoded at 1/2); the frame is the full decode;
- **12 MP JPEG, 3 MP frame**: each original upscaled onto a 4000x3000 canvas at quality 95, as in
  bench_preprocess.py and bench_throughput.py (decoded at 1/8); the frame is the canvas's full
  decode reduced to 2000x1500 with an area average (decoded at 1/4), as the bridge benchmark sends it.

Per pair: the reduced pixels of both routes (mean and 99th percentile of the absolute difference),
and the largest difference over the bundle's conditions between the screening probabilities; both
also for the raw route as it was before (``_before`` in the JSON: an area resize to the reduced
size). Then the model's sensitivity: the same probability difference when only a random 13 % of the
values of the JPEG route's model input (uint8, before normalisation) move by one grey level, which
is how far apart the two routes' inputs are (``--noise-draws`` draws per photo, the largest kept).

Timing (interleaved, median ms): the raw route's reduction as before this change (an area resize
to the reduced size) and as now (block means on the JPEG's grid), on a 3 MP frame and a camera
original's frame.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_preprocess import make_12mp_jpeg  # noqa: E402

from edge_retina.bench.machine import machine_info  # noqa: E402
from edge_retina.preprocess import decode_image  # noqa: E402
from edge_retina.preprocess.decode import DecodedImage, choose_reduction  # noqa: E402
from edge_retina.preprocess.pipeline import ASSUMED_FOV_FRACTION  # noqa: E402
from edge_retina.preprocess.raw import RawFrame, block_means  # noqa: E402
from edge_retina.screener import Screener  # noqa: E402

DEFAULT_DATASETS = Path(os.environ.get("EDGE_RETINA_DATASETS", REPO.parent / "shared" / "datasets"))
FLIPPED_FRACTION = 0.13


def area_resize(rgb: np.ndarray, factor: int) -> np.ndarray:
    """The raw route's reduction before block means: an area resize to the JPEG's reduced size."""
    size = (-(-rgb.shape[1] // factor), -(-rgb.shape[0] // factor))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class AreaReducedFrame(RawFrame):
    """A raw frame decoded the way it was before block means (for the before/after comparison)."""

    def decode(self, *, min_short_side: int = 0, **limits: int) -> DecodedImage:
        decoded = RawFrame(self.data, self.pixel_format, self.width, self.height, self.stride).decode(**limits)
        factor = choose_reduction(self.width, self.height, min_short_side) if min_short_side > 0 else 1
        return dataclasses.replace(decoded, rgb=area_resize(decoded.rgb, factor), reduction=factor)


def frame_of(rgb: np.ndarray) -> RawFrame:
    return RawFrame(np.ascontiguousarray(rgb).tobytes(), "rgb8", rgb.shape[1], rgb.shape[0])


def probabilities(screener: Screener, image: np.ndarray) -> np.ndarray:
    scores = screener.prompt_table.score(screener.runner.infer(screener.preprocessor.normalise(image)))
    return np.array([scores.condition_probabilities[c][0] for c in screener.conditions])


def compare(screener: Screener, jpeg: Path, frame: RawFrame, draws: int, rng: np.random.Generator) -> dict:
    need = math.ceil(max(screener.preprocessor.spec.size) / ASSUMED_FOV_FRACTION)  # what prepare asks for
    from_jpeg = decode_image(jpeg, min_short_side=need).rgb
    prepared_jpeg = screener.preprocessor.prepare(jpeg)
    reference = probabilities(screener, prepared_jpeg.image)
    row = {"photo": jpeg.name}
    before = AreaReducedFrame(frame.data, frame.pixel_format, frame.width, frame.height, frame.stride)
    for suffix, raw in (("", frame), ("_before", before)):
        pixels = np.abs(from_jpeg.astype(int) - raw.decode(min_short_side=need).rgb.astype(int))
        prepared_raw = screener.preprocessor.prepare(raw)
        row.update({f"reduced_mean_abs{suffix}": float(pixels.mean()),
                    f"reduced_p99_abs{suffix}": float(np.percentile(pixels, 99)),
                    f"probability_difference{suffix}": float(
                        np.abs(probabilities(screener, prepared_raw.image) - reference).max())})
        if not suffix:
            row["input_fraction_differing"] = float((prepared_jpeg.image != prepared_raw.image).mean())
    noise = []
    for _ in range(draws):
        shape = prepared_jpeg.image.shape
        step = (rng.random(shape) < FLIPPED_FRACTION) * rng.choice([-1, 1], shape)
        moved = np.clip(prepared_jpeg.image.astype(int) + step, 0, 255).astype(np.uint8)
        noise.append(float(np.abs(probabilities(screener, moved) - reference).max()))
    return {**row, "rounding_noise_difference": max(noise)}


def summary(rows: list[dict]) -> dict:
    out = {"photos": len(rows)}
    for key in ("reduced_mean_abs", "reduced_p99_abs", "input_fraction_differing", "probability_difference",
                "rounding_noise_difference", "reduced_mean_abs_before", "reduced_p99_abs_before",
                "probability_difference_before"):
        values = np.array([r[key] for r in rows])
        out[key] = {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
                    "max": float(values.max())}
    for key in ("probability_difference", "probability_difference_before", "rounding_noise_difference"):
        out[key]["over_0.02"] = int(sum(r[key] > 0.02 for r in rows))
    return out


def reduction_ms(frames: dict[str, tuple[np.ndarray, int]], rounds: int) -> dict:
    """The raw route's reduction, before (area resize to the reduced size) and now, interleaved."""
    ways = {"area resize (before)": area_resize, "block means (now)": block_means}
    samples = {f"{name}, {way}": [] for name in frames for way in ways}
    for r in range(rounds):
        order = list(ways.items()) if r % 2 == 0 else list(ways.items())[::-1]
        for name, (rgb, factor) in frames.items():
            for way, reduce in order:
                start = time.perf_counter()
                reduce(rgb, factor)
                samples[f"{name}, {way}"].append((time.perf_counter() - start) * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--backend", default=None, help="Engine backend (default: the bundle's preferred one).")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--photos", type=int, default=169, help="How many of HEI-MED's 1024 px photos.")
    parser.add_argument("--noise-draws", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30, help="Timing rounds.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    originals = sorted((args.datasets / "heimed" / "full").glob("*.jpg"))
    if not originals:
        sys.exit(f"no HEI-MED originals under {args.datasets / 'heimed' / 'full'}")
    rng = np.random.default_rng(0)
    report: dict = {"machine": machine_info(), "bundle": str(args.bundle), "load_average": os.getloadavg()}
    with Screener.from_bundle(args.bundle, backend=args.backend, threads=1) as screener, \
            tempfile.TemporaryDirectory(prefix="bench-raw-parity-") as tmp:
        report["engine"] = screener.engine_info["backend"] + "/" + screener.engine_info["precision"]
        groups: dict[str, list[tuple[Path, RawFrame]]] = {
            "camera originals, frame = full decode": [(p, frame_of(decode_image(p).rgb)) for p in originals],
            "1024 px photos, frame = full decode": [
                (p, frame_of(decode_image(p).rgb))
                for p in sorted((args.datasets / "heimed" / "images").glob("*.jpg"))[: args.photos]],
        }
        twelve = [make_12mp_jpeg(o, Path(tmp) / f"12mp-{i}.jpg") for i, o in enumerate(originals)]
        groups["12 MP JPEG, frame = 3 MP area reduction"] = [
            (p, frame_of(cv2.resize(decode_image(p).rgb, (2000, 1500), interpolation=cv2.INTER_AREA))) for p in twelve]
        for name, pairs in groups.items():
            rows = [compare(screener, jpeg, frame, args.noise_draws, rng) for jpeg, frame in pairs]
            report[name] = {"summary": summary(rows), "photos": rows}
            print(name, json.dumps(report[name]["summary"], indent=1), file=sys.stderr)
        report["reduction_ms"] = reduction_ms({
            "3 MP frame (1/4)": (groups["12 MP JPEG, frame = 3 MP area reduction"][0][1].rgb(), 4),
            "2196x1958 frame (1/8)": (groups["camera originals, frame = full decode"][0][1].rgb(), 8)}, args.rounds)
        print(json.dumps(report["reduction_ms"], indent=1), file=sys.stderr)
    report["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
