"""Benchmark: how far INT8 moves a bundle's referrals, beside how far re-saving the photo moves FP32.

The accuracy guard asks INT8 to agree with its own FP32 model on >= 99 % of referrals. This measures
what that asks for, on the bundle's student and the shared datasets' validation photos (never
calibrated on):

1. INT8 post-training quantization (OpenVINO NNCF, ONNX Runtime QDQ: the converter's own builders)
   with the ``--float`` most sensitive layers left in float (the guard's output-level ranking,
   ``accuracy_guard.layer_sensitivity``), from the calibration set ``make demo`` uses (128 k-centre
   images of every sixth training photo).
2. The same FP32 model on the same photos re-saved as JPEG (quality 95 and 90, OpenCV), with the
   model input moved right by one pixel, and mirrored: changes no screening programme would call a
   different photo.

For each: per-condition referral agreement at the bundle's thresholds, and the score noise: the SD
of the change in each condition's logit over the SD of that logit across photos. For INT8 also the
agreement on the *reproducible* referrals only: the (photo, condition) pairs whose FP32 referral
stays the same when the photo is re-saved (both qualities) and when it is moved by one pixel (not
the mirror, which makes a right eye look like a left one). A referral that such a change flips is
one the FP32 model itself does not make reproducibly; this shows how much of INT8's disagreement
lies elsewhere. Then engine-alone latency, batch 1, 1 thread, interleaved rounds, against ONNX
Runtime FP32. Usage::

    .venv/bin/python benchmarks/bench_int8_floor.py --bundle artifacts/demo/default-bundle --json floor.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench_int8 import REPO, interleaved_ms
from converters.quantize.openvino_nncf import OVERFLOW_FIXES
from edge_retina.bench.machine import machine_info


def logit_noise(table, before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Per condition: SD(change of the logit margin over normal) / SD(the margin across photos)."""
    a, b = table.score(before).logits, table.score(after).logits
    normal = table.classes.index(table.normal_class)
    margin_a, margin_b = a - a[:, [normal]], b - b[:, [normal]]
    return {c: float(np.std(margin_b[:, i] - margin_a[:, i]) / np.std(margin_a[:, i]))
            for i, c in enumerate(table.classes) if c != table.normal_class}


