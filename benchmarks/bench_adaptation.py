"""Site adaptation, simulated with the shared datasets: K labelled photos per class, then the test split.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_adaptation.py \
        --bundle artifacts/demo/default-bundle --json bench_adaptation.json

(One BLAS thread: the fits are many tiny matrix products, which threads only slow down on a busy machine.)

For every task of the reference model's evaluation (converters/reference/evaluate.py, TASKS) the
"site" is that task's collection: K positives and K negatives (K in --shots) are drawn from its
train split (--shot-split), ``fit_site_adaptation`` (what ``edge-retina adapt`` runs) adapts the
bundle to them, and the result is scored on the task's test split against the bundle's zero-shot scores and
thresholds; --draws seeded draws per K. The photos are embedded once by the bundle's preferred
engine through the Screener (ungradable photos are left out, as on the device) and cached under
artifacts/bench_adaptation/.

The default model's teacher (reference-v3, reference-v4) trained on every shared dataset's train split
(converters/reference/data.py reads all five folders), so for it the shots come from photos the
model trained on: the JSON gives each task's zero-shot AUROC on its shot pool beside the test
split's, to show how much easier the shots are than a new site's photos. With --shot-split val the
shots are validation photos instead, which the model never trained on (the teacher's epoch was
chosen on them); the pools are smaller. The leave-one-dataset-out case takes a bundle whose teacher
was trained without some folders (``converters.reference.train --leave-out``) and ``--sites`` those
folders: their photos, train split included, are new to the model, as a new site's are.

Per task, K and method: test AUROC, sensitivity and specificity at the adapted thresholds,
specificity at the target sensitivity (the test split's own threshold: the ROC curve at that
point, whatever the threshold), and how often a head was kept. Last, ``adapt_bundle`` end to end
(embedding included) on a 100-photo labels CSV, timed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converters.reference.data import SHARED_DATASETS, load_records  # noqa: E402
from converters.reference.evaluate import TASKS  # noqa: E402
from edge_retina.adapt import bundle_scoring, fit_site_adaptation  # noqa: E402
from edge_retina.adapt.heads import ZERO_SHOT  # noqa: E402
from edge_retina.adapt.site import adapt_bundle  # noqa: E402
from edge_retina.adapt.thresholds import threshold_for_sensitivity  # noqa: E402
from edge_retina.bench import metrics  # noqa: E402
from edge_retina.bench.labels import LabelledImages, write_labels_csv  # noqa: E402
from edge_retina.bench.machine import machine_info  # noqa: E402
from edge_retina.screener import Screener  # noqa: E402

DEFAULT_DATASETS = REPO.parent / "shared" / "datasets"
METHODS = ("threshold", "auto", "head")


def site_tasks(root: Path, splits: tuple[str, ...] = ("train", "test")) -> list[dict]:
    """Each task: name, condition, and (paths, 0/1 labels) of each of ``splits``; positives and
    negatives both from the task's own dataset folder (Task.applies_to), as in the reference's evaluation."""
    records = load_records(root)
    tasks = []
    for task in TASKS:
        mine = [r for r in records if task.applies_to(r)]
        labelled = {}
        for split in splits:
            chosen = [(r.path(root), int(task.is_positive(r))) for r in mine if r.split == split]
            labelled[split] = ([p for p, _ in chosen], np.array([y for _, y in chosen]))
        source = next(r.source for r in mine if task.is_positive(r))
        name = task.dataset if source == task.dataset else f"{task.dataset} ({source})"
        tasks.append({"name": f"{name} {task.condition}", "dataset": task.dataset, "condition": task.condition,
                      **labelled})
    return tasks


def limit_pool(paths: list[Path], y: np.ndarray, per_class: int, seed: int) -> tuple[list[Path], np.ndarray]:
    """At most ``per_class`` photos of each class, a fixed random choice (the draws come from it)."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in (0, 1)])
    keep.sort()
    return [paths[i] for i in keep], y[keep]


