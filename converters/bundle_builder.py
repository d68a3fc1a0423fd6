"""Assemble a bundle from an image encoder's recipe (input spec, prompts embedded by the teacher's text
tower) and engines built by ``converters.convert_pipeline``, the one route to a bundle: write a
verified bundle (directory, optionally also packed as one archive).
"""
from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from edge_retina.bundle import EngineEntry, Manifest, pack_bundle, write_bundle
from edge_retina.bundle.manifest import PROMPTS_FILE, ModelInfo, PromptsEntry, Provenance, StudentInfo
from edge_retina.preprocess.spec import InputSpec
from edge_retina.prompt_table import PromptTable

from .prompt_tables import condition_entries, embed_conditions
from .prompt_files import DEFAULT_PROMPT_FILE, Condition, load_prompt_file
from .selftest_files import selftest_files
from .teachers import Teacher

@dataclass
class BundleRecipe:
    """Everything a bundle is made from."""

    encoder: torch.nn.Module
    input_spec: InputSpec
    embed_texts: Callable[[list[str]], np.ndarray]  # texts -> (n, D) embeddings, host-side text tower
    conditions: Sequence[Condition]  # from a prompt file; exactly one is the normal class
    ensembling: str
    logit_scale: float
    family: str
    name: str
    teacher_checkpoint_sha256: str
    thresholds: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (threshold, source)
    role: str = "teacher"
    student: StudentInfo | None = None
    # A student's teacher: the FP32 PyTorch reference of the bundle's parity report and of the
    # distillation report in the manifest (``model.student.distillation``).
    teacher: Teacher | None = None

    @classmethod
    def from_teacher(cls, teacher: Teacher, prompt_file: Path = DEFAULT_PROMPT_FILE) -> "BundleRecipe":
        """A teacher-only bundle: its image encoder, preprocessing, prompts embedded by its text tower."""
        return cls(
            encoder=teacher.image_encoder,
            input_spec=teacher.input_spec,
            embed_texts=teacher.embed_texts,
            conditions=load_prompt_file(prompt_file),
            ensembling=teacher.ensembling,
            logit_scale=teacher.logit_scale,
            family=teacher.family,
            name=teacher.name,
            teacher_checkpoint_sha256=teacher.checkpoint_sha256,
        )


def toolchain_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import openvino

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.get_version(),
    }


@dataclass
class BuiltEngine:
    """An engine ready to go into a bundle: its manifest entry and its files (bundle path -> local file)."""

    entry: EngineEntry
    files: dict[str, Path]


def engine_stem(role: str, backend: str, precision: str) -> str:
    """Bundle path of an engine without its suffix, e.g. ``engines/teacher-openvino-int8``."""
    return f"engines/{role}-{backend}-{precision}"


def recipe_prompt_table(recipe: BundleRecipe) -> PromptTable:
    """The recipe's prompts embedded by its text tower (what the bundle's prompts.npz holds)."""
    return embed_conditions(recipe.embed_texts, recipe.conditions, recipe.ensembling, recipe.logit_scale)


def _torch_encoder(encoder: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def encode(tensor: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return encoder.eval()(torch.from_numpy(tensor)).numpy()

    return encode


def assemble_bundle(
    recipe: BundleRecipe,
    engines: Sequence[BuiltEngine],
    out_dir: Path,
    *,
    table: PromptTable | None = None,
    extra_files: Mapping[str, Path | bytes] | None = None,
    archive: Path | None = None,
    command: str | None = None,
) -> Path:
    """Write a bundle of ``engines``, the recipe's prompt table (``table`` if already embedded) and
    ``extra_files`` (e.g. ``reports/parity.json``) to ``out_dir`` (and ``archive``); returns ``out_dir``."""
    table = table if table is not None else recipe_prompt_table(recipe)
    with tempfile.TemporaryDirectory(prefix="edge-retina-build-") as tmp:
        files: dict[str, Path | bytes] = {}
        for engine in engines:
            files.update(engine.files)
        files.update(extra_files or {})
        # The golden image and the encoder's own embedding of it: what a device checks at install.
        files.update(selftest_files({recipe.role: _torch_encoder(recipe.encoder)}, recipe.input_spec,
                                    engine="torch-fp32"))
        table.save(Path(tmp) / PROMPTS_FILE)
        files[PROMPTS_FILE] = Path(tmp) / PROMPTS_FILE
        manifest = Manifest(
            model=ModelInfo(family=recipe.family, name=recipe.name,
                            teacher_checkpoint_sha256=recipe.teacher_checkpoint_sha256,
                            embedding_dim=table.embedding_dim, student=recipe.student),
            input=recipe.input_spec,
            engines=[engine.entry for engine in engines],
            prompts=PromptsEntry(conditions=condition_entries(recipe.conditions, table.normal_class, recipe.thresholds),
                                 normal_class=table.normal_class,
                                 ensembling=recipe.ensembling, file=PROMPTS_FILE),
            logit_scale=recipe.logit_scale,
            provenance=Provenance.for_this_run(command),
        )
        bundle_dir = write_bundle(out_dir, manifest, files)
    if archive is not None:
        pack_bundle(bundle_dir, archive)
    return bundle_dir
