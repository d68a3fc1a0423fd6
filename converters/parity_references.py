"""Host side of parity: the FP32 PyTorch teacher as the reference a bundle's engines are held to.

The statistics and the engine side live in the runtime (``edge_retina.bench.parity``), so a parity
run against the bundle's own FP32 engine works on a device without torch; this module adds the
teacher's embeddings of the very same prepared tensors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from converters.teachers import Teacher, load_teacher
from converters.teachers.checkpoints import checkpoint_sha256
from edge_retina.bench.parity import HostModel
from edge_retina.bundle import Manifest
from edge_retina.errors import EdgeRetinaError

TEACHER_NAME = "teacher (PyTorch fp32)"
STUDENT_NAME = "student (PyTorch fp32)"


def torch_embeddings(encoder: torch.nn.Module, tensors: np.ndarray, batch_size: int = 16) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(tensors), batch_size):
            out.append(encoder(torch.from_numpy(tensors[start:start + batch_size])).float().numpy())
    return np.concatenate(out)


def bundle_teacher(manifest: Manifest, checkpoint: str | Path | None = None) -> Teacher:
    """The teacher a bundle was built from: its family's loader on ``checkpoint`` (None: the family's
    embedded default, e.g. the reference model's shipped weights), refused if its sha256 differs
    from the one the manifest records."""
    try:
        teacher = load_teacher(manifest.model.family, checkpoint)
    except (ValueError, FileNotFoundError) as exc:  # unknown family, missing or mismatched checkpoint
        raise EdgeRetinaError(f"cannot load the bundle's teacher ({manifest.model.family}): {exc}") from exc
    if teacher.checkpoint_sha256 != manifest.model.teacher_checkpoint_sha256:
        raise EdgeRetinaError(
            f"the teacher checkpoint ({checkpoint or 'the embedded default'}, "
            f"sha256 {teacher.checkpoint_sha256[:12]}…) "
            f"is not the one the bundle was built from (sha256 {manifest.model.teacher_checkpoint_sha256[:12]}…); "
            "pass the bundle's own checkpoint with --checkpoint"
        )
    return teacher


def teacher_embedder(teacher: Teacher) -> HostModel:
    """The teacher as a host model for ``edge_retina.bench.parity.bundle_parity``: it sees images
    prepared its own way, also beside a student with another input size."""
    encoder = teacher.image_encoder.eval()
    return TEACHER_NAME, lambda tensors: torch_embeddings(encoder, tensors), teacher.input_spec


def teacher_reference(manifest: Manifest, checkpoint: str | Path | None = None) -> HostModel:
    """The teacher of the bundle described by ``manifest`` as a parity reference."""
    return teacher_embedder(bundle_teacher(manifest, checkpoint))


def bundle_student(manifest: Manifest, checkpoint: str | Path | None = None) -> HostModel | None:
    """The PyTorch student a student bundle was built from, to stand beside its engines; None for a
    teacher bundle. ``checkpoint`` defaults to the shipped default student; refused if its sha256 is
    not the one the manifest records."""
    from converters.distill.student import STUDENT_WEIGHTS, load_student

    info = manifest.model.student
    if info is None:
        return None
    path = Path(checkpoint) if checkpoint is not None else STUDENT_WEIGHTS
    if not path.is_file() or checkpoint_sha256(path) != info.checkpoint_sha256:
        raise EdgeRetinaError(
            f"the bundle's student ({info.name}, sha256 {info.checkpoint_sha256[:12]}…) is not "
            f"{path if path.is_file() else 'available'}: pass its weights with --student-checkpoint")
    student, spec, _ = load_student(path)
    return STUDENT_NAME, lambda tensors: torch_embeddings(student, tensors), spec
