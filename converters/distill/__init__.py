"""Distillation of a teacher's image encoder into a small student (host side, torch + timm).

- ``student``: the student architectures (timm, random init) projected into the teacher's
  embedding space, and their shipped weights (safetensors fp16 + sidecar JSON);
- ``augment``: fundus-camera augmentations, drawn once and applied alike at any image size;
- ``loss``: embedding cosine (raw and centred) + zero-shot KL over the prompt table;
- ``cache``: content-hash caches of student pixels and of the teacher's embeddings of each view;
- ``train``: ``distill(teacher, images, work_dir, config)`` with checkpoints and resume;
- ``report``: teacher vs student on held-out images (retention, agreement, FLOPs, latency), also
  the ``model.student.distillation`` record of a student bundle's manifest;
- ``bundling``: the bundle recipe of a student (its engine, the teacher's prompt table).
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
