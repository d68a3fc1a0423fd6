"""A bundle recipe for a distilled student: the student's engine and input spec, the TEACHER's prompt
table (the student was trained into the teacher's embedding space, so the teacher's text tower and
logit scale score its embeddings), and the teacher itself, which ``convert`` holds the student and
its engines to in the bundle's parity and distillation reports."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from converters.bundle_builder import BundleRecipe
from converters.prompt_files import DEFAULT_PROMPT_FILE
from converters.teachers import Teacher
from converters.teachers.checkpoints import checkpoint_sha256
from edge_retina.bundle.manifest import StudentInfo

from .student import load_student


def student_recipe(teacher: Teacher, student_weights: str | Path, prompt_file: Path = DEFAULT_PROMPT_FILE) -> BundleRecipe:
    """``role="student"`` recipe for ``converters.convert_pipeline.convert``.

    Refused when the student was distilled from another teacher checkpoint: its embeddings would
    not live in the space of this teacher's prompt table.
    """
    student_weights = Path(student_weights)
    student, spec, sidecar = load_student(student_weights)
    distilled_from = sidecar["teacher"]["checkpoint_sha256"]
    if distilled_from != teacher.checkpoint_sha256:
        raise ValueError(f"{student_weights} was distilled from teacher checkpoint {distilled_from[:12]}…, not "
                         f"{teacher.checkpoint_sha256[:12]}…: its embeddings live in another space")
    info = StudentInfo(name=student_weights.stem, arch=sidecar["arch"],  # a timm name; the size is in the spec
                       checkpoint_sha256=checkpoint_sha256(student_weights))
    return replace(BundleRecipe.from_teacher(teacher, prompt_file), encoder=student, input_spec=spec,
                   role="student", student=info, teacher=teacher)
