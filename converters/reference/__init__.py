"""The in-house reference retinal dual encoder: the default teacher for the demo, tests and benchmarks."""
from converters.reference.model import (
    EMBED_DIM,
    REFERENCE_INPUT_SPEC,
    ImageEncoder,
    ReferenceDualEncoder,
    build_reference_model,
)
from converters.reference.weights import (
    REFERENCE_WEIGHTS,
    load_reference,
    save_reference,
)

__all__ = [
    "EMBED_DIM",
    "REFERENCE_INPUT_SPEC",
    "REFERENCE_WEIGHTS",
    "ImageEncoder",
    "ReferenceDualEncoder",
    "build_reference_model",
    "load_reference",
    "save_reference",
]
