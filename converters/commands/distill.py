"""``edge-retina distill``: teacher -> small student, trained on unlabelled fundus photos."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from converters.commands.options import FAMILY_OPTION, TEACHER_OPTION
from converters.commands.options import teacher_options as parse_teacher_options
from converters.prompt_files import DEFAULT_PROMPT_FILE
from edge_retina.bench.shared_datasets import shared_datasets_dir
from edge_retina.command_error import fail
from edge_retina.out_paths import unwritable_reason

_DEFAULTS_NOTE = "default: the recipe's (converters.distill.train.DistillConfig)"


def _image_files(folders: tuple[Path, ...]) -> list[Path]:
    from edge_retina.preprocess import IMAGE_EXTENSIONS

    files = []
    for folder in folders:
        if folder.is_file():
            files.append(folder)
        else:
            files.extend(sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
    return files


def _train_split(datasets: Path) -> list[Path]:
    from converters.reference.data import load_records

    # Only the train split: val and test images stay unseen for the parity report.
    return [r.path(datasets) for r in load_records(datasets) if r.split == "train"]


@click.command()
@FAMILY_OPTION
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=True), default=None,
              help="Teacher checkpoint (default: the family's embedded weights, where it has them).")
@TEACHER_OPTION
@click.option("--prompts", "prompt_file", type=click.Path(path_type=Path, dir_okay=False),
              default=DEFAULT_PROMPT_FILE, show_default=True, help="Prompt file of the bundle the student will serve.")
@click.option("--images", "image_dirs", multiple=True, type=click.Path(path_type=Path, exists=True),
              help="Folder (searched recursively) or file of unlabelled fundus photos; repeatable. "
                   "Default: the train split of the shared datasets.")
@click.option("--datasets", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Shared datasets folder whose train split is used without --images "
                   "(default: $EDGE_RETINA_DATASETS or ../shared/datasets).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("runs/distill"), show_default=True,
              help="Checkpoints, history and the pixel/embedding caches.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Student weights to write (.safetensors, fp16, with a .json sidecar) "
                   "[default: the shipped default student's path].")
@click.option("--arch", default=None, help=f"timm architecture of the student ({_DEFAULTS_NOTE}).")
@click.option("--size", type=click.IntRange(32, 1024), default=None, help=f"Student input side, px ({_DEFAULTS_NOTE}).")
@click.option("--frozen-blocks", type=click.IntRange(0, 6), default=None,
              help="ImageNet stages kept frozen (EfficientNet-Lite students; "
                   f"{_DEFAULTS_NOTE}; 0 for any other architecture, trained in full).")
@click.option("--epochs", type=click.IntRange(1), default=None, help=f"Epochs ({_DEFAULTS_NOTE}).")
@click.option("--batch-size", type=click.IntRange(2), default=None, help=f"Batch size ({_DEFAULTS_NOTE}).")
@click.option("--views", type=click.IntRange(1), default=None,
              help=f"Views per photo, the clean one included, each embedded once by the teacher ({_DEFAULTS_NOTE}).")
@click.option("--seed", type=int, default=None, help=f"Seed of every random draw ({_DEFAULTS_NOTE}).")
@click.option("--resume", is_flag=True, help="Continue from WORK_DIR/last.pt (same teacher, images and recipe).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Torch threads. 1 by default: on a shared 2-core machine two threads trained far slower "
                   "(busy-waiting OpenMP threads fight the other jobs).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Processes preparing images.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def distill(family: str, checkpoint: Path | None, teacher_options: tuple[str, ...], prompt_file: Path,
            image_dirs: tuple[Path, ...], datasets: Path | None, work_dir: Path, out: Path | None, arch: str | None,
            size: int | None, frozen_blocks: int | None, epochs: int | None, batch_size: int | None, views: int | None, seed: int | None, resume: bool,
            threads: int, workers: int, quiet: bool) -> None:
    """Distil a teacher's image encoder into a small student from unlabelled fundus photos.

    The student lives in the teacher's embedding space, so a bundle built from it carries the
    teacher's prompt table. Writes fp16 safetensors weights and a sidecar JSON (recipe, data hash,
    loss history).
    """
    from dataclasses import replace

    import torch

    from converters.backbones import LITE_ARCHS
    from converters.distill import DistillConfig, save_student
    from converters.distill import distill as run_distillation
    from converters.distill.student import STUDENT_WEIGHTS
    from converters.distill.train import resumable_checkpoint
    from converters.prompt_files import load_prompt_file
    from converters.teachers import load_teacher
    from edge_retina.console_tables import print_wrapped
    from edge_retina.errors import EdgeRetinaError

    if arch is not None and arch not in LITE_ARCHS:
        if frozen_blocks:
            raise click.UsageError(f"--frozen-blocks needs an EfficientNet-Lite student ({', '.join(LITE_ARCHS)})")
        frozen_blocks = 0
    overrides = {k: v for k, v in {"arch": arch, "size": size, "frozen_blocks": frozen_blocks, "epochs": epochs,
                                    "batch_size": batch_size, "views": views, "seed": seed}.items() if v is not None}
    config = replace(DistillConfig(), **overrides)
    torch.set_num_threads(threads)
    # Refused before the work (exit 2): what is read first or written last, so that a mistake in it
    # does not stop the run after the teacher has embedded every image, or the student has trained.
    weights = out or STUDENT_WEIGHTS
    unwritable = unwritable_reason(weights)
    if unwritable:
        fail(f"cannot write the student to {weights}: {unwritable}")
    unwritable = unwritable_reason(work_dir, folder=True)
    if unwritable:
        fail(f"cannot write checkpoints to --work-dir {work_dir}: {unwritable}")
    if not image_dirs:
        datasets = datasets or shared_datasets_dir()
        if datasets is None:
            fail("no --images given and no shared datasets found: pass --images or --datasets")
    try:
        images = _image_files(image_dirs) if image_dirs else _train_split(datasets)
        if not images:
            fail("no images found")
        load_prompt_file(prompt_file)
        teacher = load_teacher(family, checkpoint, **parse_teacher_options(teacher_options))
        if resume:  # a checkpoint of another recipe or teacher
            resumable_checkpoint(work_dir, config, teacher)
    except EdgeRetinaError:
        raise  # the command line prints it: one line, or the traceback with -v
    except (OSError, ValueError) as exc:  # a file that cannot be read: the checkpoint, the prompt file...
        fail(exc)
    print_wrapped(Console(stderr=True), f"distilling {teacher.family}/{teacher.name} into {config.arch}@"
                                        f"{config.size} on {len(images)} images ({config.views} views each), "
                                        f"{config.epochs} epochs")
    try:
        result = run_distillation(teacher, images, work_dir, config, prompt_file=prompt_file, resume=resume,
                                  workers=workers, progress=not quiet)
    except EdgeRetinaError as exc:  # found in the run (no usable image...): its outcome (1), like convert's
        fail(exc, exit_code=1)
    for reason in result.skipped:
        click.echo(f"skipped {reason}", err=True)
    weights = save_student(result.student, result.input_spec, weights, result.metadata())
    last = result.history[-1]
    click.echo(f"student written to {weights} ({result.n_images} images, final loss {last['loss']:.4f}, "
               f"{result.seconds / 60:.1f} min)")