def embed_all(bundle: Path, paths: list[Path], cache: Path) -> dict[str, np.ndarray]:
    """Embedding per photo path (absent: ungradable or unreadable), cached per bundle manifest."""
    stored: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            stored = dict(zip(data["paths"].tolist(), data["embeddings"]))
            stored_missing = set(data["left_out"].tolist())
    else:
        stored_missing = set()
    todo = [p for p in dict.fromkeys(map(str, paths)) if p not in stored and p not in stored_missing]
    if todo:
        print(f"embedding {len(todo)} photos with {bundle} ...", file=sys.stderr)
        with Screener.from_bundle(bundle, keep_embeddings=True) as screener:
            for i, path in enumerate(todo, 1):
                result = screener.screen(path)
                if result.embedding is not None:
                    stored[path] = result.embedding
                else:
                    stored_missing.add(path)
                if i % 500 == 0:
                    print(f"  {i}/{len(todo)}", file=sys.stderr)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, paths=np.array(list(stored)), embeddings=np.stack(list(stored.values())),
                 left_out=np.array(sorted(stored_missing), dtype=str))
    return stored


def specificity_at_sensitivity(y: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Specificity at the highest threshold that refers ``target`` of the positives (the test split's own)."""
    return float(np.mean(scores[y == 0] < threshold_for_sensitivity(scores[y == 1], target)))


def evaluate(table, thresholds, condition, x, y, target) -> dict:
    scores = table.score(x).condition_probabilities[condition]
    sensitivity, specificity = metrics.sensitivity_specificity(y, scores, thresholds[condition])
    return {"auroc": metrics.auroc(y, scores), "sensitivity": sensitivity, "specificity": specificity,
            "specificity_at_target": specificity_at_sensitivity(y, scores, target)}


def run_simulation(task: dict, embeddings: dict[str, np.ndarray], table, thresholds, shots: list[int], draws: int,
                   methods: list[str], target: float) -> dict:
    def arrays(split):
        paths, y = task[split]
        kept = [i for i, p in enumerate(paths) if str(p) in embeddings]
        return np.stack([embeddings[str(paths[i])] for i in kept]), y[kept]

    x_shots, y_shots = arrays("shots")
    x_test, y_test = arrays("test")
    condition = task["condition"]
    out = {"name": task["name"], "condition": condition,
           "shot_pool": [int((y_shots == 1).sum()), int((y_shots == 0).sum())],
           "test": [int((y_test == 1).sum()), int((y_test == 0).sum())],
           "zero_shot": evaluate(table, thresholds, condition, x_test, y_test, target),
           "zero_shot_auroc_on_shot_pool": metrics.auroc(y_shots,
                                                         table.score(x_shots).condition_probabilities[condition]),
           "runs": []}
    for k in shots:
        for draw in range(draws):
            seed = int(hashlib.sha256(f"{task['name']}|{k}|{draw}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            chosen = np.concatenate([rng.choice(np.flatnonzero(y_shots == c), size=min(k, int((y_shots == c).sum())),
                                                replace=False) for c in (1, 0)])
            for method in methods:
                start = time.perf_counter()
                adaptation = fit_site_adaptation(table, x_shots[chosen], {condition: y_shots[chosen].astype(float)},
                                                 thresholds, method=method, target_sensitivity=target, seed=draw)
                fit_seconds = time.perf_counter() - start
                adapted = adaptation.conditions[condition]
                result = evaluate(adaptation.table(table), adaptation.thresholds(thresholds), condition, x_test,
                                  y_test, target)
                out["runs"].append({"shots": k, "draw": draw, "method": method, "head": adapted.head,
                                    "threshold_source": adapted.threshold_source, "threshold": adapted.threshold,
                                    "fit_seconds": fit_seconds, **result})
    return out


def time_adapt(bundle: Path, task: dict, photos: int, repeats: int) -> dict:
    """``adapt_bundle`` end to end (embedding included) on ``photos`` labelled photos of one task."""
    paths, y = task["shots"]
    half = photos // 2
    chosen = list(np.flatnonzero(y == 1)[:half]) + list(np.flatnonzero(y == 0)[:photos - half])
    seconds = []
    with tempfile.TemporaryDirectory() as work:
        labels = write_labels_csv(LabelledImages([paths[i] for i in chosen],
                                                 {task["condition"]: y[chosen].astype(float)}),
                                  Path(work) / "site.csv")
        for i in range(repeats):
            start = time.perf_counter()
            report = adapt_bundle(bundle, labels, Path(work) / f"adapted-{i}")
            seconds.append(time.perf_counter() - start)
    return {"task": task["name"], "photos": len(chosen), "engine": report.engine, "seconds": seconds,
            "median_seconds": statistics.median(seconds)}


def summary_rows(results: list[dict], methods: list[str]) -> list[str]:
    """Markdown rows: per task and K, mean ± sd over draws of each method against zero-shot."""
    def ms(values, scale=1.0, digits=3):
        values = [v * scale for v in values]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    rows = ["| task | test n+ / n- | K | method | AUROC | ΔAUROC vs zero-shot | sens. at threshold | "
            "spec. at threshold | spec. at target sens. | heads kept |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for task in results:
        z = task["zero_shot"]
        test = f"{task['test'][0]} / {task['test'][1]}"
        rows.append(f"| {task['name']} | {test} | - | zero-shot, bundle threshold | {z['auroc']:.3f} | | "
                    f"{z['sensitivity'] * 100:.1f} | {z['specificity'] * 100:.1f} | "
                    f"{z['specificity_at_target'] * 100:.1f} | |")
        for k in sorted({r["shots"] for r in task["runs"]}):
            for method in methods:
                runs = [r for r in task["runs"] if r["shots"] == k and r["method"] == method]
                kept = sum(r["head"] != ZERO_SHOT for r in runs)
                site = sum(r["threshold_source"] == "site" for r in runs)
                note = "" if site == len(runs) else f" (bundle thr. in {len(runs) - site})"
                rows.append(
                    f"| {task['name']} | {test} | {k} | {method}{note} | {ms([r['auroc'] for r in runs])} | "
                    f"{ms([r['auroc'] - z['auroc'] for r in runs], digits=3)} | "
                    f"{ms([r['sensitivity'] for r in runs], 100, 1)} | "
                    f"{ms([r['specificity'] for r in runs], 100, 1)} | "
                    f"{ms([r['specificity_at_target'] for r in runs], 100, 1)} | {kept}/{len(runs)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--target-sensitivity", type=float, default=0.9)
    parser.add_argument("--shot-split", choices=("train", "val"), default="train",
                        help="The split the shots are drawn from: val holds photos the model never trained on "
                             "(fewer of them).")
    parser.add_argument("--sites", nargs="+", choices=SHARED_DATASETS, default=None,
                        help="Only the tasks of these dataset folders (e.g. those the bundle's teacher never saw).")
    parser.add_argument("--pool", type=int, default=300, help="Photos per class the draws come from.")
    parser.add_argument("--adapt-photos", type=int, default=100, help="Photos of the end-to-end `adapt` timing "
                        "(0: skip).")
    parser.add_argument("--adapt-repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=REPO / "artifacts" / "bench_adaptation")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from edge_retina.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    table, thresholds = bundle_scoring(bundle, adapted=False)
    tasks = []
    for task in site_tasks(args.datasets, (args.shot_split, "test")):
        if args.sites and task["dataset"] not in args.sites:
            continue
        if task["condition"] in table.conditions:
            tasks.append(task)
        else:
            print(f"left out: {task['name']} (the bundle has no condition {task['condition']!r})", file=sys.stderr)
    for task in tasks:
        task["shots"] = limit_pool(*task.pop(args.shot_split), args.pool, seed=0)
    all_paths = [p for t in tasks for split in ("shots", "test") for p in t[split][0]]
    manifest_sha = hashlib.sha256(bundle.manifest.canonical_bytes()).hexdigest()[:16]
    embeddings = embed_all(args.bundle, all_paths, args.cache / f"embeddings-{manifest_sha}.npz")

    results = []
    for task in tasks:
        print(f"adapting: {task['name']}", file=sys.stderr)
        results.append(run_simulation(task, embeddings, table, thresholds, args.shots, args.draws, args.methods,
                                      args.target_sensitivity))
    timing = time_adapt(args.bundle, tasks[0], args.adapt_photos, args.adapt_repeats) if args.adapt_photos else None
    model = bundle.manifest.model
    report = {"bundle": str(args.bundle), "model": model.name,
              "student": model.student.name if model.student else None, "manifest_sha256_16": manifest_sha,
              "target_sensitivity": args.target_sensitivity, "shot_split": args.shot_split, "sites": args.sites,
              "draws": args.draws, "shots": args.shots, "machine": machine_info(),
              "python": platform.python_version(), "tasks": results, "adapt_end_to_end": timing}
    print("\n".join(summary_rows(results, args.methods)))
    if timing:
        print(f"\nadapt end to end, {timing['photos']} photos ({timing['task']}): median "
              f"{timing['median_seconds']:.1f} s of {[round(s, 1) for s in timing['seconds']]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
