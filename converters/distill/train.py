"""Distil a teacher's image encoder into a small student, from unlabelled fundus images.

    result = distill(load_teacher("reference"), image_paths, Path("runs/distill"))
    save_student(result.student, result.input_spec, "converters/distill/weights/student-v1.safetensors",
                 result.metadata())

1. Every image is hashed (sha256 of its bytes) and prepared ONCE through the shared Preprocessor,
   with the teacher's spec and the student's spec (-> uint8 pixels, cached): each model sees the
   photo the way it will on the device. Images are ordered by their hash, so a run does not depend
   on how a folder was listed.
2. Each photo has ``views`` views: the clean photo and ``views - 1`` camera-like variations of it
   (``augment``; each drawn from a generator seeded by the run seed, the photo's hash and the view
   number). The teacher embeds every view of its own copy ONCE (cached by content hash and view),
   and the student, shown the same view of its copy, learns the teacher's embedding and zero-shot
   distribution for exactly that image (``loss``). Matching the teacher on the views it actually
   saw, rather than its clean-photo embedding on an altered photo, is the "consistent teaching" that
   makes small students converge on the teacher's function (Beyer et al., 2022); the cached views
   keep epochs from re-running the teacher. Epoch ``e`` shows photo ``i`` its view ``(e + i) % views``.
3. A checkpoint (``last.pt``) is written after every epoch; ``resume=True`` continues from it and
   ends with exactly the weights of an uninterrupted run (all randomness is derived from the seed,
   the epoch and the sample, never from global state that a restart would lose).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from converters.backbones.trunk_cache import TrunkRunner, cached_trunk_features
from converters.prompt_tables import embed_conditions
from converters.prompt_files import DEFAULT_PROMPT_FILE, load_prompt_file
from converters.teachers import Teacher
from edge_retina.errors import EdgeRetinaError
from edge_retina.preprocess import Preprocessor, pixels_key
from edge_retina.preprocess.spec import InputSpec

from .augment import AugmentConfig, FundusAugment, make_view
from .cache import ContentCache, content_sha256, prepare_images
from .loss import DistillLoss, LossConfig
from .student import (
    DEFAULT_ARCH,
    DEFAULT_FROZEN_BLOCKS,
    DEFAULT_SIZE,
    StudentEncoder,
    build_student,
    student_input_spec,
)

CHECKPOINT = "last.pt"
TEACHER_BATCH = 32


class DistillError(EdgeRetinaError, ValueError):
    """What a run found it cannot train on: no usable image, or a checkpoint to resume that another
    run wrote. A ValueError too, as these were before they had a type that tells them from a bug's."""


@dataclass(frozen=True)
class DistillConfig:
    arch: str = DEFAULT_ARCH
    size: int = DEFAULT_SIZE
    frozen_blocks: int = DEFAULT_FROZEN_BLOCKS  # ImageNet stages kept frozen (EfficientNet-Lite students)
    epochs: int = 6
    views: int = 2  # per photo: the clean photo + 1 augmented view, each embedded once by the teacher
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup_fraction: float = 0.05
    seed: int = 20261123
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DistillResult:
    student: StudentEncoder
    input_spec: InputSpec
    teacher: Teacher
    config: DistillConfig
    data_sha256: str  # over the sorted content hashes of the images trained on
    n_images: int
    skipped: list[str]
    history: list[dict]  # per epoch: mean loss parts and seconds
    seconds: float  # wall time of this invocation (caching + training)

    def metadata(self) -> dict:
        """What the weights' sidecar records about how they were made."""
        return {
            "teacher": {"family": self.teacher.family, "name": self.teacher.name,
                        "checkpoint_sha256": self.teacher.checkpoint_sha256,
                        "input_spec_sha256": self.teacher.input_spec.sha256()},
            "recipe": self.config.to_dict(),
            "data_sha256": self.data_sha256,
            "n_images": self.n_images,
            "history": self.history,
            "train_seconds_all_epochs": round(sum(h["seconds"] for h in self.history), 1),
            "wall_seconds_last_invocation": round(self.seconds, 1),
        }


