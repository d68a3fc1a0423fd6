"""Distillation of a teacher's image encoder into a small student (host side, torch + timm).

- ``student``: the student architectures (timm, random init) projected into the teacher's
  embedding space, and their shipped weights (safetensors fp16 + sidecar JSON);
- ``augment``: fundus-camera augmentations; ``loss``: embedding cosine + zero-shot KL;
- ``cache``: content-hash caches of student pixels and teacher embeddings;
- ``train``: ``distill(teacher, images, work_dir, config)`` with checkpoints and resume;
- ``report``: the student section of the parity report (retention, agreement, FLOPs, latency).
"""
from converters.distill.student import (
    DEFAULT_ARCH,
    DEFAULT_SIZE,
    StudentEncoder,
    build_student,
    load_student,
    save_student,
    student_input_spec,
)
from converters.distill.train import DistillConfig, DistillResult, distill

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_SIZE",
    "DistillConfig",
    "DistillResult",
    "StudentEncoder",
    "build_student",
    "distill",
    "load_student",
    "save_student",
    "student_input_spec",
]
