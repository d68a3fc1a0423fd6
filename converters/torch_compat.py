"""Make ``torchvision`` (and so timm, transformers, sentence-transformers) importable on CPU torch.

The only torchvision wheel our registry has is a CUDA build. With CPU torch its C extension does not
load, so the ops it would register (``torchvision::nms``, ``torchvision::qnms``) do not exist and the
pure-Python ``_meta_registrations`` module fails at import with "operator torchvision::nms does not
exist". We never call those detection ops: declaring their schemas is enough for the import to
succeed. This is the one place the workaround lives, and it only acts when the plain import fails.
"""
from __future__ import annotations

import sys

_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library fragment alive for the life of the process


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision() -> None:
    """Import torchvision, declaring its missing op schemas first if (and only if) needed."""
    global _library
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    # Drop the half-imported package so the retry starts clean.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for name, schema in _OP_SCHEMAS.items():
        if not _op_exists(name):
            _library.define(schema)
    import torchvision  # noqa: F401