def resaved(path: Path, quality: int) -> bytes:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def latency(engines: dict[str, tuple[str, Path, str]], tensor: np.ndarray, rounds: int,
            threads: int = 1) -> dict[str, float]:
    """Median ms per engine (name -> (backend, path, precision)) on ``tensor``, interleaved rounds."""
    from edge_retina.backends import create_runner

    runners = {name: create_runner(backend, path, precision=precision, threads=threads)
               for name, (backend, path, precision) in engines.items()}
    return {name: statistics.median(ms) for name, ms in interleaved_ms(runners, tensor, rounds).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "demo" / "default-bundle")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--float", type=int, nargs="+", default=[0, 4, 16], dest="float_layers",
                        help="how many of the most sensitive layers stay in float, per INT8 variant")
    parser.add_argument("--overflow-fix", nargs="+", default=["enable"], choices=OVERFLOW_FIXES,
                        help="NNCF's overflow fix for the OpenVINO variants (one variant each): 7-bit weights "
                             "everywhere (enable, the converter's default), in the first layer only (what the "
                             "x86-64-avx512-vnni profile asks for), nowhere")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from calibration.calibration_set import build_calibration_set
    from calibration.sources import list_candidates
    from converters.accuracy_guard import check_against_fp32, layer_sensitivity
    from converters.engine_build import embed_tensors
    from converters.labelled_sets import SHARED_DATASETS, merge_labelled, shared_dataset_labels, training_images
    from converters.quantize.registry import build_engine
    from edge_retina.bench.parity import prepare_tensors
    from edge_retina.adapt.overlay import bundle_scoring
    from edge_retina.bundle import load_bundle
    from edge_retina.preprocess import Preprocessor

    bundle = load_bundle(args.bundle)
    manifest = bundle.manifest
    table, thresholds = bundle_scoring(bundle, adapted=False)
    thresholds = {c: t for c, t in thresholds.items() if t is not None}
    fp32 = bundle.path_of(bundle.select_engine("onnxruntime", "fp32").files[0])
    spec = manifest.input
    preprocessor = Preprocessor(spec)
    photos = merge_labelled([shared_dataset_labels(args.datasets, d, split="val") for d in SHARED_DATASETS]).paths
    tensors, kept, _ = prepare_tensors(preprocessor, photos)
    photos = [photos[i] for i in kept]
    print(f"{machine_info()}\n{len(photos)} validation photos, {len(thresholds)} thresholded conditions", flush=True)
    reference = embed_tensors("onnxruntime", fp32, "fp32", tensors, None)

    rows = []

    def referrals(embeddings: np.ndarray) -> dict[str, np.ndarray]:
        probabilities = table.score(embeddings).condition_probabilities
        return {c: probabilities[c] >= t for c, t in thresholds.items()}

    reference_referrals = referrals(reference)
    reproducible = {c: np.ones(len(photos), bool) for c in thresholds}  # narrowed by each benign change

    def record(name: str, embeddings: np.ndarray, kind: str) -> None:
        """kind: "benign" (narrows the reproducible referrals), "mirror", or "int8" (scored on them too)."""
        check = check_against_fp32(reference, embeddings, table=table, thresholds=thresholds)
        agreement = {c: v["referral_agreement"] for c, v in check.conditions.items()}
        rows.append({"variant": name, "mean_cosine": check.cosine["mean"], "referral_agreement": agreement,
                     "logit_noise": logit_noise(table, reference, embeddings)})
        if kind == "benign":
            for c, referred in referrals(embeddings).items():
                reproducible[c] &= referred == reference_referrals[c]
        elif kind == "int8":
            rows[-1]["agreement_on_reproducible"] = {
                c: float(np.mean(referred[reproducible[c]] == reference_referrals[c][reproducible[c]]))
                for c, referred in referrals(embeddings).items()}
        print(f"{name:34s} agreement min {min(agreement.values()):.3f} "
              f"noise max {max(rows[-1]['logit_noise'].values()):.3f}", flush=True)

    for quality in (95, 90):
        resaved_tensors = np.concatenate([preprocessor.prepare(resaved(p, quality)).tensor for p in photos])
        record(f"FP32, photo re-saved as JPEG q{quality}", embed_tensors("onnxruntime", fp32, "fp32", resaved_tensors, None),
               "benign")
    shifted = np.ascontiguousarray(np.concatenate([tensors[..., :1], tensors[..., :-1]], axis=-1))
    record("FP32, input moved by 1 px", embed_tensors("onnxruntime", fp32, "fp32", shifted, None), "benign")
    record("FP32, photo mirrored", embed_tensors("onnxruntime", fp32, "fp32", np.ascontiguousarray(tensors[..., ::-1]), None),
           "mirror")

    engines = {"onnxruntime fp32": ("onnxruntime", fp32, "fp32")}
    with tempfile.TemporaryDirectory(prefix="bench-int8-floor-") as tmp:
        work = Path(tmp)
        calibration = build_calibration_set(list_candidates(training_images(args.datasets, every=6)), work / "calibration",
                                            spec, size=128, seed=0,
                                            embed=lambda t: embed_tensors("onnxruntime", fp32, "fp32", t, None))
        ranked = [name for name, _ in layer_sensitivity(
            fp32, build_engine("onnxruntime", "int8", fp32, work / "rank", calibration.tensors)[0],
            calibration.tensors[:16])]
        for count in args.float_layers:
            variants = [("openvino", {"overflow_fix": fix}) for fix in args.overflow_fix] + [("onnxruntime", {})]
            for backend, options in variants:
                suffix = f", overflow fix {options['overflow_fix']}" if len(args.overflow_fix) > 1 and options else ""
                name = f"{backend} int8, {count} layers float{suffix}"
                path = build_engine(backend, "int8", fp32, work / name.replace(" ", "_").replace(",", ""),
                                    calibration.tensors, ranked[:count], options)[0]
                record(name, embed_tensors(backend, path, "int8", tensors, None), "int8")
                engines[name] = (backend, path, "int8")
        medians = latency(engines, tensors[:1], args.rounds)
    base = medians["onnxruntime fp32"]

    conditions = list(thresholds)
    print(f"\n| variant | {' | '.join(conditions)} | max noise |\n|---|{'---|' * len(conditions)}---|")
    for row in rows:
        cells = " | ".join(f"{row['referral_agreement'][c]:.3f}" for c in conditions)
        print(f"| {row['variant']} | {cells} | {max(row['logit_noise'].values()):.3f} |")
    print(f"\nOn the reproducible referrals only (FP32's referral unchanged by both re-saves and the 1 px move):\n"
          f"\n| variant | {' | '.join(conditions)} |\n|---|{'---|' * len(conditions)}")
    print(f"| reproducible pairs | {' | '.join(f'{reproducible[c].mean():.3f}' for c in conditions)} |")
    for row in rows:
        if "agreement_on_reproducible" in row:
            cells = " | ".join(f"{row['agreement_on_reproducible'][c]:.3f}" for c in conditions)
            print(f"| {row['variant']} | {cells} |")
    print("\n| engine alone (batch 1, 1 thread) | median ms | vs ORT FP32 |\n|---|---|---|")
    for name, ms in medians.items():
        print(f"| {name} | {ms:.2f} | {base / ms:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(),
                                         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "photos": len(photos), "ranking": ranked, "rows": rows, "latency_ms": medians,
                                         "reproducible_share": {c: float(m.mean()) for c, m in reproducible.items()}},
                                        indent=2))


if __name__ == "__main__":
    main()
