"""Choose the default student: FLOPs, parameters and FP32 latency of candidate students against the
reference teacher's image tower (ResNet-18 at 224), all exported through the same ONNX path and timed
interleaved on ONNX Runtime. Weights do not change the cost, so every model is randomly initialised.

    python -m converters.distill.compare_students --json runs/bench-distill/students.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from converters.export.onnx_fp32 import export_onnx
from converters.reference.model import EMBED_DIM, REFERENCE_INPUT_SPEC, ImageEncoder
from edge_retina.bench.machine import machine_info

from .report import interleaved_latency
from .student import build_student, count_flops, count_parameters

# (timm architecture, input side): small CNNs of the MobileNet / EfficientNet-Lite class.
CANDIDATES = (
    ("mobilenetv3_small_100", 224),
    ("mobilenetv3_small_100", 192),
    ("mobilenetv3_large_075", 192),
    ("mobilenetv3_large_100", 160),
    ("efficientnet_lite0", 160),
    ("lcnet_075", 224),
    ("mobilenetv4_conv_small", 192),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    models = {"teacher resnet18@224": (ImageEncoder(EMBED_DIM), REFERENCE_INPUT_SPEC.size)}
    for arch, side in CANDIDATES:
        models[f"{arch}@{side}"] = (build_student(arch, EMBED_DIM, side, seed=0), (side, side))
    rows = {}
    with tempfile.TemporaryDirectory(prefix="edge-retina-students-") as tmp:
        paths = {}
        for i, (name, (model, size)) in enumerate(models.items()):
            paths[name] = export_onnx(model, size, Path(tmp) / f"model{i}.onnx")
            rows[name] = {"params": count_parameters(model), "flops": count_flops(model, size)}
        latency = interleaved_latency(paths, {name: size for name, (_, size) in models.items()},
                                      threads=args.threads, repeats=args.repeats)
    teacher = "teacher resnet18@224"
    print("| model | params | GFLOPs | teacher/model FLOPs | median ms | p90 ms | speed-up vs teacher |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        row.update(latency[name])
        row["flops_ratio"] = rows[teacher]["flops"] / row["flops"]
        row["speedup"] = latency[teacher]["median_ms"] / row["median_ms"]
        print(f"| {name} | {row['params'] / 1e6:.2f} M | {row['flops'] / 1e9:.3f} | {row['flops_ratio']:.1f} | "
              f"{row['median_ms']:.2f} | {row['p90_ms']:.2f} | {row['speedup']:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "threads": args.threads, "repeats": args.repeats,
                                         "machine": machine_info(),
                                         "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
