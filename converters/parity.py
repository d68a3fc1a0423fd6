"""Parity between the FP32 PyTorch teacher and each engine of a bundle, on labelled images.

Every image is preprocessed once with the runtime's own Preprocessor; the same tensor then goes to
the teacher and to every engine, so differences come from the engines alone. Metrics: embedding
cosine to the teacher, zero-shot AUROC per condition for each, and ΔAUROC against the teacher.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from edge_retina.backends import Runner
from edge_retina.preprocess import Preprocessor
from edge_retina.prompts import PromptTable


@dataclass
class LabelledImages:
    """Image paths and, per condition, a 0/1 label per image (NaN where the image is not labelled)."""

    paths: list[Path]
    labels: dict[str, np.ndarray]


@dataclass
class ParityRow:
    condition: str
    n_pos: int
    n_neg: int
    auroc: dict[str, float]  # model name -> AUROC (the teacher included)


@dataclass
class ParityReport:
    reference: str
    cosine: dict[str, np.ndarray]  # engine -> per-image cosine to the reference embedding
    rows: list[ParityRow]
    skipped: list[str]  # images that could not be used, with the reason

    def delta(self, row: ParityRow, model: str) -> float:
        return row.auroc[model] - row.auroc[self.reference]


def prepare_tensors(preprocessor: Preprocessor, paths: Sequence[Path],
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """Preprocess images once; returns (N, 3, H, W), the indices kept, and why others were skipped."""
    tensors, kept, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            prepared = preprocessor.prepare(path)
        except Exception as exc:  # an unreadable image is reported, not fatal, in a parity run
            skipped.append(f"{path}: {exc}")
        else:
            tensors.append(prepared.tensor[0])
            kept.append(i)
        if progress:
            progress(1)
    return np.stack(tensors), kept, skipped


def torch_embeddings(encoder: torch.nn.Module, tensors: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(tensors), batch_size):
            out.append(encoder(torch.from_numpy(tensors[start:start + batch_size])).numpy())
    return np.concatenate(out)


def runner_embeddings(runner: Runner, tensors: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([runner.infer(tensors[s:s + batch_size]) for s in range(0, len(tensors), batch_size)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def zero_shot_aurocs(table: PromptTable, embeddings: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, float]:
    scores = table.score(embeddings).condition_probabilities
    result = {}
    for condition, y in labels.items():
        mask = ~np.isnan(y)
        if condition in scores and len(np.unique(y[mask])) == 2:
            result[condition] = float(roc_auc_score(y[mask], scores[condition][mask]))
    return result


def parity_report(reference: str, embeddings: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                  table: PromptTable, skipped: Iterable[str] = ()) -> ParityReport:
    """``embeddings`` maps model name -> (N, D), ``reference`` among them; labels are aligned with N."""
    aurocs = {name: zero_shot_aurocs(table, emb, labels) for name, emb in embeddings.items()}
    rows = []
    for condition, y in labels.items():
        if condition not in aurocs[reference]:
            continue
        mask = ~np.isnan(y)
        rows.append(ParityRow(condition, int((y[mask] == 1).sum()), int((y[mask] == 0).sum()),
                              {name: aurocs[name][condition] for name in embeddings}))
    cos = {name: cosine(emb, embeddings[reference]) for name, emb in embeddings.items() if name != reference}
    return ParityReport(reference, cos, rows, list(skipped))
