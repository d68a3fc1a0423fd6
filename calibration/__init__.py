"""Calibration sets for post-training quantization (host side).

``build_calibration_set`` gates candidate images with the runtime's quality gate, picks a diverse
subset (k-centre greedy on embeddings, or stratified by CSV metadata), prepares it with the
runtime's own :class:`edge_retina.preprocess.Preprocessor` and writes a manifest plus a cached
tensor file; ``load_calibration_set`` reads one back, verified. ``ArrayCalibrationReader`` feeds the
tensors to ONNX Runtime's quantizer (and anything else that iterates input feeds).
"""
from calibration.calibration_set import (
    MANIFEST_NAME,
    TENSORS_NAME,
    CalibrationSet,
    build_calibration_set,
    load_calibration_set,
)
from calibration.reader import ArrayCalibrationReader
from calibration.selection import kcenter_greedy, stratified_sample
from calibration.sources import Candidate, list_candidates

__all__ = [
    "MANIFEST_NAME",
    "TENSORS_NAME",
    "ArrayCalibrationReader",
    "CalibrationSet",
    "Candidate",
    "build_calibration_set",
    "kcenter_greedy",
    "list_candidates",
    "load_calibration_set",
    "stratified_sample",
]
