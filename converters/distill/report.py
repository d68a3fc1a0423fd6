"""The student section of the parity report: teacher vs distilled student on held-out labelled images.

Per dataset and condition: teacher and student zero-shot AUROC, retention = (AUROC_student - 0.5) /
(AUROC_teacher - 0.5), decision agreement at the bundle's thresholds; per dataset the embedding
cosine to the teacher; parameters and FLOPs of both; FP32 latency of both on one backend, measured
interleaved (the machine's speed drifts, so the two are timed in alternation and compared by medians).

Each model sees every image through its OWN input spec (the shared Preprocessor), as on the device.

    python -m converters.distill.report --student converters/distill/weights/student-v1.safetensors \\
        --json runs/distill/report.json --markdown runs/distill/report.md
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from converters.export.onnx_fp32 import export_onnx
from converters.labelled_sets import SHARED_DATASETS, shared_dataset_labels
from converters.parity_references import torch_embeddings
from converters.prompt_tables import DEFAULT_THRESHOLD, embed_conditions
from converters.prompt_files import DEFAULT_PROMPT_FILE, load_prompt_file
from converters.teachers import Teacher, load_teacher
from edge_retina.backends import available_backends, create_runner
from edge_retina.bench import metrics
from edge_retina.bench.labels import LabelledImages
from edge_retina.bench.machine import machine_info
from edge_retina.bench.parity import ParityReport, prepare_tensors
from edge_retina.preprocess import Preprocessor
from edge_retina.preprocess.spec import InputSpec
from edge_retina.prompt_table import PromptTable

from .student import StudentEncoder, count_flops, count_parameters, load_student


@dataclass
class RetentionRow:
    dataset: str
    condition: str
    n_pos: int
    n_neg: int
    auroc_teacher: float
    auroc_student: float
    retention: float | None  # None when the teacher is at or below chance (retention undefined)
    delta_ci95: tuple[float, float]  # paired bootstrap 95 % CI of AUROC_student - AUROC_teacher
    decision_agreement: float  # fraction of the labelled images where both refer or both do not
    threshold: float


@dataclass
class StudentParity:
    rows: list[RetentionRow]
    cosine: dict[str, dict[str, float]]  # dataset -> distribution of the per-image cosine to the teacher
    n_images: dict[str, int]
    skipped: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def student_parity(teacher: Teacher, student: StudentEncoder, student_spec: InputSpec, table: PromptTable,
                   labelled: dict[str, LabelledImages], thresholds: dict[str, float] | None = None,
                   replicates: int = 2000) -> StudentParity:
    """``labelled`` maps a dataset name to its held-out images and condition labels."""
    thresholds = thresholds or {}
    rows, cosines, counts, skipped = [], {}, {}, []
    for dataset, images in labelled.items():
        t_tensors, t_kept, t_skipped = prepare_tensors(Preprocessor(teacher.input_spec), images.paths)
        s_tensors, s_kept, _ = prepare_tensors(Preprocessor(student_spec), images.paths)
        if t_kept != s_kept:  # both specs decode the same file, so both fail on the same images
            raise RuntimeError(f"{dataset}: teacher and student preprocessing kept different images")
        skipped += t_skipped
        labels = {c: y[t_kept] for c, y in images.labels.items()}
        t_emb = torch_embeddings(teacher.image_encoder.eval(), t_tensors)
        s_emb = torch_embeddings(student.eval(), s_tensors)
        cosines[dataset] = metrics.distribution(metrics.cosine_similarity(s_emb, t_emb))
        counts[dataset] = len(t_kept)
        t_prob = table.score(t_emb).condition_probabilities
        s_prob = table.score(s_emb).condition_probabilities
        for condition, y_all in labels.items():
            mask = ~np.isnan(y_all)
            y = y_all[mask]
            if condition not in t_prob or len(np.unique(y)) < 2:
                continue
            t_score, s_score = t_prob[condition][mask], s_prob[condition][mask]
            t_auroc, s_auroc = metrics.auroc(y, t_score), metrics.auroc(y, s_score)
            delta = metrics.paired_bootstrap_delta(y, t_score, s_score, replicates=replicates, seed=0)
            threshold = thresholds.get(condition, DEFAULT_THRESHOLD)
            rows.append(RetentionRow(dataset, condition, int((y == 1).sum()), int((y == 0).sum()), t_auroc, s_auroc,
                                     metrics.retention(s_auroc, t_auroc), (delta.ci_low, delta.ci_high),
                                     metrics.decision_agreement(t_score, s_score, threshold), threshold))
    return StudentParity(rows, cosines, counts, skipped)


def interleaved_latency(models: dict[str, Path], input_sizes: dict[str, tuple[int, int]], *, backend: str = "onnxruntime",
                        threads: int | None = 1, repeats: int = 50, warmup: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 FP32 latency (ms) of each ONNX model on ``backend``, run in alternation."""
    rng = np.random.default_rng(0)
    inputs = {name: rng.standard_normal((1, 3, *input_sizes[name])).astype(np.float32) for name in models}
    times: dict[str, list[float]] = {name: [] for name in models}
    with ExitStack() as stack:
        runners = {name: stack.enter_context(create_runner(backend, path, precision="fp32", threads=threads))
                   for name, path in models.items()}
        for i in range(warmup + repeats):
            for name, runner in runners.items():
                start = time.perf_counter()
                runner.infer(inputs[name])
                if i >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))} for name, t in times.items()}


