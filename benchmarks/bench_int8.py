"""Benchmark: INT8 engines of the reference encoder against its FP32 ONNX, on the shared datasets.

Steps (nothing is written into the repo; work files go to a temporary folder):

1. Export the reference image encoder (``--weights``: the shipped safetensors, or a training
   checkpoint ``best.pt``) to FP32 ONNX; embed the prompt table with its text tower.
2. Calibration candidates: ``--candidates`` images of the *train* split of ../shared/datasets
   (every dataset, a fixed stride through the record list). Held-out evaluation: the *test* split of
   every dataset (``shared_dataset_labels``), capped at ``--eval-limit`` per dataset.
3. For each calibration size (``--sizes``, default 32 64 128 300): a calibration set by
   ``build_calibration_set`` (quality gate + k-centre greedy on the FP32 embeddings, seed 0), then
   OpenVINO INT8 (NNCF) and ONNX Runtime INT8 (QDQ), each timed (quantization wall time) and
   compared with the FP32 ONNX on the held-out images: mean and minimum embedding cosine, ΔAUROC
   per condition (``check_against_fp32``). With ``--tensorrt``, the ModelOpt Q/DQ ONNX too (run in ORT).
4. Latency, batch 1, 2 threads, ``--repeats`` rounds interleaved (ORT FP32, OpenVINO FP32,
   OpenVINO INT8, ORT INT8 of the largest calibration size, in rotating order): medians and ratios.

Usage::

    .venv/bin/python benchmarks/bench_int8.py --weights converters/reference/weights/reference-v2.safetensors \
        --json bench_int8.json
    .venv/bin/python benchmarks/bench_int8.py --report bench_int8.json   # the markdown tables again
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_retina.bench.machine import machine_info

REPO = Path(__file__).resolve().parents[1]


def load_encoder_and_table(weights: Path):
    """(image encoder, PromptTable, name) of the reference model at ``weights`` (.safetensors or a .pt checkpoint)."""
    import torch

    from converters.bundle_builder import recipe_prompt_table, BundleRecipe
    from converters.prompt_files import load_prompt_file
    from converters.reference import REFERENCE_INPUT_SPEC, build_reference_model, load_reference

    if weights.suffix == ".pt":
        state = torch.load(weights, map_location="cpu", weights_only=False)["model"]
        dim = state["vision_model.projection_head_vision.projection.weight"].shape[0]
        model = build_reference_model(dim)
        model.load_state_dict(state, strict=False)
        model = model.eval()
    else:
        model = load_reference(weights)

    def embed_texts(texts):
        with torch.no_grad():
            return model.encode_text(list(texts)).numpy()

    recipe = BundleRecipe(model.image_encoder.eval(), REFERENCE_INPUT_SPEC, embed_texts, load_prompt_file(),
                          "mean_renormalised", float(model.logit_scale.detach().exp()), "reference", weights.name, "0" * 64)
    return recipe.encoder, recipe_prompt_table(recipe), REFERENCE_INPUT_SPEC


def embed(backend: str, path: Path, precision: str, tensors: np.ndarray, threads: int = 2) -> np.ndarray:
    from edge_retina.backends import create_runner

    with create_runner(backend, path, precision=precision, threads=threads) as runner:
        return np.concatenate([runner.infer(tensors[s:s + 16]) for s in range(0, len(tensors), 16)])


def interleaved_ms(runners: dict, tensor: np.ndarray, rounds: int, warmup: int = 10) -> dict[str, list[float]]:
    """Per runner, ms per ``infer(tensor)`` over ``rounds`` rounds in rotating order (drift on a shared
    machine hits every engine alike), after ``warmup`` calls each; closes the runners."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        for _ in range(warmup):
            runners[name].infer(tensor)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runners[name].infer(tensor)
            times[name].append((time.perf_counter() - start) * 1000)
    for runner in runners.values():
        runner.close()
    return times


