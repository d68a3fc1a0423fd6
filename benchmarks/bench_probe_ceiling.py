"""Benchmark: how much of each test task a *supervised* linear probe can read off frozen features,
beside the teacher's zero-shot score: where the teacher's accuracy is limited by its representation.

For every task of ``converters/reference/evaluate.py`` a logistic regression is fitted on the task's
**train** split (regularisation chosen by 5-fold cross-validation on train only, AUROC scoring) and
scored on its **test** split. Feature sets, each L2-normalised per part, on the clean photo at the
teacher's input (384 px, the shared preprocessing):

- ``imagenet_s5``: ImageNet EfficientNet-Lite2, global mean of stage 5's output (the teacher
  recipe's frozen trunk);
- ``imagenet_s4_s5``: the means of stages 4 and 5 side by side;
- ``imagenet_pooled``: the whole ImageNet tower's pooled 1280-d features;
- ``teacher``: the teacher's 512-d image embedding (``--teacher``, default the shipped one).

A probe learns from every labelled training photo of the task, which zero-shot scoring never does,
so a probe's AUROC well above zero-shot shows room in the features, and a probe no better than
zero-shot shows the features are the limit. Usage::

    .venv/bin/python benchmarks/bench_probe_ceiling.py --json probe.json
    .venv/bin/python benchmarks/bench_probe_ceiling.py --teacher runs/ref-v4/reference-v4.safetensors

The features of ~10,300 photos take about 6 minutes on 2 cores (OpenVINO, FP32); the pixel cache is
the teacher training's (``runs/cache``), built on first use.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_retina.bench.machine import machine_info

FEATURE_SETS = {
    "imagenet_s5": ("s5",),
    "imagenet_s4_s5": ("s4", "s5"),
    "imagenet_pooled": ("pooled",),
    "teacher": ("teacher",),
}
CS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def extract(teacher_path: Path | None, datasets: Path, cache: Path, batch: int = 32) -> tuple[list, dict, dict]:
    """The records; per feature part an (N, D) float32 array over every record; and per task
    (``condition/dataset``) the teacher's zero-shot test AUROC with the shipped prompt file."""
    import openvino as ov
    import torch

    from converters.backbones import create_lite
    from converters.prompt_files import DEFAULT_PROMPT_FILE, load_prompt_file
    from converters.reference.evaluate import zero_shot_auroc
    from converters.reference.data import build_pixel_cache, load_records
    from converters.reference.model import IMAGE_ARCH, REFERENCE_INPUT_SPEC
    from converters.reference.weights import REFERENCE_WEIGHTS, load_reference
    from edge_retina.preprocess import Preprocessor

    records = load_records(datasets)
    pixels = build_pixel_cache(records, datasets, REFERENCE_INPUT_SPEC, cache)
    imagenet = create_lite(IMAGE_ARCH, pretrained=True).eval()
    dual_encoder = load_reference(teacher_path or REFERENCE_WEIGHTS)
    teacher = dual_encoder.vision_model

    # One graph for all four feature sets (rather than evaluate.embed_images for the teacher plus a
    # pass for ImageNet): each batch is normalised once and runs through one compiled graph.
    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.imagenet, self.teacher = imagenet, teacher  # submodules, so tracing sees their weights

        def forward(self, x):
            net = self.imagenet
            h = net.bn1(net.conv_stem(x))
            means = []
            for block in net.blocks:
                h = block(h)
                means.append(h.mean((2, 3)))
            pooled = net.forward_head(net.bn2(net.conv_head(h)))
            return means[4], means[5], pooled, self.teacher(x)

    size = REFERENCE_INPUT_SPEC.height, REFERENCE_INPUT_SPEC.width
    with torch.no_grad():
        model = ov.convert_model(Features().eval(), example_input=torch.zeros(1, 3, *size),
                                 input=[ov.PartialShape([-1, 3, *size])])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    prepare = Preprocessor(REFERENCE_INPUT_SPEC)
    parts: dict[str, list] = {"s4": [], "s5": [], "pooled": [], "teacher": []}
    started = time.time()
    for i in range(0, len(pixels), batch):
        out = compiled(np.ascontiguousarray(prepare.normalise(np.asarray(pixels[i:i + batch]))))
        for name, k in zip(parts, range(4)):
            parts[name].append(out[k])
        if (i // batch) % 64 == 0:
            print(f"features: {i + batch}/{len(pixels)} in {time.time() - started:.0f}s", flush=True)
    parts = {name: np.concatenate(chunks).astype(np.float32) for name, chunks in parts.items()}
    test = [i for i, r in enumerate(records) if r.split == "test"]
    zero_shot = zero_shot_auroc(torch.from_numpy(parts["teacher"][test]), [records[i] for i in test],
                                dual_encoder.text_model, dual_encoder.logit_scale.detach(),
                                load_prompt_file(DEFAULT_PROMPT_FILE))
    return records, parts, {f"{r['condition']}/{r['dataset']}": r["auroc"] for r in zero_shot if r["auroc"]}


def probe_auroc(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    """Test AUROC of a logistic regression whose C was chosen by 5-fold CV on train, and that C."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=list(CS), cv=5, scoring="roc_auc", class_weight="balanced", max_iter=3000))
    probe.fit(x_train, y_train)
    return float(roc_auc_score(y_test, probe.decision_function(x_test))), float(probe[-1].C_[0])


def main(argv: list[str] | None = None) -> int:
    from converters.reference.evaluate import DEFAULT_CACHE, DEFAULT_DATASETS, TASKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=None, help="reference weights (default: the shipped)")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.datasets.is_dir():
        parser.error(f"no shared datasets at {args.datasets} (set EDGE_RETINA_DATASETS)")

    records, parts, zero_shot = extract(args.teacher, args.datasets, args.cache)
    features = {name: np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in
                                      (parts[k] for k in keys)], axis=1)
                for name, keys in FEATURE_SETS.items()}
    rows = []
    for task in TASKS:
        split = {s: np.array([i for i, r in enumerate(records) if r.split == s and task.applies_to(r)])
                 for s in ("train", "test")}
        y = {s: np.array([task.is_positive(records[i]) for i in idx], dtype=int) for s, idx in split.items()}
        row = {"condition": task.condition, "dataset": task.dataset, "test_pos": int(y["test"].sum()),
               "test_neg": int((1 - y["test"]).sum()), "train_pos": int(y["train"].sum()),
               "teacher_zero_shot": zero_shot[f"{task.condition}/{task.dataset}"]}
        for name, x in features.items():
            row[name], row[f"{name}_C"] = probe_auroc(x[split["train"]], y["train"], x[split["test"]], y["test"])
        rows.append(row)
        print(f"{task.condition}/{task.dataset}: " + " ".join(f"{n} {row[n]:.3f}" for n in FEATURE_SETS), flush=True)

    # 77 columns: task 22, counts 8, then the zero-shot and the four probes at 9 each.
    columns = ["teacher_zero_shot", *FEATURE_SETS]
    print("\ntest AUROC: the teacher zero-shot, then supervised linear probes")
    print(f"{'task':<22} {'n+/n-':>8} " + "".join(f"{n:>9}" for n in ["zero-shot", "s5", "s4+s5", "pooled",
                                                                           "teacher"]))
    for row in rows:
        task = f"{row['condition'][:12]}/{row['dataset'][:9]}"
        print(f"{task:<22} {row['test_pos']:>3}/{row['test_neg']:<4} " + "".join(f"{row[n]:>9.3f}" for n in columns))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                         time.gmtime()), "teacher": str(args.teacher or "shipped"),
                                         "feature_sets": FEATURE_SETS, "tasks": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
