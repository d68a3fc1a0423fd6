"""Train the reference dual encoder: CLIP-style contrastive learning on fundus photographs and their
report text.

    python -m converters.reference.train --out runs/ref            # full recipe
    python -m converters.reference.train --out runs/ref --resume   # continue from runs/ref/last.pt
    python -m converters.reference.train --out runs/ref --export-only  # stop early: ship runs/ref/best.pt
    python -m converters.reference.train --out runs/lodo --leave-out palm --name reference-v5-without-palm
        # a teacher that never sees one dataset: that dataset is a new site for it (site adaptation)

Recipe:
- Text: the graders' own diagnostic keywords for ODIR-5K eyes (real report phrases, alone and in
  report openings), and report-style captions written from the labels of the other datasets
  (``captions.py``). The text tower (MiniLM) is frozen, so every text is embedded once up front; only
  the text projection trains on top of those features.
- Image: EfficientNet-Lite2 at 384 px from ImageNet weights. Its trunk (the stem and the stages
  before ``RECIPE["frozen_blocks"]``: 0-3) stays frozen; its features of ``views`` views of every
  training photo (the clean photo and camera-like variations, ``converters.distill.augment``) are
  computed once by OpenVINO (``converters.backbones.trunk_cache``). Epochs train the later stages
  (4-6), the head convolution, the projections and the temperature on those cached features (under
  bfloat16 autocast), so an epoch costs a fraction of a full forward and backward pass -- what makes
  an ImageNet-initialised teacher trainable on a 2-core CPU.
- Loss: symmetric cross-entropy over the batch's image-text similarities with *finding-aware* soft
  targets: the target weight of a pair is the Jaccard overlap of their findings (an eye can have
  several), so texts that say the same thing are not pushed apart.
- Sampling: balanced over finding sets (weights ~ count^-1/2): rare findings (proliferative DR,
  HEI-MED exudates) would otherwise be seen a handful of times.
- Model selection: mean zero-shot AUROC over the validation tasks with the shipped prompt file.
  The test split is never looked at here.

Everything random comes from seeded generators, so a run is repeatable on CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from converters.backbones.trunk_cache import TrunkRunner, cached_trunk_features
from converters.distill.augment import AugmentConfig, FundusAugment, make_view
from converters.prompt_files import DEFAULT_PROMPT_FILE, load_prompt_file
from converters.reference.captions import caption_variants, keyword_texts
from converters.reference.data import SHARED_DATASETS, Record, build_pixel_cache, load_records, split_hash
from converters.reference.evaluate import (
    DEFAULT_CACHE,
    DEFAULT_DATASETS,
    mean_auroc,
    zero_shot_auroc,
)
from converters.reference.model import IMAGE_ARCH, REFERENCE_INPUT_SPEC, build_reference_model
from converters.reference.weights import REFERENCE_WEIGHTS, save_reference
from devices.facts import X86_BF16_FLAGS, read_machine
from edge_retina.preprocess import pixels_key

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: keeps the temperature from collapsing

RECIPE = {
    # Stem and stages 0-3 stay frozen (their output is what the cache holds); stages 4-6 and the head
    # train. Test mean AUROC by the first trained stage: 6 (reference-v3) 0.880, 5 (reference-v4)
    # 0.906, 4 (reference-v5) 0.920; chosen on the validation mean (0.887 for v4, 0.895 for v5).
    "frozen_blocks": 4,
    # The trained stages under bfloat16 autocast (weights and optimiser in float32): 1.4x faster on a
    # CPU with AMX or AVX-512 BF16, where reference-v5 trained; elsewhere bfloat16 is emulated and slow
    # (train warns): pass --no-bf16 there, which changes the numbers slightly.
    "bf16_autocast": True,
    "epochs": 4,
    "views": 3,
    "batch_size": 64,
    "lr_backbone": 5e-4,  # the pretrained later stages: fine-tuned gently
    "lr_new": 3e-3,  # projections and temperature: trained from scratch
    "weight_decay": 0.05,
    "warmup_fraction": 0.05,
    "class_balance_power": 0.5,
    "augment": AugmentConfig().to_dict(),
    "seed": 20261206,
}


def record_key(record: Record) -> str:
    """A stable hex key per photo (seeds its views)."""
    return hashlib.sha256(f"{record.dataset}/{record.file}".encode()).hexdigest()


def rows_kept(records: list[Record], indices: np.ndarray, leave_out: list[str]) -> np.ndarray:
    """Positions in ``indices`` (into ``records``) of the photos whose dataset is not left out."""
    return np.array([j for j, i in enumerate(indices) if records[i].dataset not in leave_out], dtype=int)


def training_texts(records: list[Record]) -> tuple[list[str], list[np.ndarray]]:
    """The distinct training texts, and per record the indices of the texts it may be paired with."""
    texts: dict[str, int] = {}
    per_record = []
    for r in records:
        variants = keyword_texts(r.keywords) if r.keywords else caption_variants(r.findings[0])
        per_record.append(np.array([texts.setdefault(t, len(texts)) for t in variants]))
    return list(texts), per_record


def finding_matrix(records: list[Record]) -> torch.Tensor:
    """Multi-hot (N, F) findings of each record."""
    vocabulary = sorted({f for r in records for f in r.findings})
    column = {f: i for i, f in enumerate(vocabulary)}
    matrix = torch.zeros(len(records), len(vocabulary))
    for i, r in enumerate(records):
        matrix[i, [column[f] for f in r.findings]] = 1.0
    return matrix


def soft_targets(findings: torch.Tensor) -> torch.Tensor:
    """Row-normalised targets: pair (i, j) weighs the Jaccard overlap of their multi-hot findings
    (1 for identical finding sets, 0 for disjoint ones)."""
    shared = findings @ findings.T
    counts = findings.sum(1)
    jaccard = shared / (counts[:, None] + counts[None, :] - shared).clamp_min(1.0)
    return jaccard / jaccard.sum(1, keepdim=True)


def soft_clip_loss(image_emb, text_emb, findings, logit_scale) -> torch.Tensor:
    """Symmetric cross-entropy against ``soft_targets``."""
    logits = logit_scale.exp() * image_emb @ text_emb.T
    targets = soft_targets(findings)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets.T * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _features_path(cache: Path, name: str, records: list[Record], views: int, recipe: dict) -> Path:
    key = hashlib.sha256(json.dumps([IMAGE_ARCH, recipe["frozen_blocks"], pixels_key(REFERENCE_INPUT_SPEC),
                                     split_hash(records), views, recipe["augment"], recipe["seed"]],
                                    sort_keys=True).encode()).hexdigest()
    return cache / f"trunk-{IMAGE_ARCH}-{name}-{key[:16]}.npy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--name", default=REFERENCE_WEIGHTS.stem,
                        help="weights file name (and model name) written to --out; default: the shipped one's")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--frozen-blocks", type=int, default=RECIPE["frozen_blocks"], choices=range(3, 8),
                        help="ImageNet stages kept frozen (default %(default)s: stages 5-6 and the head train)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=RECIPE["bf16_autocast"],
                        help="train the unfrozen stages under bfloat16 autocast (default: on; fast on CPUs with "
                             "AMX or AVX-512 BF16)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export-only", action="store_true",
                        help="skip training: write the safetensors from <out>/best.pt (history from last.pt)")
    parser.add_argument("--leave-out", action="append", default=[], choices=SHARED_DATASETS, metavar="DATASET",
                        help="train and select without this dataset's photos (repeatable): "
                             + ", ".join(SHARED_DATASETS))
    args = parser.parse_args(argv)

    recipe = dict(RECIPE, epochs=args.epochs, frozen_blocks=args.frozen_blocks, bf16_autocast=args.bf16,
                  leave_out=sorted(set(args.leave_out)))
    if recipe["bf16_autocast"] and read_machine().bf16_emulated:
        print(f"warning: this CPU has none of {', '.join(X86_BF16_FLAGS)}, so bfloat16 autocast is emulated "
              "and slower than float32; --no-bf16 trains faster here (the numbers change slightly)", flush=True)
    torch.set_num_threads(2)
    torch.manual_seed(recipe["seed"])
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    records = load_records(args.datasets)
    pixels = build_pixel_cache(records, args.datasets, REFERENCE_INPUT_SPEC, args.cache)
    print(f"pixel cache ready: {pixels.shape} in {time.time() - started:.0f}s", flush=True)
    # The pixel and trunk-feature caches always cover every photo, so a run that leaves datasets out
    # reuses the full run's caches; ``train_rows``/``val_rows`` pick the photos this run may use.
    train_idx = np.array([i for i, r in enumerate(records) if r.split == "train"])
    val_idx = np.array([i for i, r in enumerate(records) if r.split == "val"])
    train_rows = rows_kept(records, train_idx, recipe["leave_out"])
    val_rows = rows_kept(records, val_idx, recipe["leave_out"])
    train_records = [records[train_idx[j]] for j in train_rows]
    val_records = [records[val_idx[j]] for j in val_rows]

    model = build_reference_model(pretrained=True, frozen_blocks=recipe["frozen_blocks"])
    encoder = model.vision_model
    conditions = load_prompt_file(DEFAULT_PROMPT_FILE)
    texts, text_choices = training_texts(train_records)
    text_features = model.text_model.sentence_features(texts)
    findings = finding_matrix(train_records)
    print(f"{len(texts)} training texts embedded; train {len(train_records)}, val {len(val_records)}"
          + (f" (left out: {', '.join(recipe['leave_out'])})" if recipe["leave_out"] else ""), flush=True)

    # Frozen-trunk features: every view of every training photo, the clean validation photos.
    views = recipe["views"]
    augment = FundusAugment(AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in recipe["augment"].items()}))
    keys = [record_key(records[i]) for i in train_idx]
    runner = TrunkRunner(encoder.model, encoder.frozen_blocks, REFERENCE_INPUT_SPEC)
    describe = {"arch": IMAGE_ARCH, "frozen_blocks": encoder.frozen_blocks, "spec": REFERENCE_INPUT_SPEC.to_dict()}
    feature_start = time.time()

    def report(total: int, label: str):
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            if done[0] % 1024 < n or done[0] == total:
                rate = done[0] / max(1e-9, time.time() - feature_start)
                print(f"trunk features ({label}): {done[0]}/{total} {rate:.1f} img/s", flush=True)
        return advance

    train_features = cached_trunk_features(
        _features_path(args.cache, "train", [records[i] for i in train_idx], views, recipe), runner,
        len(train_idx) * views,
        lambda i: make_view(augment, pixels[train_idx[i // views]], recipe["seed"], keys[i // views], i % views),
        {**describe, "views": views}, report(len(train_idx) * views, "train views"))
    val_features = cached_trunk_features(
        _features_path(args.cache, "val", [records[i] for i in val_idx], 1, recipe), runner, len(val_idx),
        lambda i: pixels[val_idx[i]], describe, report(len(val_idx), "val"))
    feature_seconds = time.time() - feature_start
    print(f"trunk features ready in {feature_seconds:.0f}s", flush=True)

    trainable_backbone = [p for n, p in encoder.model.named_parameters()
                          if not n.startswith(("conv_stem", "bn1"))
                          and not any(n.startswith(f"blocks.{b}.") for b in range(encoder.frozen_blocks))]
    for p in encoder.model.parameters():
        p.requires_grad_(False)
    for p in trainable_backbone:
        p.requires_grad_(True)
    new = [encoder.projection_head_vision.projection.weight, model.text_model.projection_head_text.projection.weight]
    groups = [
        {"params": [p for p in trainable_backbone if p.ndim > 1], "lr": recipe["lr_backbone"]},
        {"params": [p for p in trainable_backbone if p.ndim <= 1], "lr": recipe["lr_backbone"], "weight_decay": 0.0},
        {"params": new, "lr": recipe["lr_new"]},
        {"params": [model.logit_scale], "lr": recipe["lr_new"], "weight_decay": 0.0},
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    optimiser = torch.optim.AdamW(groups, weight_decay=recipe["weight_decay"])

    # Balanced over finding sets: weight ~ (number of records with the same findings)^-power.
    set_ids = {fs: i for i, fs in enumerate(sorted({r.findings for r in train_records}))}
    set_of = torch.tensor([set_ids[r.findings] for r in train_records])
    sample_weights = torch.bincount(set_of).float()[set_of] ** -recipe["class_balance_power"]
    batch_size = recipe["batch_size"]
    steps_per_epoch = len(train_records) // batch_size
    total_steps = steps_per_epoch * recipe["epochs"]
    warmup_steps = max(1, int(recipe["warmup_fraction"] * total_steps))

    start_epoch, best, history = 0, -1.0, []
    last_ckpt, best_ckpt = args.out / "last.pt", args.out / "best.pt"
    if (args.resume or args.export_only) and last_ckpt.is_file():
        ckpt = torch.load(last_ckpt, weights_only=False)
        model.load_state_dict(ckpt["model"], strict=False)
        optimiser.load_state_dict(ckpt["optimiser"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best"], ckpt["history"]
        print(f"resumed from {last_ckpt} at epoch {start_epoch}", flush=True)

    hashes = {"recipe_sha256": hashlib.sha256(json.dumps({"recipe": recipe, "texts": texts}, sort_keys=True)
                                              .encode()).hexdigest(),
              "split_sha256": split_hash(records)}
    for epoch in range(start_epoch, start_epoch if args.export_only else recipe["epochs"]):
        encoder.train()
        epoch_start = time.time()
        # Per-epoch generators: a resumed run draws exactly what an uninterrupted one would.
        gen = torch.Generator().manual_seed(recipe["seed"] + epoch)
        rng = np.random.default_rng([recipe["seed"], epoch])
        order = torch.multinomial(sample_weights, steps_per_epoch * batch_size, True, generator=gen).numpy()
        view_of = rng.integers(0, views, size=len(order))
        text_of = np.array([rng.choice(text_choices[i]) for i in order])
        running = 0.0
        for b in range(steps_per_epoch):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            rows = train_rows[order[sl]] * views + view_of[sl]
            features = torch.from_numpy(train_features[np.sort(rows)].astype(np.float32))
            # np.sort for sequential reads of the memory map; put the samples back in draw order.
            features = features[torch.from_numpy(np.argsort(np.argsort(rows)))]
            step = epoch * steps_per_epoch + b
            for g in optimiser.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, total_steps, warmup_steps)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe["bf16_autocast"]):
                image_emb = encoder.embed_trunk_features(features).float()
            text_emb = model.text_model.project(text_features[torch.from_numpy(text_of[sl])])
            loss = soft_clip_loss(image_emb, text_emb, findings[torch.from_numpy(order[sl])], model.logit_scale)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            running += loss.item()
            if (b + 1) % 20 == 0 or b == 0:
                rate = (b + 1) * batch_size / (time.time() - epoch_start)
                print(f"epoch {epoch + 1}/{recipe['epochs']} step {b + 1}/{steps_per_epoch} "
                      f"loss {running / (b + 1):.4f} scale {model.logit_scale.exp().item():.1f} {rate:.1f} img/s",
                      flush=True)
        encoder.eval()
        with torch.no_grad():
            val_emb = torch.cat([encoder.embed_trunk_features(torch.from_numpy(
                val_features[val_rows[i:i + 256]].astype(np.float32))) for i in range(0, len(val_rows), 256)])
        rows = zero_shot_auroc(val_emb, val_records, model.text_model, model.logit_scale.detach(), conditions)
        score = mean_auroc(rows)
        history.append({"epoch": epoch + 1, "train_loss": running / steps_per_epoch, "val_mean_auroc": score,
                        "val": {f"{r['condition']}|{r['dataset']}": r["auroc"] for r in rows if r["auroc"] is not None},
                        "seconds": time.time() - epoch_start})
        print(f"epoch {epoch + 1} done in {time.time() - epoch_start:.0f}s: val mean AUROC {score:.4f} "
              + " ".join(f"{r['condition']}/{r['dataset']}={r['auroc']:.3f}" for r in rows if r["auroc"] is not None),
              flush=True)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("text_model.model.")}
        if score > best:
            best = score
            torch.save({"model": state, "epoch": epoch, "val_mean_auroc": score}, best_ckpt)
        torch.save({"model": state, "optimiser": optimiser.state_dict(), "epoch": epoch, "best": best,
                    "history": history}, last_ckpt)

    best_state = torch.load(best_ckpt, weights_only=False)
    model.load_state_dict(best_state["model"], strict=False)
    wall = time.time() - started
    out = save_reference(model, args.out / f"{args.name}.safetensors", {
        **hashes,
        "recipe": recipe,
        "selected_epoch": best_state["epoch"] + 1,
        "val_mean_auroc": best_state["val_mean_auroc"],
        "history": history,
        "epochs_run": len(history),
        "trunk_feature_seconds_last_invocation": round(feature_seconds, 1),
        "train_seconds_all_epochs": round(sum(h["seconds"] for h in history), 1),
        "wall_seconds_last_invocation": round(wall, 1),
        "n_train": len(train_records),
        "n_val": len(val_records),
    })
    print(f"wrote {out} (best epoch {best_state['epoch'] + 1}, val mean AUROC {best:.4f}); wall {wall / 60:.1f} min",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