def markdown(results: dict) -> str:
    """The BENCHMARKS.md tables of a results JSON."""
    lines = ["| calibration images | engine | quantize s | mean cosine | p1 cosine | min cosine | "
             "ΔAUROC per condition | within limits |", "|---|---|---|---|---|---|---|---|"]
    for size, row in results["sizes"].items():
        for engine, seconds in (("openvino_int8", "openvino_int8_seconds"),
                                ("onnxruntime_int8", "onnxruntime_int8_seconds"),
                                ("tensorrt_qdq_in_ort", "tensorrt_qdq_seconds")):
            if engine not in row:
                continue
            c = row[engine]
            deltas = ", ".join(f"{k} {v['delta_auroc']:+.4f}" for k, v in c["conditions"].items())
            lines.append(f"| {size} | {engine} | {row[seconds]:.1f} | {c['cosine']['mean']:.5f} | "
                         f"{c['cosine']['p1']:.4f} | {c['cosine']['min']:.4f} | {deltas} | "
                         f"{'yes' if c['passed'] else 'no'} |")
    lines += ["", "| engine (batch 1, 2 threads) | median ms | p90 ms | speed-up vs ORT FP32 |", "|---|---|---|---|"]
    for name, t in results["latency_ms"].items():
        lines.append(f"| {name} | {t['median']:.1f} | {t['p90']:.1f} | {t['speedup_vs_ort_fp32']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=None,
                        help="reference-model weights (.safetensors or a training .pt; default: the shipped ones)")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 300])
    parser.add_argument("--candidates", type=int, default=900)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--tensorrt", action="store_true", help="also the ModelOpt Q/DQ ONNX (checked in ORT)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="only print the tables of a saved --json file")
    args = parser.parse_args()
    if args.weights is None:
        from converters.reference import REFERENCE_WEIGHTS

        args.weights = REFERENCE_WEIGHTS
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return

    from calibration import build_calibration_set
    from calibration.reader import ArrayCalibrationReader
    from calibration.sources import Candidate
    from converters.accuracy_guard import check_against_fp32
    from converters.export.onnx_fp32 import export_onnx
    from converters.export.openvino_ir import onnx_to_openvino_ir
    from converters.labelled_sets import SHARED_DATASETS, shared_dataset_labels
    from converters.quantize.onnxruntime_qdq import quantize_onnxruntime
    from converters.quantize.openvino_nncf import quantize_openvino
    from converters.reference.data import load_records
    from edge_retina.bench.parity import prepare_tensors
    from edge_retina.preprocess import Preprocessor

    results: dict = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "weights": str(args.weights), "sizes": {}}
    encoder, table, spec = load_encoder_and_table(args.weights)
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    fp32_onnx = export_onnx(encoder, spec.size, work / "fp32.onnx")
    ov_fp32 = onnx_to_openvino_ir(fp32_onnx, work / "ov-fp32" / "model.xml")[0]

    # Held-out labelled images: each dataset's test split; conditions are per dataset, so labels are
    # merged with NaN where a dataset does not label a condition.
    paths, label_parts = [], []
    for dataset in SHARED_DATASETS:
        labelled = shared_dataset_labels(args.datasets, dataset, "test", limit=args.eval_limit)
        paths += labelled.paths
        label_parts.append(labelled)
    conditions = sorted({c for part in label_parts for c in part.labels})
    labels = {c: np.concatenate([part.labels.get(c, np.full(len(part.paths), np.nan)) for part in label_parts])
              for c in conditions}
    eval_tensors, kept, skipped = prepare_tensors(Preprocessor(spec), paths)
    labels = {c: y[kept] for c, y in labels.items()}
    fp32_embeddings = embed("onnxruntime", fp32_onnx, "fp32", eval_tensors)
    results["held_out"] = {"images": len(kept), "skipped": len(skipped),
                           "per_condition": {c: [int((y == 1).sum()), int((y == 0).sum())] for c, y in labels.items()}}
    print(f"held-out: {len(kept)} images; conditions {results['held_out']['per_condition']}", flush=True)

    train = [r for r in load_records(args.datasets) if r.split == "train"]
    stride = max(1, len(train) // args.candidates)
    candidates = [Candidate(r.path(args.datasets)) for r in train[::stride][:args.candidates]]

    from edge_retina.backends import create_runner

    last = {}
    with create_runner("onnxruntime", fp32_onnx, precision="fp32", threads=2) as runner:
        for size in args.sizes:
            calibration = build_calibration_set(candidates, work / f"calib-{size}", spec, size=size, seed=0,
                                                embed=runner.infer, model_sha256="bench")
            row = {"calibration_method": calibration.method, "calibration_size": calibration.size}
            t = time.perf_counter()
            ov_xml = quantize_openvino(fp32_onnx, work / f"ov-int8-{size}" / "model.xml", calibration.tensors)[0]
            row["openvino_int8_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            ort_int8 = quantize_onnxruntime(fp32_onnx, work / f"ort-int8-{size}.onnx",
                                            ArrayCalibrationReader(calibration.tensors))
            row["onnxruntime_int8_seconds"] = time.perf_counter() - t
            checks = {
                "openvino_int8": check_against_fp32(fp32_embeddings, embed("openvino", ov_xml, "int8", eval_tensors),
                                                    table=table, labels=labels),
                "onnxruntime_int8": check_against_fp32(fp32_embeddings, embed("onnxruntime", ort_int8, "int8",
                                                                              eval_tensors), table=table, labels=labels),
            }
            if args.tensorrt:
                from converters.quantize.tensorrt_modelopt import quantize_tensorrt_qdq

                t = time.perf_counter()
                trt_onnx = quantize_tensorrt_qdq(fp32_onnx, work / f"trt-{size}.onnx", calibration.tensors)
                row["tensorrt_qdq_seconds"] = time.perf_counter() - t
                checks["tensorrt_qdq_in_ort"] = check_against_fp32(
                    fp32_embeddings, embed("onnxruntime", trt_onnx, "int8", eval_tensors), table=table, labels=labels)
            row.update({name: check.to_dict() for name, check in checks.items()})
            results["sizes"][size] = row
            last = {"ov": ov_xml, "ort": ort_int8}
            print(json.dumps({size: row}, default=float), flush=True)

    # Latency: batch 1, 2 threads, interleaved in rotating order.
    one = eval_tensors[:1]
    variants = {
        "onnxruntime fp32": ("onnxruntime", fp32_onnx, "fp32"),
        "openvino fp32": ("openvino", ov_fp32, "fp32"),
        "openvino int8": ("openvino", last["ov"], "int8"),
        "onnxruntime int8": ("onnxruntime", last["ort"], "int8"),
    }
    runners = {name: create_runner(b, p, precision=prec, threads=2) for name, (b, p, prec) in variants.items()}
    timings = interleaved_ms(runners, one, args.repeats, warmup=5)
    names = list(runners)
    medians = {name: statistics.median(v) for name, v in timings.items()}
    results["latency_ms"] = {name: {"median": medians[name], "p90": float(np.percentile(timings[name], 90)),
                                    "speedup_vs_ort_fp32": medians["onnxruntime fp32"] / medians[name]}
                             for name in names}
    print(json.dumps(results["latency_ms"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(markdown(json.loads(json.dumps(results, default=float))))


if __name__ == "__main__":
    main()