def compute_profile(teacher: Teacher, student: StudentEncoder, student_spec: InputSpec, *, backend: str = "onnxruntime",
                    threads: int | None = 1, repeats: int = 50, onnx_paths: dict[str, Path] | None = None) -> dict:
    """Parameters, FLOPs and interleaved FP32 latency on ``backend`` of teacher and student.

    ``onnx_paths`` ("teacher" / "student" -> FP32 ONNX) reuses exports the caller already has; the
    others are exported here, through the same path as every encoder.
    """
    models = {"teacher": (teacher.image_encoder, teacher.input_spec.size), "student": (student, student_spec.size)}
    with tempfile.TemporaryDirectory(prefix="edge-retina-distill-") as tmp:
        paths = {name: (onnx_paths or {}).get(name) or export_onnx(model, size, Path(tmp) / f"{name}.onnx")
                 for name, (model, size) in models.items()}
        latency = interleaved_latency(paths, {name: size for name, (_, size) in models.items()},
                                      backend=backend, threads=threads, repeats=repeats)
    profile = {
        "teacher": {"params": count_parameters(teacher.image_encoder),
                    "flops": count_flops(teacher.image_encoder, teacher.input_spec.size),
                    "input_size": list(teacher.input_spec.size), **latency["teacher"]},
        "student": {"params": count_parameters(student), "flops": count_flops(student, student_spec.size),
                    "input_size": list(student_spec.size), **latency["student"]},
        "backend": backend, "threads": threads, "repeats": repeats,
    }
    profile["speedup"] = profile["teacher"]["median_ms"] / profile["student"]["median_ms"]
    profile["flops_ratio"] = profile["teacher"]["flops"] / profile["student"]["flops"]
    return profile


