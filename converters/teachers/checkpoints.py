"""Teacher checkpoints: finding, reading and exactly loading them, and their digest.

One implementation for every teacher adapter. It needs only torch and safetensors (never open_clip
or transformers), so an adapter that uses it pulls in no other family's dependencies.

Loading is all-or-nothing: a state dict whose keys or shapes differ from the model's raises
:class:`CheckpointLayoutError` naming every missing, unexpected and mis-shaped key, because a
partially loaded teacher still runs and silently produces wrong embeddings.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from edge_retina.errors import EdgeRetinaError

#: Keys an error message names before it says how many more there are.
LISTED_KEYS = 12


class CheckpointLayoutError(EdgeRetinaError, ValueError):
    """A checkpoint does not have the key layout (names, shapes, nesting) of the family it is loaded as."""


class CheckpointNotFoundError(EdgeRetinaError, FileNotFoundError, ValueError):
    """A checkpoint (or a file its model directory needs) that is not where the user said, or was not
    named at all: the user's to fix, so an EdgeRetinaError (the command line prints one line)."""


def require_checkpoint(family: str, checkpoint: str | Path | None) -> Path:
    """The path of ``family``'s checkpoint (a file or a model directory), which must exist.

    Families without an embedded default get ``None`` when the user named no checkpoint.
    """
    if checkpoint is None:
        raise CheckpointNotFoundError(f"the {family} teacher has no embedded default: give its checkpoint "
                                      "(--checkpoint PATH)")
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointNotFoundError(f"{family} checkpoint not found: {path}")
    return path


def checkpoint_sha256(path: str | Path, members: Iterable[str] = ()) -> str:
    """The sha256 recorded for a checkpoint.

    A file: the sha256 of its bytes. A model stored as several files in a directory: the sha256 of
    the sorted ``name sha256`` lines of ``members``, the files that make up the model.
    """
    path = Path(path)
    if not path.is_dir():
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    names = list(members)
    if not names:
        raise ValueError(f"{path} is a directory: name the files that make up the model")
    lines = sorted(f"{name} {checkpoint_sha256(path / name)}" for name in names)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _is_torchscript_archive(path: Path) -> bool:
    # TorchScript zips carry the serialised code under <archive>/code/; torch.save zips do not.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def read_state_dict(path: str | Path, nesting: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The ``{key: tensor}`` state dict stored in a checkpoint file.

    Accepts a safetensors file, a TorchScript archive (OpenAI CLIP's published format), a flat state
    dict (what ``torch.save(model.state_dict())`` writes), or a training checkpoint holding the state
    dict under the first of ``nesting`` (e.g. ``"state_dict"``) it has. Pickles load with
    ``weights_only=True``: a teacher checkpoint comes from outside, and a state dict never needs code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:  # a truncated or foreign file under a .safetensors name
            raise CheckpointLayoutError(f"{path}: not a safetensors file ({exc})") from exc
    if _is_torchscript_archive(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError... for foreign pickles
        raise CheckpointLayoutError(
            f"{path}: not a weights-only PyTorch checkpoint ({exc}); re-save its state dict with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    nesting = list(nesting)
    if isinstance(checkpoint, Mapping):
        checkpoint = next((checkpoint[k] for k in nesting if isinstance(checkpoint.get(k), Mapping)), checkpoint)
        others = sorted(str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor))
        if checkpoint and not others:
            return dict(checkpoint)
        found = f"non-tensor entries {others[:10]}" if others else "no tensors"
    else:
        found = f"a {type(checkpoint).__name__}"
    under = f" and under {nesting}" if nesting else ""
    raise CheckpointLayoutError(
        f"{path}: no state dict found (looked at the top level{under}): expected a flat state dict of tensors "
        f"(the file torch.save(model.state_dict()) writes), found {found}"
    )


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. DDP's ``module.``) when every key has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:LISTED_KEYS])
    if len(items) > LISTED_KEYS:
        shown += f", ... ({len(items) - LISTED_KEYS} more)"
    return f"\n  {title} ({len(items)}): {shown}"


def layout_error(
    source: str, *, missing: Sequence[str] = (), unexpected: Sequence[str] = (), mismatched: Sequence[str] = ()
) -> CheckpointLayoutError:
    """The error for a checkpoint (``source`` names it) whose keys differ from the model's.

    ``mismatched`` entries read ``"key (checkpoint shape) (expected (model shape))"``.
    """
    message = f"{source} does not match the expected layout:"
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("keys with other shapes", mismatched)):
        if keys:
            message += _listing(title, sorted(keys))
    return CheckpointLayoutError(message)


def require_keys(state_dict: Mapping[str, torch.Tensor], keys: Iterable[str], source: str) -> None:
    """Name the absent ``keys`` (read to infer an architecture) instead of failing with a bare KeyError."""
    absent = [k for k in keys if k not in state_dict]
    if absent:
        raise layout_error(source, missing=absent)


def load_exact(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, *, unused: Sequence[str] = ()
) -> None:
    """Load ``state_dict`` into ``module`` only if every key and shape matches; never partially.

    ``unused`` names documented training-only parts of the checkpoint, dropped first: entries ending
    in ``.`` are key prefixes, the others whole keys.
    """
    prefixes = tuple(u for u in unused if u.endswith("."))
    kept = {k: v for k, v in state_dict.items() if not (k.startswith(prefixes) or k in unused)}
    expected = module.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in kept.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in kept]
    unexpected = [k for k in kept if k not in expected]
    if missing or unexpected or mismatched:
        raise layout_error(source, missing=missing, unexpected=unexpected, mismatched=mismatched)
    module.load_state_dict(kept, strict=True)
