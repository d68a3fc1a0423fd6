"""Prompt tables on the host: embed a prompt file with a teacher's text tower, and swap the prompt
table of an existing bundle (add or remove conditions by editing the prompt file, without code).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from edge_retina.bundle import (
    ConditionEntry,
    PromptsEntry,
    Provenance,
    load_bundle,
    write_bundle,
)
from edge_retina.bundle.manifest import PROMPTS_FILE
from edge_retina.prompt_table import PromptTable

from .prompt_files import Condition, normal_class
from .teachers import Teacher

DEFAULT_THRESHOLD = 0.5


def embed_conditions(embed_texts: Callable[[list[str]], np.ndarray], conditions: Sequence[Condition],
                     ensembling: str, logit_scale: float) -> PromptTable:
    """Every prompt of every condition through the text tower, in one batch."""
    texts, index = [], []
    for i, condition in enumerate(conditions):
        texts.extend(condition.prompts)
        index.extend([i] * len(condition.prompts))
    with torch.no_grad():
        embeddings = np.asarray(embed_texts(texts), dtype=np.float32)
    return PromptTable([c.name for c in conditions], normal_class(list(conditions)).name, embeddings,
                       np.asarray(index), ensembling, logit_scale)


def condition_entries(conditions: Sequence[Condition], normal: str,
                      thresholds: dict[str, tuple[float, str]]) -> list[ConditionEntry]:
    """Manifest entries; a condition without a chosen threshold gets the default, the normal class none."""
    entries = []
    for c in conditions:
        if c.name == normal:
            entries.append(ConditionEntry(c.name, c.label, c.prompts, None, "normal class: never referred"))
        else:
            threshold, source = thresholds.get(c.name, (DEFAULT_THRESHOLD, "default"))
            entries.append(ConditionEntry(c.name, c.label, c.prompts, threshold, source))
    return entries


def rebuild_bundle_prompts(bundle_path: Path, teacher: Teacher, conditions: Sequence[Condition], out_dir: Path,
                           *, command: str | None = None) -> Path:
    """A copy of ``bundle_path`` with its prompt table rebuilt from ``conditions``.

    The engines are kept byte for byte; thresholds carry over for conditions that keep their name.
    Refused when ``teacher`` is not the checkpoint the bundle was built from: prompt embeddings only
    mean something in their own model's embedding space.
    """
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    if manifest.model.teacher_checkpoint_sha256 != teacher.checkpoint_sha256:
        raise ValueError(
            f"{bundle_path} was built from teacher checkpoint {manifest.model.teacher_checkpoint_sha256[:12]}…, "
            f"not {teacher.checkpoint_sha256[:12]}…: its engines live in another embedding space"
        )
    table = embed_conditions(teacher.embed_texts, conditions, manifest.prompts.ensembling, manifest.logit_scale)
    kept = {c.name: (c.threshold, c.threshold_source) for c in manifest.prompts.conditions if c.threshold is not None}
    files: dict[str, Path] = {rel: bundle.path_of(rel) for rel in manifest.files if rel != manifest.prompts.file}
    with tempfile.TemporaryDirectory(prefix="edge-retina-prompts-") as tmp:
        table.save(Path(tmp) / PROMPTS_FILE)
        files[PROMPTS_FILE] = Path(tmp) / PROMPTS_FILE
        new = manifest.__class__(
            model=manifest.model,
            input=manifest.input,
            engines=manifest.engines,
            prompts=PromptsEntry(conditions=condition_entries(conditions, table.normal_class, kept),
                                 normal_class=table.normal_class, ensembling=manifest.prompts.ensembling,
                                 file=PROMPTS_FILE),
            logit_scale=manifest.logit_scale,
            provenance=Provenance.for_this_run(command),
        )
        return write_bundle(out_dir, new, files)
