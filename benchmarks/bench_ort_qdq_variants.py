"""Benchmark: why the ONNX Runtime INT8 target uses UINT8 activations and Q/DQ on Conv outputs.

Quantizes the reference encoder three ways with ``quantize_onnxruntime`` (Q/DQ on Conv/MatMul/Gemm
inputs only with INT8 activations; + outputs, INT8; + outputs, UINT8 = the default for CNNs) from
the same 32-image calibration set (k-centre on FP32 embeddings over 300 train-split images), then
times batch-1 inference with 2 threads, ``--repeats`` rounds interleaved in rotating order with the
FP32 ONNX, and reports median ms and mean cosine to FP32 on the calibration images. Usage::

    .venv/bin/python benchmarks/bench_ort_qdq_variants.py --weights converters/reference/weights/reference-v2.safetensors
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_int8 import REPO, embed, load_encoder_and_table

from edge_retina.bench.machine import machine_info

VARIANTS = {
    "inputs only, int8 activations": {"activation_type": "int8", "quantize_outputs": False},
    "+ outputs, int8 activations": {"activation_type": "int8", "quantize_outputs": True},
    "+ outputs, uint8 activations (default)": {"activation_type": "uint8", "quantize_outputs": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=None,
                        help="reference-model weights (.safetensors or a training .pt; default: the shipped ones)")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.weights is None:
        from converters.reference import REFERENCE_WEIGHTS

        args.weights = REFERENCE_WEIGHTS

    from calibration import ArrayCalibrationReader, build_calibration_set
    from calibration.sources import Candidate
    from converters.export.onnx_fp32 import export_onnx
    from converters.quantize.onnxruntime_qdq import quantize_onnxruntime
    from converters.reference.data import load_records
    from edge_retina.backends import create_runner

    print(machine_info())
    encoder, _, spec = load_encoder_and_table(args.weights)
    work = Path(tempfile.mkdtemp(prefix="bench-ort-qdq-"))
    fp32 = export_onnx(encoder, spec.size, work / "fp32.onnx")
    train = [r for r in load_records(args.datasets) if r.split == "train"]
    candidates = [Candidate(r.path(args.datasets)) for r in train[::max(1, len(train) // 300)][:300]]
    with create_runner("onnxruntime", fp32, precision="fp32", threads=2) as runner:
        calibration = build_calibration_set(candidates, work / "calib", spec, size=32, seed=0, embed=runner.infer)
    models = {"fp32": (fp32, "fp32")}
    for name, options in VARIANTS.items():
        path = quantize_onnxruntime(fp32, work / f"{len(models)}.onnx", ArrayCalibrationReader(calibration.tensors),
                                    **options)
        models[name] = (path, "int8")
    reference = embed("onnxruntime", fp32, "fp32", calibration.tensors)
    runners = {name: create_runner("onnxruntime", path, precision=p, threads=2) for name, (path, p) in models.items()}
    one = calibration.tensors[:1]
    timings = {name: [] for name in runners}
    names = list(runners)
    for name in names:
        for _ in range(3):
            runners[name].infer(one)
    for i in range(args.repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runners[name].infer(one)
            timings[name].append((time.perf_counter() - start) * 1000)
    print("| ORT variant | median ms | mean cosine to FP32 |\n|---|---|---|")
    for name, (path, precision) in models.items():
        e = embed("onnxruntime", path, precision, calibration.tensors)
        cos = np.sum(e * reference, 1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(reference, axis=1))
        print(f"| {name} | {statistics.median(timings[name]):.1f} | {cos.mean():.5f} |")
    for runner in runners.values():
        runner.close()


if __name__ == "__main__":
    main()
