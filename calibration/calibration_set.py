"""Build, write and load a calibration set: manifest.json + tensors.npz in one folder.

The manifest records every chosen file with its sha256, the preprocessing spec and its hash, the
selection method and seed, and every rejected candidate with the reason, so a set can be audited
and rebuilt. It holds no timestamp: the same inputs and seed give byte-identical manifests, and its
sha256 identifies the set (engines record it in the bundle manifest).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from calibration.selection import kcenter_greedy, stratified_sample, thumbnail_features
from calibration.sources import Candidate, check_stratify_columns
from edge_retina.errors import ImageError
from edge_retina.files import sha256_file
from edge_retina.preprocess import InputSpec, Preprocessor, pixels_key

MANIFEST_NAME = "manifest.json"
TENSORS_NAME = "tensors.npz"
FORMAT = "edge-retina-calibration"
FORMAT_VERSION = 1
DEFAULT_SIZE = 300
#: Name of the array in tensors.npz: the exported encoders' input name.
TENSOR_KEY = "image"
_EMBED_BATCH = 32

Embedder = Callable[[np.ndarray], np.ndarray]  # (N, 3, H, W) float32 -> (N, D)


@dataclass
class CalibrationSet:
    """A loaded (or freshly built) calibration set."""

    directory: Path
    manifest: dict
    manifest_sha256: str
    tensors: np.ndarray  # (N, 3, H, W) float32, in manifest file order

    @property
    def size(self) -> int:
        return len(self.tensors)

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.manifest["input_spec"])

    @property
    def held_out(self) -> list[Path]:
        """Gradable candidates that were not selected: images a quantized model never saw."""
        return [Path(p) for p in self.manifest["held_out"]]


def _embed_in_batches(embed: Embedder, tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(embed(np.stack(tensors[s:s + _EMBED_BATCH])))
                           for s in range(0, len(tensors), _EMBED_BATCH)])


def build_calibration_set(
    candidates: Sequence[Candidate],
    out_dir: Path,
    spec: InputSpec,
    *,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    embed: Embedder | None = None,
    model_sha256: str | None = None,
    stratify_by: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> CalibrationSet:
    """Gate, select ``size`` images, prepare them and write ``out_dir``/{manifest.json, tensors.npz}.

    Selection: stratified by the ``stratify_by`` metadata columns when given; otherwise k-centre
    greedy on ``embed``'s embeddings (``model_sha256`` names that model in the manifest), or on image
    thumbnails when there is no model. ``progress`` is called with 1 per candidate examined.
    """
    if size < 1:
        raise ValueError(f"calibration size must be at least 1, got {size}")
    check_stratify_columns(candidates, stratify_by)
    preprocessor = Preprocessor(spec)
    kept: list[Candidate] = []
    rejected: list[dict[str, str]] = []
    features: list[np.ndarray] = []
    pending: list[np.ndarray] = []  # tensors waiting to be embedded, in batches
    embeddings: list[np.ndarray] = []
    for candidate in candidates:
        try:
            prepared = preprocessor.prepare(candidate.path)
        except ImageError as exc:
            rejected.append({"path": str(candidate.path), "reason": exc.code})
        else:
            if not prepared.quality.gradable:
                rejected.append({"path": str(candidate.path), "reason": prepared.quality.reason})
            else:
                kept.append(candidate)
                if embed is None:
                    features.append(thumbnail_features(prepared.image))
                else:
                    pending.append(prepared.tensor[0])
                    if len(pending) == _EMBED_BATCH:
                        embeddings.append(_embed_in_batches(embed, pending))
                        pending = []
        if progress:
            progress(1)
    if pending:
        embeddings.append(_embed_in_batches(embed, pending))
    if not kept:
        raise ValueError(f"no gradable image among the {len(candidates)} calibration candidates")

    if len(kept) <= size:
        method, chosen = "all", list(range(len(kept)))
    elif stratify_by:
        method = "stratified:" + ",".join(stratify_by)
        chosen = stratified_sample([tuple(k.metadata[c] for c in stratify_by) for k in kept], size, seed)
    elif embed is not None:
        method, chosen = "kcenter-embeddings", kcenter_greedy(np.concatenate(embeddings), size, seed)
    else:
        method, chosen = "kcenter-thumbnails", kcenter_greedy(np.stack(features), size, seed)
    chosen = sorted(chosen)

    chosen_set = set(chosen)
    selected = [kept[i] for i in chosen]
    tensors = np.stack([preprocessor.prepare(c.path).tensor[0] for c in selected]).astype(np.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors_path = out_dir / TENSORS_NAME
    with open(tensors_path, "wb") as f:
        np.savez(f, **{TENSOR_KEY: tensors})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input_spec": spec.to_dict(),
        "input_spec_sha256": spec.sha256(),
        "pixels_key": pixels_key(spec),
        "method": method,
        "seed": seed,
        "requested_size": size,
        "size": len(selected),
        "model_sha256": model_sha256 if embed is not None else None,
        "files": [{"path": str(c.path), "sha256": sha256_file(c.path), "metadata": dict(c.metadata)}
                  for c in selected],
        "held_out": [str(k.path) for i, k in enumerate(kept) if i not in chosen_set],
        "rejected": rejected,
        "tensors": {"file": TENSORS_NAME, "key": TENSOR_KEY, "shape": list(tensors.shape),
                    "sha256": sha256_file(tensors_path)},
    }
    blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (out_dir / MANIFEST_NAME).write_bytes(blob)
    return CalibrationSet(out_dir, manifest, hashlib.sha256(blob).hexdigest(), tensors)


def load_calibration_set(directory: Path, *, spec: InputSpec | None = None) -> CalibrationSet:
    """Read a calibration set back, checking its tensors' sha256 and, with ``spec``, that it was
    prepared for that input spec (a set made for another model's preprocessing is useless)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{directory} is not a calibration set (no {MANIFEST_NAME})")
    blob = manifest_path.read_bytes()
    manifest = json.loads(blob)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not an {FORMAT} manifest")
    tensors_path = directory / manifest["tensors"]["file"]
    if sha256_file(tensors_path) != manifest["tensors"]["sha256"]:
        raise ValueError(f"{tensors_path} does not match its sha256 in {manifest_path}: rebuild the set")
    if spec is not None and manifest.get("pixels_key") != pixels_key(spec):
        raise ValueError(
            f"{directory} was prepared for another input spec or preprocessing version "
            f"({manifest.get('pixels_key')}, the model wants {pixels_key(spec)}): rebuild it for this model"
        )
    with np.load(tensors_path, allow_pickle=False) as data:
        tensors = data[manifest["tensors"]["key"]]
    return CalibrationSet(directory, manifest, hashlib.sha256(blob).hexdigest(), tensors)


def held_out_sample(paths: Iterable[Path], limit: int, seed: int) -> list[Path]:
    """Up to ``limit`` of ``paths`` drawn with ``seed`` (for accuracy checks on unseen images)."""
    paths = list(paths)
    if len(paths) <= limit:
        return paths
    picked = np.random.default_rng(seed).choice(len(paths), size=limit, replace=False)
    return [paths[i] for i in sorted(picked)]