def distillation_summary(parity: ParityReport, teacher: str, student: str, profile: dict | None) -> dict:
    """What a student bundle's manifest records (``model.student.distillation``): per condition the
    teacher's and the student's AUROC, retention, ΔAUROC CI and decision agreement at the bundle's
    threshold, from a parity report with the teacher as reference; the embedding cosine to the
    teacher; and ``compute_profile``'s parameters, FLOPs and interleaved latency."""
    conditions = {}
    for c in parity.conditions:
        t, s = c.models[teacher], c.models[student]
        conditions[c.condition] = {
            "n_pos": c.n_pos, "n_neg": c.n_neg, "threshold": c.threshold,
            "auroc_teacher": t.auroc, "auroc_student": s.auroc, "retention": s.retention,
            "delta_ci95": [s.bootstrap.ci_low, s.bootstrap.ci_high], "decision_agreement": s.agreement,
        }
    return {
        "held_out_images": parity.n_images,
        "conditions": conditions,
        "cosine_to_teacher": metrics.distribution(parity.cosine[student]),
        "profile": profile,
        "machine": machine_info(),
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_markdown(parity: StudentParity, profile: dict | None = None, split: str = "test") -> str:
    lines = [f"| dataset ({split} split) | condition | pos/neg | teacher AUROC | student AUROC | retention | "
             "ΔAUROC 95 % CI | agreement @thr |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in parity.rows:
        teacher, student = (metrics.format_auroc(auroc, r.n_pos, r.n_neg, digits=3)
                            for auroc in (r.auroc_teacher, r.auroc_student))
        lines.append(f"| {r.dataset} | {r.condition} | {r.n_pos}/{r.n_neg} | {teacher} | "
                     f"{student} | {_fmt(r.retention, 2)} | [{r.delta_ci95[0]:+.3f}, {r.delta_ci95[1]:+.3f}] | "
                     f"{r.decision_agreement:.3f} @{r.threshold:.3g} |")
    footnote = metrics.few_labels_footnote((r.n_pos, r.n_neg) for r in parity.rows)
    if footnote:
        lines += ["", footnote]
    lines += ["", "| dataset | images | cosine to teacher: mean | median | 5th percentile | min |",
              "|---|---:|---:|---:|---:|---:|"]
    for dataset, c in parity.cosine.items():
        lines.append(f"| {dataset} | {parity.n_images[dataset]} | {c['mean']:.3f} | {c['median']:.3f} | {c['p5']:.3f} | "
                     f"{c['min']:.3f} |")
    if profile:
        lines += ["", f"| model | input | params | GFLOPs | FP32 {profile['backend']} ({profile['threads']} thread) "
                      "median ms | p90 ms |", "|---|---|---:|---:|---:|---:|"]
        for name in ("teacher", "student"):
            p = profile[name]
            lines.append(f"| {name} | {p['input_size'][0]}x{p['input_size'][1]} | {p['params'] / 1e6:.2f} M | "
                         f"{p['flops'] / 1e9:.3f} | {p['median_ms']:.2f} | {p['p90_ms']:.2f} |")
        lines.append(f"\nStudent speed-up {profile['speedup']:.1f}x (medians), {profile['flops_ratio']:.1f}x fewer FLOPs "
                     "(torch's counter: a multiply-add is 2 FLOPs).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from edge_retina.bench.shared_datasets import shared_datasets_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, required=True, help="student .safetensors (with its .json sidecar)")
    parser.add_argument("--family", default="reference")
    parser.add_argument("--checkpoint", type=Path, default=None, help="teacher checkpoint (default: the family's)")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPT_FILE)
    parser.add_argument("--datasets", type=Path, default=None)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per dataset")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="decision agreement at this bundle's referral thresholds (default: 0.5 everywhere)")
    parser.add_argument("--threads", type=int, default=1, help="torch and engine threads")
    parser.add_argument("--backend", default="onnxruntime", choices=available_backends(),
                        help="engine of the FP32 latency comparison")
    parser.add_argument("--repeats", type=int, default=50, help="latency repeats per model")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    datasets = args.datasets or shared_datasets_dir()
    if datasets is None:
        parser.error("no shared datasets found: pass --datasets")
    teacher = load_teacher(args.family, args.checkpoint)
    student, spec, sidecar = load_student(args.student)
    if sidecar["teacher"]["checkpoint_sha256"] != teacher.checkpoint_sha256:
        parser.error(f"{args.student} was distilled from teacher {sidecar['teacher']['checkpoint_sha256'][:12]}..., "
                     f"not {teacher.checkpoint_sha256[:12]}...: they live in different embedding spaces")
    table = embed_conditions(teacher.embed_texts, load_prompt_file(args.prompts), teacher.ensembling, teacher.logit_scale)
    labelled = {d: shared_dataset_labels(datasets, d, args.split, args.limit) for d in SHARED_DATASETS}
    thresholds = None
    if args.bundle is not None:
        from edge_retina.bundle import load_bundle

        thresholds = {c.name: c.threshold for c in load_bundle(args.bundle).manifest.prompts.conditions
                      if c.threshold is not None}
    parity = student_parity(teacher, student, spec, table, labelled, thresholds)
    profile = None if args.no_latency else compute_profile(teacher, student, spec, backend=args.backend,
                                                           threads=args.threads, repeats=args.repeats)
    markdown = format_markdown(parity, profile, args.split)
    sys.stdout.write(markdown)
    if args.markdown:
        args.markdown.write_text(markdown)
    if args.json:
        args.json.write_text(json.dumps({
            "student": str(args.student), "student_arch": sidecar["arch"], "teacher": teacher.name,
            "teacher_checkpoint_sha256": teacher.checkpoint_sha256, "split": args.split,
            "parity": parity.to_dict(), "profile": profile,
            "machine": machine_info(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
