"""``edge-retina calibrate``: images (files, folders or a CSV) -> a calibration set folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from calibration.calibration_set import DEFAULT_SIZE
from edge_retina.command_error import fail
from edge_retina.wording import plural


def _model_and_spec(model: Path | None, spec_file: Path | None):
    """(ONNX path or None, InputSpec): from a bundle folder/archive, or an ONNX file plus a spec JSON."""
    from edge_retina.bundle import load_bundle
    from edge_retina.preprocess import InputSpec

    if model is not None and model.suffix.lower() != ".onnx":
        bundle = load_bundle(model)
        engine = bundle.select_engine(backend="onnxruntime", precision="fp32")
        return bundle.path_of(engine.primary_file), bundle.manifest.input
    if spec_file is not None:
        return model, InputSpec.from_dict(json.loads(spec_file.read_text()))
    from converters.reference.model import REFERENCE_INPUT_SPEC

    return model, REFERENCE_INPUT_SPEC


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the set to.")
@click.option("--size", type=click.IntRange(min=1), default=DEFAULT_SIZE, show_default=True,
              help="Images to select.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--model", type=click.Path(exists=True, path_type=Path), default=None,
              help="A bundle (its FP32 ONNX Runtime engine and input spec) or an FP32 .onnx encoder whose "
                   "embeddings drive k-centre selection. Without it, thumbnails do.")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Input-spec JSON (when --model is an .onnx or absent; default: the reference model's).")
@click.option("--stratify", multiple=True, metavar="COLUMN",
              help="Stratify by this CSV metadata column instead of k-centre selection (repeatable).")
def calibrate(sources: tuple[Path, ...], out: Path, size: int, seed: int, model: Path | None,
              spec_file: Path | None, stratify: tuple[str, ...]) -> None:
    """Pick a diverse, gradable calibration set from IMAGES_OR_CSV and cache its tensors."""
    from calibration.calibration_set import build_calibration_set
    from calibration.sources import check_stratify_columns, list_candidates
    from edge_retina.files import sha256_file

    try:  # before the model loads and the candidates are gated
        candidates = list_candidates(sources)
        check_stratify_columns(candidates, stratify)
    except (FileNotFoundError, ValueError) as exc:
        fail(exc)
    onnx_path, spec = _model_and_spec(model, spec_file)
    embed, model_sha = None, None
    if onnx_path is not None:
        from edge_retina.backends import create_runner

        runner = create_runner("onnxruntime", onnx_path, precision="fp32")
        embed, model_sha = runner.infer, sha256_file(onnx_path)
    with click.progressbar(length=len(candidates), label="gating and embedding", file=sys.stderr) as bar:
        try:
            result = build_calibration_set(candidates, out, spec, size=size, seed=seed, embed=embed,
                                           model_sha256=model_sha, stratify_by=stratify, progress=bar.update)
        except ValueError as exc:  # found after gating every candidate (none gradable): the run failed (1)
            fail(exc, exit_code=1)
    rejected = len(result.manifest["rejected"])
    click.echo(f"calibration set of {plural(result.size, 'image')} ({result.method}, seed {seed}) written to "
               f"{out}; {plural(rejected, 'ungradable or unreadable candidate')} dropped")
