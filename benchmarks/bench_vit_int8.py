"""Benchmark: the ViT-safe INT8 policy on a CLIP-family ViT-B/16 image tower (seeded random weights).

The tower is the one the OpenAI-layout and Chinese-CLIP adapters build (``converters.teachers.clip
.build_openai_vit``: open_clip's ``VisionTransformer``, QuickGELU, class-token pooling, 224 px, patch
16, 12 layers, width 768, 512-d projection) behind the adapters' ``NormalisedImageEncoder``; its weights
are open_clip's initialisation from ``--seed``, since nothing is downloaded. Random weights lack the
outlier channels trained ViTs grow, so this checks the policy's mechanics on a real ViT graph, not a
trained model's accuracy.

Steps (work files go to a temporary folder):

1. Export with the FP32 ONNX exporter (``converters.export.onnx_fp32``).
2. Real fundus photos of ../shared/datasets, prepared by ``Preprocessor`` with the CLIP input spec:
   ``--calibration`` photos of the train split and ``--eval`` photos of the test split (a fixed stride
   through each split's record list, so every dataset is represented).
3. OpenVINO INT8 (NNCF) and ONNX Runtime INT8 (Q/DQ) through the registry's builders, no exclusions;
   for each, what consumes the quantized activations (the policy: only Conv/MatMul/Gemm), and the
   embedding cosine to the FP32 ONNX on the evaluation photos (mean, p1, min).
4. Latency, batch 1, 2 threads, ``--repeats`` rounds interleaved in rotating order: medians.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_vit_int8.py --json bench_vit_int8.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path


from bench_int8 import REPO, embed
from bench_int8_floor import latency
from edge_retina.bench.machine import machine_info

#: ViT-B/16 at 224 px with a 512-d projection: the tower of RET-CLIP / ViLReF and open_clip's ViT-B-16.
VIT_B16 = dict(layers=12, width=768, head_width=64, patch_size=16, image_size=224)
EMBED_DIM = 512


def vit_b16_encoder(seed: int):
    """The adapters' ViT-B/16 image encoder (unit embeddings) with open_clip's initialisation from ``seed``."""
    import torch

    from converters.teachers.clip import NormalisedImageEncoder, build_openai_vit
    from open_clip.model import CLIPVisionCfg

    torch.manual_seed(seed)
    return NormalisedImageEncoder(build_openai_vit(CLIPVisionCfg(**VIT_B16), output_dim=EMBED_DIM)).eval()


def strided(records: list, count: int) -> list:
    return records[::max(1, len(records) // count)][:count]


def openvino_fake_quantize_consumers(xml: Path) -> Counter:
    """Op types fed by an activation FakeQuantize in an OpenVINO IR (NNCF quantizes activations that way)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return Counter(target.get_node().get_type_name()
                   for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
                   for target in op.output(0).get_target_inputs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--calibration", type=int, default=64, help="train-split photos to calibrate on")
    parser.add_argument("--eval", type=int, default=100, help="test-split photos to compare on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import onnx

    from converters.export.onnx_fp32 import export_onnx
    from converters.quantize.policy import dequantized_input_consumers, is_transformer, quantizable_nodes, \
        quantized_node_names
    from converters.quantize.registry import build_engine
    from converters.reference.data import load_records
    from converters.teachers.clip import clip_input_spec
    from edge_retina.bench.metrics import cosine_similarity, distribution
    from edge_retina.bench.parity import prepare_tensors
    from edge_retina.preprocess import Preprocessor

    results: dict = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "tower": {**VIT_B16, "embed_dim": EMBED_DIM, "seed": args.seed}}
    work = Path(tempfile.mkdtemp(prefix="bench-vit-int8-"))
    spec = clip_input_spec(VIT_B16["image_size"])
    t = time.perf_counter()
    fp32_onnx = export_onnx(vit_b16_encoder(args.seed), spec.size, work / "fp32.onnx")
    fp32_model = onnx.load(str(fp32_onnx))
    results["export_seconds"] = time.perf_counter() - t
    results["graph"] = {"transformer": is_transformer(fp32_model), "quantizable_nodes": len(quantizable_nodes(fp32_model)),
                        "op_types": dict(Counter(n.op_type for n in fp32_model.graph.node))}
    print(f"exported in {results['export_seconds']:.0f} s: {results['graph']}", flush=True)

    records = load_records(args.datasets)
    preprocessor = Preprocessor(spec)
    sets = {}
    for name, split, count in (("calibration", "train", args.calibration), ("eval", "test", args.eval)):
        chosen = strided([r for r in records if r.split == split], count)
        sets[name], _, skipped = prepare_tensors(preprocessor, [r.path(args.datasets) for r in chosen])
        results[f"{name}_images"] = {"split": split, "images": len(sets[name]), "skipped": len(skipped),
                                     "datasets": dict(Counter(r.dataset for r in chosen))}
    print({k: results[k] for k in ("calibration_images", "eval_images")}, flush=True)
    fp32_embeddings = embed("onnxruntime", fp32_onnx, "fp32", sets["eval"])

    engines = {"openvino fp32": ("openvino", build_engine("openvino", "fp32", fp32_onnx, work / "ov-fp32")[0], "fp32")}
    results["int8"] = {}
    for backend in ("openvino", "onnxruntime"):
        t = time.perf_counter()
        model = build_engine(backend, "int8", fp32_onnx, work / f"{backend}-int8", sets["calibration"])[0]
        row = {"quantize_seconds": time.perf_counter() - t}
        if backend == "onnxruntime":
            quantized = onnx.load(str(model))
            row["dequantized_input_consumers"] = dict(dequantized_input_consumers(quantized))
            row["quantized_nodes"] = len(quantized_node_names(quantized))
        else:
            row["fake_quantize_consumers"] = dict(openvino_fake_quantize_consumers(model))
        row["cosine"] = distribution(cosine_similarity(embed(backend, model, "int8", sets["eval"]), fp32_embeddings))
        results["int8"][backend] = row
        engines[f"{backend} int8"] = (backend, model, "int8")
        print(json.dumps({backend: row}), flush=True)

    # Latency: batch 1, 2 threads, interleaved in rotating order so load drifts hit every engine alike.
    engines = {"onnxruntime fp32": ("onnxruntime", fp32_onnx, "fp32"), **engines}
    medians = latency(engines, sets["eval"][:1], args.repeats, threads=2)
    results["latency_ms"] = {name: {"median": medians[name], "speedup_vs_ort_fp32": medians["onnxruntime fp32"] / m}
                             for name, m in medians.items()}
    print(json.dumps(results["latency_ms"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
