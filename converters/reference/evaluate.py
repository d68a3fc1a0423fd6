"""Zero-shot AUROC of the reference model per condition on held-out splits.

Scoring rule (the one the device runtime uses): a condition's class embedding is the mean of its
L2-normalised prompt embeddings, renormalised; logits = exp(logit_scale) * cosine; a condition's
probability is the softmax over [condition, normal].

    python -m converters.reference.evaluate --weights converters/reference/weights/reference-v2.safetensors --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from converters.prompt_tables import embed_conditions
from converters.prompt_files import (
    DEFAULT_PROMPT_FILE,
    Condition,
    load_prompt_file,
)
from converters.reference.captions import FindingClass as FC
from converters.reference.data import Record, build_pixel_cache, load_records
from converters.reference.model import REFERENCE_INPUT_SPEC, ImageEncoder, TextEncoder
from edge_retina.preprocess.spec import InputSpec
from edge_retina.prompt_table import PromptTable

DEFAULT_DATASETS = Path(os.environ.get("EDGE_RETINA_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "runs" / "cache"
_REFERABLE_DR = {FC.DR_MODERATE, FC.DR_SEVERE, FC.DR_PROLIFERATIVE}


@dataclass(frozen=True)
class Task:
    """A labelled binary question for one condition on one dataset folder: which records are
    positives, which negatives. Both come from the same collection, so an AUROC never rewards telling
    two cameras apart."""

    condition: str
    dataset: str  # the shared datasets' folder the task reads
    data: str  # which dataset and labels, for people
    is_positive: Callable[[Record], bool]
    is_negative: Callable[[Record], bool]

    def applies_to(self, record: Record) -> bool:
        return record.dataset == self.dataset and (self.is_positive(record) or self.is_negative(record))


def _odir_task(condition: str, dataset: str, name: str, *positive: FC) -> Task:
    """ODIR-5K eyes whose keywords name ``positive`` vs eyes graded "normal fundus" and nothing else."""
    return Task(condition, dataset, f"{dataset} ODIR-5K keywords: {name} vs normal fundus",
                lambda r: r.source == "odir" and r.has(*positive), lambda r: r.source == "odir" and r.only(FC.NORMAL))


TASKS = (
    Task("diabetic_retinopathy", "eye4class",
         "eye4class EyePACS sample: referable DR (grade >= 2) vs grade 0 (grade 1 left out)",
         lambda r: r.source == "eyepacs" and r.has(*_REFERABLE_DR),
         lambda r: r.source == "eyepacs" and r.only(FC.NORMAL)),
    _odir_task("diabetic_retinopathy", "odir", "moderate NPDR or worse", *_REFERABLE_DR),
    Task("glaucoma", "rimone", "RIM-ONE DL optic-disc crops: glaucoma (incl. suspects) vs non-glaucoma",
         lambda r: r.has(FC.GLAUCOMA_DISC, FC.GLAUCOMA_SUSPECT_DISC), lambda r: r.only(FC.NORMAL_DISC)),
    # ODIR-5K's glaucoma and cataract eyes are almost all in eye4class/ (odir/ holds the rest of
    # ODIR-5K: a single test positive each), so those two tasks read eye4class/ only.
    _odir_task("glaucoma", "eye4class", "glaucoma", FC.GLAUCOMA),
    _odir_task("cataract", "eye4class", "cataract", FC.CATARACT),
    Task("macular_oedema", "heimed", "HEI-MED: exudates vs healthy (the 6 microaneurysm-only images left out)",
         lambda r: r.has(FC.EXUDATES), lambda r: r.only(FC.NORMAL)),
    _odir_task("amd", "odir", "dry or wet AMD", FC.AMD),
    _odir_task("pathological_myopia", "odir", "pathological myopia", FC.PATHOLOGICAL_MYOPIA),
    Task("pathological_myopia", "palm", "PALM: pathological myopia vs not (normal and high myopia)",
         lambda r: r.has(FC.PATHOLOGICAL_MYOPIA), lambda r: r.has(FC.NORMAL, FC.HIGH_MYOPIA)),
    _odir_task("hypertensive_retinopathy", "odir", "hypertensive retinopathy", FC.HYPERTENSIVE_RETINOPATHY),
)


@torch.no_grad()
def embed_images(encoder: ImageEncoder, pixels: np.ndarray, spec: InputSpec, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised embeddings of prepared uint8 images. The frozen trunk runs on OpenVINO (FP32),
    the trained head in PyTorch: the same numbers as ``encoder(x)``, several times faster on a CPU."""
    from converters.backbones.trunk_cache import TrunkRunner

    encoder.eval()
    runner = TrunkRunner(encoder.model, encoder.frozen_blocks, spec)
    out = [encoder.embed_trunk_features(torch.from_numpy(runner(np.ascontiguousarray(pixels[i:i + batch_size]))
                                                         .astype(np.float32)))
           for i in range(0, len(pixels), batch_size)]
    return torch.cat(out)