def cached_training_set(teacher: Teacher, student_spec: InputSpec, paths: Sequence[Path], cache_dir: Path,
                        config: DistillConfig, *, workers: int = 2,
                        progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Content hashes (sorted, unique), student uint8 pixels (N, H, W, 3), teacher embeddings of every
    view (N, views, D), and the images skipped as unreadable. Only what the caches miss is computed."""
    pixel_cache = ContentCache(cache_dir / f"student-pixels-{pixels_key(student_spec)}.npz")
    # The views' embeddings depend on the teacher, its pixels, and how the views are drawn.
    views_key = hashlib.sha256(json.dumps([config.augment.to_dict(), config.seed], sort_keys=True).encode()).hexdigest()
    embedding_cache = ContentCache(cache_dir / f"teacher-views-{teacher.checkpoint_sha256[:16]}-"
                                   f"{pixels_key(teacher.input_spec)}-{views_key[:16]}.npz")
    views = range(config.views)
    path_of: dict[str, Path] = {}
    for path in tqdm(paths, desc="hashing", unit="img", disable=not progress):
        path_of.setdefault(content_sha256(path), Path(path))
    missing = [k for k in sorted(path_of)
               if k not in pixel_cache or any(f"{k}:{v}" not in embedding_cache for v in views)]
    skipped: list[str] = []
    unreadable: set[str] = set()
    if missing:
        with tqdm(total=len(missing), desc="preparing (teacher + student specs)", unit="img",
                  disable=not progress) as bar:
            images, kept, skipped = prepare_images([path_of[k] for k in missing],
                                                   [teacher.input_spec, student_spec], workers, bar.update)
        keys = [missing[i] for i in kept]
        unreadable = set(missing) - set(keys)
        embed = _teacher_embedding(teacher)
        augment = FundusAugment(config.augment)
        # Per view, only the photos that view is missing for (a run with more views adds just those).
        todo = {v: [i for i, k in enumerate(keys) if f"{k}:{v}" not in embedding_cache] for v in views}
        with torch.no_grad(), tqdm(total=sum(math.ceil(len(t) / TEACHER_BATCH) for t in todo.values()),
                                   desc=f"teacher embeddings ({len(views)} views)", unit="batch",
                                   disable=not progress) as bar:
            for view, rows in todo.items():
                embeddings = []
                for start in range(0, len(rows), TEACHER_BATCH):
                    chunk = rows[start:start + TEACHER_BATCH]
                    batch = np.stack([make_view(augment, images[i][0], config.seed, keys[i], view) for i in chunk])
                    embeddings.append(embed(batch))
                    bar.update()
                if rows:
                    embedding_cache.add([f"{keys[i]}:{view}" for i in rows],
                                        np.concatenate(embeddings).astype(np.float32))
        if keys:
            pixel_cache.add(keys, np.stack([images[i][1] for i in range(len(keys))]))
    keys = [k for k in sorted(path_of) if k not in unreadable]
    if not keys:
        return [], np.empty((0,)), np.empty((0,)), skipped
    targets = np.stack([embedding_cache.get([f"{k}:{v}" for k in keys]) for v in views], axis=1)
    return keys, pixel_cache.get(keys), targets, skipped


def _teacher_embedding(teacher: Teacher):
    """uint8 NHWC images prepared with the teacher's spec -> the teacher's embeddings (numpy).

    A teacher whose image encoder has a frozen trunk (``embed_trunk_features``; the reference model)
    runs that trunk on OpenVINO in FP32 and only its head in PyTorch: the same numbers, several
    times faster on a CPU. Other teachers run in PyTorch."""
    encoder = teacher.image_encoder.eval()
    if hasattr(encoder, "embed_trunk_features"):
        runner = TrunkRunner(encoder.model, encoder.frozen_blocks, teacher.input_spec)
        return lambda batch: encoder.embed_trunk_features(torch.from_numpy(runner(batch).astype(np.float32))).numpy()
    preprocessor = Preprocessor(teacher.input_spec)
    return lambda batch: encoder(torch.from_numpy(preprocessor.normalise(batch))).numpy()


def _student_trunk_features(student: StudentEncoder, spec: InputSpec, keys: list[str], pixels: np.ndarray,
                            cache_dir: Path, config: DistillConfig, progress: bool) -> np.ndarray:
    """(photos x views, ...) frozen-trunk features of every view the student is shown, computed once."""
    name = hashlib.sha256(json.dumps([config.arch, config.frozen_blocks, pixels_key(spec), config.views,
                                      config.augment.to_dict(), config.seed, keys]).encode()).hexdigest()
    augment = FundusAugment(config.augment)
    runner = TrunkRunner(student.backbone, config.frozen_blocks, spec)
    count = len(keys) * config.views
    with tqdm(total=count, desc="student trunk features", unit="view", disable=not progress) as bar:
        return cached_trunk_features(
            cache_dir / f"student-trunk-{name[:16]}.npy", runner, count,
            lambda i: make_view(augment, pixels[i // config.views], config.seed, keys[i // config.views],
                                i % config.views),
            {"arch": config.arch, "frozen_blocks": config.frozen_blocks, "views": config.views}, bar.update)


def learning_rate(step: int, total: int, config: DistillConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, int(config.warmup_fraction * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _optimiser(student: StudentEncoder, config: DistillConfig) -> torch.optim.Optimizer:
    trainable = student.trainable_parameters()
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]  # biases and norm scales
    return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, weight_decay=config.weight_decay)


def resumable_checkpoint(work_dir: Path, config: DistillConfig, teacher: Teacher) -> dict | None:
    """The checkpoint in ``work_dir`` to resume from (None if there is none), or a DistillError if
    another recipe or teacher wrote it. Checked before any image is read: with another teacher, seed
    or augmentation the teacher's embeddings miss their cache, and would be recomputed for hours
    before the mismatch showed. Memory-mapped, so this reads no weights. (The image set that wrote
    it is checked once the images are hashed.)"""
    checkpoint = Path(work_dir) / CHECKPOINT
    if not checkpoint.is_file():
        return None
    state = torch.load(checkpoint, weights_only=False, mmap=True)
    if state["config"] != config.to_dict() or state["teacher_sha256"] != teacher.checkpoint_sha256:
        raise DistillError(f"{checkpoint} was written by another recipe or teacher: "
                           "resume with the same ones, or start afresh in another directory")
    return state


def distill(
    teacher: Teacher,
    images: Sequence[Path],
    work_dir: Path,
    config: DistillConfig = DistillConfig(),
    *,
    prompt_file: Path = DEFAULT_PROMPT_FILE,
    cache_dir: Path | None = None,
    resume: bool = False,
    max_epochs_this_run: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> DistillResult:
    """Train a student on ``images`` (unlabelled) to reproduce ``teacher``; checkpoints go to ``work_dir``.

    ``max_epochs_this_run`` stops after that many epochs (a time-sliced run on a shared machine);
    a later call with ``resume=True`` carries on to ``config.epochs``.
    """
    started = time.time()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state = resumable_checkpoint(work_dir, config, teacher) if resume else None
    student_spec = student_input_spec(teacher.input_spec, config.size)
    keys, pixels, targets, skipped = cached_training_set(
        teacher, student_spec, images, Path(cache_dir) if cache_dir else work_dir / "cache", config,
        workers=workers, progress=progress)
    if not keys:
        raise DistillError("no usable images to distil from" + (f" ({len(skipped)} unreadable)" if skipped else ""))
    data_sha256 = hashlib.sha256("\n".join(keys).encode()).hexdigest()

    table = embed_conditions(teacher.embed_texts, load_prompt_file(prompt_file), teacher.ensembling,
                             teacher.logit_scale)
    criterion = DistillLoss(table.class_embeddings, table.logit_scale, targets.mean(axis=(0, 1)), config.loss)
    student = build_student(config.arch, table.embedding_dim, config.size, config.seed, config.frozen_blocks)
    trunk_features = None
    if config.frozen_blocks:
        trunk_features = _student_trunk_features(student, student_spec, keys, pixels,
                                                 Path(cache_dir) if cache_dir else work_dir / "cache", config, progress)
    student.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    optimiser = _optimiser(student, config)
    augment = FundusAugment(config.augment)
    preprocessor = Preprocessor(student_spec)
    targets_t = torch.from_numpy(np.ascontiguousarray(targets))

    n = len(keys)
    batch_size = min(config.batch_size, n)
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * config.epochs
    start_epoch, history = 0, []
    checkpoint = work_dir / CHECKPOINT
    if state is not None:
        if state["data_sha256"] != data_sha256:
            raise DistillError(f"{checkpoint} was written from another image set: "
                               "resume with the same images, or start afresh in another directory")
        student.load_state_dict(state["student"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, history = state["epoch"] + 1, state["history"]

    end_epoch = config.epochs if max_epochs_this_run is None else min(config.epochs, start_epoch + max_epochs_this_run)
    for epoch in range(start_epoch, end_epoch):
        epoch_start = time.time()
        student.train()
        torch.manual_seed(config.seed + epoch)  # any torch-side randomness (none in the default student)
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not progress)
        for b in bar:
            index = order[b * batch_size:(b + 1) * batch_size]
            view = (epoch + index) % config.views
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + b, total_steps, config)
            if trunk_features is not None:
                rows = index * config.views + view
                features = torch.from_numpy(trunk_features[np.sort(rows)].astype(np.float32))
                # sorted for sequential reads of the memory map; then back in draw order
                embeddings = student.embed_trunk_features(features[torch.from_numpy(np.argsort(np.argsort(rows)))])
            else:
                batch = np.stack([make_view(augment, pixels[i], config.seed, keys[i], v) for i, v in zip(index, view)])
                x = torch.from_numpy(preprocessor.normalise(batch)).contiguous(memory_format=torch.channels_last)
                embeddings = student(x)
            loss, parts = criterion(embeddings, targets_t[index, view])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (b + 1):.4f}" for k, v in sums.items()})
        bar.close()
        history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()},
                        "seconds": round(time.time() - epoch_start, 1)})
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"student": student.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch,
                    "history": history, "config": config.to_dict(), "data_sha256": data_sha256,
                    "teacher_sha256": teacher.checkpoint_sha256}, tmp)
        tmp.replace(checkpoint)
        (work_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")

    student.to(memory_format=torch.contiguous_format).eval()
    return DistillResult(student, student_spec, teacher, config, data_sha256, n, skipped, history,
                         time.time() - started)
