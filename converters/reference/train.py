"""Train the reference dual encoder: CLIP-style contrastive learning on report-style captions.

    python -m converters.reference.train --out runs/ref            # full recipe
    python -m converters.reference.train --out runs/ref --resume   # continue from runs/ref/last.pt
    python -m converters.reference.train --out runs/ref --export-only  # stop early: ship runs/ref/best.pt

Recipe:
- The text tower (MiniLM) is frozen, so every caption variant is embedded once up front; only the
  text projection trains on top of those features.
- Loss: symmetric cross-entropy over the batch's image-caption similarities with *label-aware*
  soft targets: every caption of the same finding class counts as a positive. Captions of one class
  are near-paraphrases, so plain CLIP targets would push apart texts that say the same thing and
  penalise the model for matching an image to an equally correct caption.
- Class-balanced sampling (weights ~ count^-1/2): the rare referable-DR grades and HEI-MED exudates
  would otherwise be seen a handful of times.
- Camera-like augmentation (flip, small rotation/zoom/shift, brightness/contrast/colour shift, mild
  blur), seeded; all randomness comes from seeded generators, so a run is repeatable on CPU.
- Model selection: mean zero-shot AUROC on the val split, with the shipped prompt file. The test
  split is never looked at here.
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

from converters.prompts import DEFAULT_PROMPT_FILE, load_prompt_file
from converters.reference.captions import caption_table, draw_captions
from converters.reference.data import build_pixel_cache, load_records, split_hash
from converters.reference.evaluate import (
    DEFAULT_CACHE,
    DEFAULT_DATASETS,
    embed_images,
    mean_auroc,
    normalise_batch,
    zero_shot_auroc,
)
from converters.reference.model import REFERENCE_INPUT_SPEC, build_reference_model
from converters.reference.weights import REFERENCE_WEIGHTS, save_reference
from converters.torch_compat import ensure_torchvision

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: keeps the temperature from collapsing

RECIPE = {
    "epochs": 9,
    "batch_size": 48,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1,
    "class_balance_power": 0.5,
    "augment": {
        "hflip": 0.5,
        "degrees": 15,
        "translate": 0.04,
        "scale": [0.9, 1.1],
        "brightness": 0.25,
        "contrast": 0.25,
        "saturation": 0.2,
        "hue": 0.02,
        "blur_p": 0.25,
        "blur_sigma": [0.1, 1.2],
    },
    "seed": 20240601,
}


def build_augment(cfg: dict):
    """Per-image camera-like augmentation on a uint8 CHW tensor (torchvision v2, global torch RNG)."""
    ensure_torchvision()
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(cfg["hflip"]),
            v2.RandomAffine(degrees=cfg["degrees"], translate=(cfg["translate"],) * 2, scale=tuple(cfg["scale"])),
            v2.ColorJitter(cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"]),
            v2.RandomApply([v2.GaussianBlur(5, sigma=tuple(cfg["blur_sigma"]))], p=cfg["blur_p"]),
        ]
    )


def soft_clip_loss(image_emb, text_emb, labels, logit_scale) -> torch.Tensor:
    """Symmetric cross-entropy; targets spread uniformly over all same-class pairs in the batch."""
    logits = logit_scale.exp() * image_emb @ text_emb.T
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets.T * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2


def recipe_hash(recipe: dict, captions: list[str]) -> str:
    blob = json.dumps({"recipe": recipe, "captions": captions}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--name", default=REFERENCE_WEIGHTS.stem,
                        help="weights file name (and model name) written to --out; default: the shipped one's")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (throughput checks)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export-only", action="store_true",
                        help="skip training: write the safetensors from <out>/best.pt (history from last.pt)")
    args = parser.parse_args(argv)

    recipe = dict(RECIPE, epochs=args.epochs)
    torch.set_num_threads(2)
    torch.manual_seed(recipe["seed"])
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    records = load_records(args.datasets)
    pixels = build_pixel_cache(records, args.datasets, REFERENCE_INPUT_SPEC, args.cache)
    print(f"pixel cache ready: {pixels.shape} in {time.time() - started:.0f}s", flush=True)
    train_idx = np.array([i for i, r in enumerate(records) if r.split == "train"])
    val_idx = np.array([i for i, r in enumerate(records) if r.split == "val"])
    train_pixels = torch.from_numpy(np.ascontiguousarray(pixels[train_idx]))  # NHWC uint8
    val_pixels = np.ascontiguousarray(pixels[val_idx])
    val_records = [records[i] for i in val_idx]
    findings = [records[i].finding for i in train_idx]
    class_names = sorted({f.value for f in findings})
    train_labels = torch.tensor([class_names.index(f.value) for f in findings])

    model = build_reference_model()
    conditions = load_prompt_file(DEFAULT_PROMPT_FILE)
    captions, caption_index = caption_table()
    caption_features = model.text_model.sentence_features(captions)
    print(f"{len(captions)} caption variants embedded; train {len(train_idx)}, val {len(val_idx)}", flush=True)

    model.vision_model.to(memory_format=torch.channels_last)
    no_decay = {"logit_scale"}
    optimiser = torch.optim.AdamW(
        [
            {"params": [p for n, p in model.named_parameters() if p.requires_grad and n not in no_decay and p.ndim > 1]},
            {"params": [p for n, p in model.named_parameters() if p.requires_grad and (n in no_decay or p.ndim <= 1)],
             "weight_decay": 0.0},
        ],
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
    )
    augment = build_augment(recipe["augment"])

    counts = torch.bincount(train_labels).float()
    sample_weights = counts[train_labels] ** -recipe["class_balance_power"]
    steps_per_epoch = len(train_idx) // recipe["batch_size"]
    total_steps = steps_per_epoch * recipe["epochs"]
    warmup_steps = steps_per_epoch * recipe["warmup_epochs"]
    sampler_gen = torch.Generator().manual_seed(recipe["seed"])
    caption_rng = np.random.default_rng(recipe["seed"])

    start_epoch, best, history = 0, -1.0, []
    last_ckpt, best_ckpt = args.out / "last.pt", args.out / "best.pt"
    if (args.resume or args.export_only) and last_ckpt.is_file():
        ckpt = torch.load(last_ckpt, weights_only=False)
        model.load_state_dict(ckpt["model"], strict=False)
        optimiser.load_state_dict(ckpt["optimiser"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best"], ckpt["history"]
        torch.set_rng_state(ckpt["torch_rng"])
        sampler_gen.set_state(ckpt["sampler_rng"])
        caption_rng.bit_generator.state = ckpt["caption_rng"]
        print(f"resumed from {last_ckpt} at epoch {start_epoch}", flush=True)

    hashes = {"recipe_sha256": recipe_hash(recipe, captions), "split_sha256": split_hash(records)}
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, start_epoch if args.export_only else recipe["epochs"]):
        model.train()
        epoch_start = time.time()
        order = torch.multinomial(sample_weights, steps_per_epoch * recipe["batch_size"], True, generator=sampler_gen)
        caption_ids = draw_captions([findings[i] for i in order.tolist()], caption_index, caption_rng)
        running = 0.0
        for b in range(steps_per_epoch):
            sl = slice(b * recipe["batch_size"], (b + 1) * recipe["batch_size"])
            batch = order[sl]
            images = torch.stack([augment(img) for img in train_pixels[batch].permute(0, 3, 1, 2)])
            x = normalise_batch(images.permute(0, 2, 3, 1), REFERENCE_INPUT_SPEC)
            for g in optimiser.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup_steps, recipe["lr"])
            image_emb = model.encode_image(x)
            text_emb = model.text_model.project(caption_features[torch.from_numpy(caption_ids[sl])])
            loss = soft_clip_loss(image_emb, text_emb, train_labels[batch], model.logit_scale)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            running += loss.item()
            step += 1
            if (b + 1) % 10 == 0 or b == 0:
                rate = (b + 1) * recipe["batch_size"] / (time.time() - epoch_start)
                print(f"epoch {epoch + 1}/{recipe['epochs']} step {b + 1}/{steps_per_epoch} "
                      f"loss {running / (b + 1):.4f} scale {model.logit_scale.exp().item():.1f} {rate:.1f} img/s", flush=True)
            if args.max_steps and step >= args.max_steps:
                return 0
        val_emb = embed_images(model.image_encoder, val_pixels, REFERENCE_INPUT_SPEC)
        rows = zero_shot_auroc(val_emb, val_records, model.text_model, model.logit_scale.detach(), conditions)
        score = mean_auroc(rows)
        history.append({"epoch": epoch + 1, "train_loss": running / steps_per_epoch, "val_mean_auroc": score,
                        "val": {f"{r['condition']}|{r['data']}": r["auroc"] for r in rows if r["auroc"] is not None},
                        "seconds": time.time() - epoch_start})
        print(f"epoch {epoch + 1} done in {time.time() - epoch_start:.0f}s: val mean AUROC {score:.4f} "
              + " ".join(f"{r['condition']}={r['auroc']:.3f}" for r in rows if r["auroc"] is not None), flush=True)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("text_model.model.")}
        if score > best:
            best = score
            torch.save({"model": state, "epoch": epoch, "val_mean_auroc": score}, best_ckpt)
        torch.save({"model": state, "optimiser": optimiser.state_dict(), "epoch": epoch, "best": best,
                    "history": history, "torch_rng": torch.get_rng_state(), "sampler_rng": sampler_gen.get_state(),
                    "caption_rng": caption_rng.bit_generator.state}, last_ckpt)

    best_state = torch.load(best_ckpt, weights_only=False)
    model.load_state_dict(best_state["model"], strict=False)
    model.vision_model.to(memory_format=torch.contiguous_format)
    wall = time.time() - started
    out = save_reference(model, args.out / f"{args.name}.safetensors", {
        **hashes,
        "recipe": recipe,
        "selected_epoch": best_state["epoch"] + 1,
        "val_mean_auroc": best_state["val_mean_auroc"],
        "history": history,
        "epochs_run": len(history),
        "train_seconds_all_epochs": round(sum(h["seconds"] for h in history), 1),
        "wall_seconds_last_invocation": round(wall, 1),
        "n_train": len(train_idx),
        "n_val": len(val_idx),
    })
    print(f"wrote {out} (best epoch {best_state['epoch'] + 1}, val mean AUROC {best:.4f}); wall {wall / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
