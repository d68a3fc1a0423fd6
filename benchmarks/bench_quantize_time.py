"""Benchmark: wall time to quantize a ResNet-50-class encoder (the issue's goal: at most 2 minutes).

torchvision ResNet-50 with random weights (timing does not depend on the weights) and its fc layer
removed, exported to FP32 ONNX at 224 px; a 300-image calibration set from the shared datasets'
train split (k-centre on thumbnails, seed 0); then each converter is timed once. Usage::

    .venv/bin/python benchmarks/bench_quantize_time.py
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_int8 import REPO

from edge_retina.bench.machine import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args()

    import torch

    from calibration import ArrayCalibrationReader, build_calibration_set
    from calibration.sources import Candidate
    from converters.export.onnx_fp32 import export_onnx
    from converters.quantize.onnxruntime_qdq import quantize_onnxruntime
    from converters.quantize.openvino_nncf import quantize_openvino
    from converters.quantize.tensorrt_modelopt import quantize_tensorrt_qdq
    from converters.reference.data import load_records
    from converters.torch_compat import ensure_torchvision
    from edge_retina.preprocess import InputSpec

    print(machine_info())
    ensure_torchvision()
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    work = Path(tempfile.mkdtemp(prefix="bench-qtime-"))
    spec = InputSpec(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    fp32 = export_onnx(model.eval(), spec.size, work / "resnet50.onnx")
    train = [r for r in load_records(args.datasets) if r.split == "train"]
    candidates = [Candidate(r.path(args.datasets)) for r in train[::max(1, len(train) // 600)][:600]]
    tensors = build_calibration_set(candidates, work / "calib", spec, size=args.size, seed=0).tensors
    print(f"| converter (ResNet-50, {len(tensors)} calibration images) | wall s |\n|---|---|")
    for name, run in (
        ("OpenVINO INT8 (NNCF)", lambda: quantize_openvino(fp32, work / "ov" / "model.xml", tensors)),
        ("ONNX Runtime INT8 (QDQ)", lambda: quantize_onnxruntime(fp32, work / "ort.onnx", ArrayCalibrationReader(tensors))),
        ("TensorRT Q/DQ ONNX (ModelOpt)", lambda: quantize_tensorrt_qdq(fp32, work / "trt.onnx", tensors)),
    ):
        start = time.perf_counter()
        run()
        print(f"| {name} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