def prompt_table(text_model: TextEncoder, logit_scale: torch.Tensor, conditions: list[Condition]) -> PromptTable:
    """The zero-shot table the bundle ships, built here from the model being trained or evaluated: the
    same scoring as on the device (``edge_retina.prompt_table``), so validation measures what screening does."""
    def embed_texts(texts: list[str]) -> np.ndarray:
        return text_model(texts).numpy()

    return embed_conditions(embed_texts, conditions, "mean_renormalised", float(logit_scale.exp()))


def zero_shot_auroc(
    image_embeddings: torch.Tensor,
    records: list[Record],
    text_model: TextEncoder,
    logit_scale: torch.Tensor,
    conditions: list[Condition],
) -> list[dict]:
    """One result row per task whose condition is in the prompt file; ``auroc`` is None without both classes."""
    probs = prompt_table(text_model, logit_scale, conditions).score(image_embeddings.numpy()).condition_probabilities
    rows = []
    for task in TASKS:
        if task.condition not in probs:
            continue
        pos = np.array([r.dataset == task.dataset and task.is_positive(r) for r in records])
        neg = np.array([r.dataset == task.dataset and task.is_negative(r) for r in records])
        keep = pos | neg
        auroc = ci95 = None
        if pos.any() and neg.any():
            auroc = float(roc_auc_score(pos[keep], probs[task.condition][keep]))
            ci95 = auroc_ci95(pos[keep], probs[task.condition][keep])
        rows.append({"condition": task.condition, "dataset": task.dataset, "data": task.data, "n_pos": int(pos.sum()), "n_neg": int(neg.sum()),
                     "auroc": auroc, "auroc_ci95": ci95})
    evaluated = {t.condition for t in TASKS}
    for c in conditions:
        if not c.normal and c.name not in evaluated:
            rows.append({"condition": c.name, "data": "no labelled data", "n_pos": 0, "n_neg": 0, "auroc": None,
                         "auroc_ci95": None})
    return rows


def auroc_ci95(labels: np.ndarray, scores: np.ndarray, resamples: int = 1000) -> list[float]:
    """Stratified percentile-bootstrap 95 % interval of the AUROC (seeded: same inputs, same interval).

    Test sets are small (HEI-MED has 21 positives), so a point AUROC alone overstates what we know.
    Hand-written rather than ``scipy.stats.bootstrap`` because that cannot stratify: its resamples
    can lack one class, where the AUROC is undefined.
    """
    rng = np.random.default_rng(0)
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = scores[labels], scores[~labels]
    truth = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    stats = [
        roc_auc_score(truth, np.r_[rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        for _ in range(resamples)
    ]
    low, high = np.percentile(stats, [2.5, 97.5])
    return [float(low), float(high)]


def mean_auroc(rows: list[dict]) -> float:
    values = [r["auroc"] for r in rows if r["auroc"] is not None]
    return float(np.mean(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    from converters.reference.weights import REFERENCE_WEIGHTS, load_reference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REFERENCE_WEIGHTS)
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPT_FILE)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    conditions = load_prompt_file(args.prompts)
    model = load_reference(args.weights)
    records = load_records(args.datasets)
    pixels = build_pixel_cache(records, args.datasets, REFERENCE_INPUT_SPEC, args.cache)
    keep = [i for i, r in enumerate(records) if r.split == args.split]
    embeddings = embed_images(model.image_encoder, pixels[keep], REFERENCE_INPUT_SPEC)
    rows = zero_shot_auroc(embeddings, [records[i] for i in keep], model.text_model, model.logit_scale.detach(), conditions)
    result = {"weights": str(args.weights), "prompts": str(args.prompts), "split": args.split, "results": rows,
              "mean_auroc": mean_auroc(rows)}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(f"zero-shot AUROC on the {args.split} split ({args.weights}):")
        for r in rows:
            auroc = "  n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
            ci = "" if r["auroc_ci95"] is None else "[{:.2f}, {:.2f}]".format(*r["auroc_ci95"])
            print(f"  {r['condition']:<22} {auroc} {ci:<12}  n_pos={r['n_pos']:<4} n_neg={r['n_neg']:<4} {r['data']}")
        print(f"  mean {result['mean_auroc']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
