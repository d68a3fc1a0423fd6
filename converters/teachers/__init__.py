"""Teacher adapters: one registry, one module per model family (timm-style).

``load_teacher(family, checkpoint, **options)`` returns a :class:`Teacher`: an export-ready image
encoder (image tensor -> L2-normalised embedding), a host-side text-embedding function, the family's
preprocessing spec, and its prompt-ensembling rule and logit scale. Each family module registers itself
with ``@register_teacher("name")``.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edge_retina.errors import EdgeRetinaError
from edge_retina.preprocess.spec import InputSpec

# family -> module that registers it; imported on first use so one family's optional dependencies
# (a text tower's tokenizer, say) never break another's.
_FAMILY_MODULES = {
    "reference": "converters.teachers.reference",
    "flair": "converters.teachers.flair",
    "keepfit": "converters.teachers.flair",
    "retclip": "converters.teachers.retclip",
    "vilref": "converters.teachers.retclip",
    "retizero": "converters.teachers.retizero",
    "openai_clip": "converters.teachers.clip",
    "eyeclip": "converters.teachers.clip",
    "open_clip": "converters.teachers.clip",
    "hf_clip": "converters.teachers.clip",
}
_REGISTRY: dict[str, Callable[..., "Teacher"]] = {}


@dataclass
class Teacher:
    family: str
    name: str
    image_encoder: torch.nn.Module
    embed_texts: Callable[[list[str]], np.ndarray]  # texts -> (n, D) L2-normalised, host-side
    input_spec: InputSpec
    ensembling: str  # "mean" | "mean_renormalised" (edge_retina.prompt_table.ENSEMBLING_RULES)
    logit_scale: float
    checkpoint_sha256: str


def register_teacher(family: str) -> Callable[[Callable[..., Teacher]], Callable[..., Teacher]]:
    def decorator(loader: Callable[..., Teacher]) -> Callable[..., Teacher]:
        _REGISTRY[family] = loader
        return loader

    return decorator


def list_families() -> list[str]:
    return sorted(_FAMILY_MODULES)


def load_teacher(family: str, checkpoint: str | Path | None = None, **options) -> Teacher:
    """Load ``family``'s checkpoint (``None``: the family's embedded default, where it has one)."""
    if family not in _FAMILY_MODULES:
        raise ValueError(f"unknown teacher family {family!r}; known: {list_families()}")
    if family not in _REGISTRY:
        importlib.import_module(_FAMILY_MODULES[family])
    loader = _REGISTRY[family]
    _check_options(family, loader, options)
    return loader(checkpoint, **options)


def _check_options(family: str, loader: Callable[..., Teacher], options: dict) -> None:
    """A missing or unknown adapter option is the user's to fix: say which ``--teacher-option``."""
    parameters = inspect.signature(loader).parameters
    accepted = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = [name for name in accepted if parameters[name].default is inspect.Parameter.empty and name not in options]
    if missing:
        raise TeacherOptionError(f"the {family} teacher needs " + " and ".join(
            f"--teacher-option {name}=..." for name in missing) + f" ({', '.join(missing)}: see docs/TEACHERS.md)")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TeacherOptionError(f"the {family} teacher has no option {', '.join(map(repr, unknown))}; "
                                 f"its options: {', '.join(accepted) or 'none'}")


class TeacherOptionError(EdgeRetinaError, TypeError):
    """``load_teacher`` options that the family's adapter does not take, or lacks (a TypeError, as
    calling the adapter would have raised, and an EdgeRetinaError: the command line prints one line)."""
