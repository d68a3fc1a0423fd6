"""Parity of a bundle's engines against a reference model, on labelled images (runtime side).

Every image is preprocessed once with the runtime's own Preprocessor; the same tensor then goes to
the reference and to every engine, so differences come from the models alone. The reference is
either the bundle's own FP32 engine (this module alone: runs on a device) or the PyTorch teacher
(its embeddings come from ``converters.parity_references`` on the host); other host models (a distilled
student in PyTorch) can stand beside the engines, so teacher, student and engines share one table.

Per condition and model: zero-shot AUROC, ΔAUROC against the reference with a paired bootstrap 95 %
CI and DeLong's test, retention of the reference's skill above chance, sensitivity and specificity
at the bundle's thresholds, and the agreement of refer / no-refer decisions with the reference.
Per model: the distribution of the embedding cosine to the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from edge_retina.adapt.overlay import bundle_scoring
from edge_retina.backends import Runner, create_runner
from edge_retina.bench import metrics
from edge_retina.bench.labels import LabelledImages, listed_name
from edge_retina.bundle import Bundle, EngineEntry, load_bundle
from edge_retina.errors import EdgeRetinaError, ImageError, named_once
from edge_retina.preprocess import InputSpec, Preprocessor
from edge_retina.prompt_table import PromptTable
from edge_retina.screener import engine_cache_dir
from edge_retina.wording import plural

ProgressCallback = Callable[[int], None]  # called with the number of images just prepared
EmbedFunction = Callable[[np.ndarray], np.ndarray]  # prepared tensors (N, 3, H, W) -> embeddings (N, D)
#: A model outside the bundle (the PyTorch teacher, a student): its name, its embed function and,
#: when it differs from the bundle's, its own input spec (the images are then prepared its way).
HostModel = tuple[str, EmbedFunction] | tuple[str, EmbedFunction, InputSpec]


@dataclass
class ModelParity:
    """One model on one condition; the comparison fields are None for the reference itself."""

    auroc: float
    sensitivity: float | None  # at the bundle's threshold (None: the condition has no threshold)
    specificity: float | None
    bootstrap: metrics.BootstrapDelta | None = None
    delong: metrics.DeLongResult | None = None
    agreement: float | None = None  # refer / no-refer decisions equal to the reference's, all images
    retention: float | None = None  # (AUROC - 0.5) / (reference AUROC - 0.5); None at or below chance
    threshold: float | None = None  # its referral threshold (a site-adapted model's differs from the reference's)


@dataclass
class ConditionParity:
    condition: str
    n_pos: int
    n_neg: int
    threshold: float | None
    models: dict[str, ModelParity]
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)  # model -> (fpr, tpr)

    @property
    def few_labels(self) -> bool:
        """Whether its AUROCs rest on too few positives or negatives (``metrics.few_labels``)."""
        return metrics.few_labels(self.n_pos, self.n_neg)


@dataclass
class ParityReport:
    reference: str
    models: list[str]  # the reference first
    n_images: int
    conditions: list[ConditionParity]
    cosine: dict[str, np.ndarray]  # model -> per-image cosine of its embedding to the reference's
    skipped: list[str]  # images that could not be used, with why

    def failures(self, max_drop: float, baseline: str | None = None) -> list[str]:
        """Every (condition, model) whose AUROC is more than ``max_drop`` below the ``baseline``'s.

        ``baseline`` defaults to the reference. In a student bundle compared with its teacher, the
        baseline is the PyTorch student: its engines are held to the network they were compiled
        from, while the student's own distance to the teacher is reported (retention), not gated.
        """
        baseline = baseline or self.reference
        out = []
        for c in self.conditions:
            base = c.models[baseline].auroc
            for name, m in c.models.items():
                if name not in (self.reference, baseline) and m.auroc - base < -max_drop:
                    out.append(f"{c.condition}: {name} ΔAUROC {m.auroc - base:+.4f} against {baseline} "
                               f"(max drop {max_drop})")
        return out

    def to_dict(self) -> dict[str, Any]:
        def model_dict(m: ModelParity) -> dict[str, Any]:
            d: dict[str, Any] = {"auroc": m.auroc, "sensitivity": m.sensitivity, "specificity": m.specificity,
                                 "threshold": m.threshold}
            if m.bootstrap is not None:
                d.update(delta_auroc=m.bootstrap.delta, delta_ci95=[m.bootstrap.ci_low, m.bootstrap.ci_high],
                         bootstrap_replicates=m.bootstrap.replicates)
            if m.delong is not None:
                d.update(delong_z=m.delong.z, delong_p=m.delong.p_value, delong_se=m.delong.standard_error)
            if m.agreement is not None:
                d["decision_agreement"] = m.agreement
            if m.retention is not None:
                d["retention"] = m.retention
            return d

        return {
            "reference": self.reference,
            "models": self.models,
            "images": self.n_images,
            "conditions": [
                {"condition": c.condition, "n_pos": c.n_pos, "n_neg": c.n_neg, "few_labels": c.few_labels,
                 "threshold": c.threshold, "models": {name: model_dict(m) for name, m in c.models.items()}}
                for c in self.conditions
            ],
            "cosine_to_reference": {name: metrics.distribution(v) for name, v in self.cosine.items()},
            "skipped": self.skipped,
        }


def compare_embeddings(
    reference: str,
    embeddings: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    table: PromptTable,
    thresholds: dict[str, float | None],
    *,
    replicates: int = 2000,
    seed: int = 0,
    skipped: Iterable[str] = (),
    scoring: Mapping[str, tuple[PromptTable, Mapping[str, float | None]]] | None = None,
) -> ParityReport:
    """``embeddings`` maps model name -> (N, D), ``reference`` among them; labels are aligned with N.

    ``scoring`` gives some models their own (prompt table, thresholds), e.g. a bundle's zero-shot
    table beside its site-adapted one; the others use ``table`` and ``thresholds``. Conditions the
    prompt table does not score, or without both classes, are left out.
    """
    if reference not in embeddings:
        raise ValueError(f"reference {reference!r} is not among the models {list(embeddings)}")
    models = [reference, *(name for name in embeddings if name != reference)]
    scoring = {name: (scoring or {}).get(name, (table, thresholds)) for name in models}
    scores = {name: scoring[name][0].score(embeddings[name]).condition_probabilities for name in models}
    conditions = []
    for condition, y_all in labels.items():
        if condition not in table.conditions:
            continue
        labelled = ~np.isnan(y_all)
        y = y_all[labelled]
        if len(np.unique(y)) < 2:
            continue
        threshold = scoring[reference][1].get(condition)
        ref_all = scores[reference][condition]
        per_model, roc = {}, {}
        for name in models:
            s_all = scores[name][condition]
            s = s_all[labelled]
            own_threshold = scoring[name][1].get(condition)
            sens, spec = (metrics.sensitivity_specificity(y, s, own_threshold) if own_threshold is not None
                          else (None, None))
            entry = ModelParity(metrics.auroc(y, s), sens, spec, threshold=own_threshold)
            if name != reference:
                entry.retention = metrics.retention(entry.auroc, per_model[reference].auroc)
                entry.bootstrap = metrics.paired_bootstrap_delta(y, ref_all[labelled], s, replicates=replicates,
                                                                 seed=seed)
                entry.delong = metrics.delong_test(y, ref_all[labelled], s)
                if threshold is not None and own_threshold is not None:
                    entry.agreement = float(np.mean((ref_all >= threshold) == (s_all >= own_threshold)))
            per_model[name] = entry
            roc[name] = metrics.roc_points(y, s)
        conditions.append(ConditionParity(condition, int((y == 1).sum()), int((y == 0).sum()), threshold,
                                          per_model, roc))
    cosine = {name: metrics.cosine_similarity(embeddings[name], embeddings[reference]) for name in models[1:]}
    n_images = len(next(iter(embeddings.values())))
    return ParityReport(reference, models, n_images, conditions, cosine, list(skipped))


def prepare_pixels(preprocessor: Preprocessor, paths: Sequence[Path], progress: ProgressCallback | None = None,
                   *, shown: Callable[[Path], str] | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """Preprocess images once; returns their model-input pixels, (N, H, W, 3) RGB uint8, the indices
    kept, and why the others were not, each naming its image as ``shown`` does (default: by its path).

    The pixels are what caches keep: a quarter of the tensors' bytes, and ``preprocessor.normalise``
    makes of them, bit for bit, the tensors ``prepare`` gives."""
    images, kept, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            prepared = preprocessor.prepare(path)
        except ImageError as exc:  # an unreadable image is reported, not fatal, in a parity run
            skipped.append(named_once(path, str(exc), shown=shown(path) if shown else None))
        else:
            images.append(prepared.image)
            kept.append(i)
        if progress:
            progress(1)
    if not images:
        raise EdgeRetinaError(f"none of the {len(paths)} labelled images could be read: " + "; ".join(skipped[:3]))
    return np.stack(images), kept, skipped


def prepare_tensors(preprocessor: Preprocessor, paths: Sequence[Path], progress: ProgressCallback | None = None,
                    *, shown: Callable[[Path], str] | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """``prepare_pixels``, normalised: the model's (N, 3, H, W) float32 tensors."""
    pixels, kept, skipped = prepare_pixels(preprocessor, paths, progress, shown=shown)
    return preprocessor.normalise(pixels), kept, skipped


def runner_embeddings(runner: Runner, tensors: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([runner.infer(tensors[s:s + batch_size]) for s in range(0, len(tensors), batch_size)])


def bundle_prompt_table(bundle: Bundle) -> PromptTable:
    """The prompt table the bundle screens with (its site adaptation's, when it has one)."""
    return bundle_scoring(bundle)[0]


def engine_embeddings(bundle: Bundle, tensors: np.ndarray, engines: Sequence[EngineEntry],
                      threads: int | None = None) -> dict[str, np.ndarray]:
    """Each engine's embeddings of the same prepared tensors (engines opened one at a time)."""
    out = {}
    for engine in engines:
        with create_runner(engine.backend, bundle.path_of(engine.primary_file), precision=engine.precision,
                           threads=threads, cache_dir=engine_cache_dir(bundle, engine)) as runner:
            out[engine.describe()] = runner_embeddings(runner, tensors)
    return out


def bundle_parity(
    bundle_path: str | Path,
    labelled: LabelledImages,
    *,
    reference: HostModel | None = None,
    host_models: Sequence[HostModel] = (),
    engines: Sequence[EngineEntry] | None = None,
    threads: int | None = None,
    replicates: int = 2000,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    base: bool = False,
    labels_csv: str | Path | None = None,
) -> ParityReport:
    """Parity of ``host_models`` and ``engines`` (default: all of the bundle's) on ``labelled`` images.

    ``reference`` is a host model, e.g. the PyTorch teacher; without it the reference is the
    bundle's preferred FP32 engine. ``host_models`` (e.g. the PyTorch student) come next in the
    tables, then the engines. With ``base`` (a site-adapted bundle only) the reference is the
    bundle's preferred engine scored zero-shot with the bundle's own thresholds, and every engine
    stands beside it site-adapted: base and adapted side by side. With ``labels_csv`` (the CSV
    ``labelled`` was read from), the images left out are named as it lists them.
    """
    bundle = load_bundle(Path(bundle_path))
    engines = list(engines if engines is not None else bundle.manifest.engines)
    shown = partial(listed_name, labels_csv=Path(labels_csv)) if labels_csv is not None else None
    if base:
        return _base_parity(bundle, labelled, engines, threads, replicates, seed, progress, shown)
    tensors, kept, skipped = prepare_tensors(Preprocessor(bundle.manifest.input), labelled.paths, progress,
                                             shown=shown)
    kept_paths = [labelled.paths[i] for i in kept]
    embeddings = {}
    if reference is None:
        fp32 = bundle.select_engine(precision="fp32")
        reference_name = fp32.describe()
        if all(e.describe() != reference_name for e in engines):
            engines.insert(0, fp32)
    else:
        reference_name = reference[0]
    for model in ([reference] if reference is not None else []) + list(host_models):
        embeddings[model[0]] = _host_model_embeddings(model, bundle.manifest.input, tensors, kept_paths)
    embeddings.update(engine_embeddings(bundle, tensors, engines, threads))
    table, thresholds = bundle_scoring(bundle)
    return compare_embeddings(reference_name, embeddings, labelled.subset(kept).labels, table,
                              thresholds, replicates=replicates, seed=seed, skipped=skipped)


def _base_parity(bundle: Bundle, labelled: LabelledImages, engines: list[EngineEntry], threads: int | None,
                 replicates: int, seed: int, progress: ProgressCallback | None,
                 shown: Callable[[Path], str] | None) -> ParityReport:
    if bundle.manifest.adaptation is None:
        raise EdgeRetinaError(f"{bundle.source} has no site adaptation to compare with its base "
                              "(`edge-retina adapt` makes one)")
    tensors, kept, skipped = prepare_tensors(Preprocessor(bundle.manifest.input), labelled.paths, progress,
                                             shown=shown)
    preferred = bundle.select_engine()
    if all(e.describe() != preferred.describe() for e in engines):
        engines.insert(0, preferred)
    adapted = engine_embeddings(bundle, tensors, engines, threads)
    reference = f"{preferred.describe()} zero-shot"
    embeddings = {reference: adapted[preferred.describe()],
                  **{f"{name} adapted": e for name, e in adapted.items()}}
    table, thresholds = bundle_scoring(bundle)
    return compare_embeddings(reference, embeddings, labelled.subset(kept).labels, table, thresholds,
                              replicates=replicates, seed=seed, skipped=skipped,
                              scoring={reference: bundle_scoring(bundle, adapted=False)})


def _host_model_embeddings(model: HostModel, bundle_spec: InputSpec, tensors: np.ndarray,
                           paths: Sequence[Path]) -> np.ndarray:
    """A host model's embeddings of the images the bundle could prepare, prepared its own way if it has its own spec."""
    name, embed, *own_spec = model
    if not own_spec or own_spec[0] == bundle_spec:
        return embed(tensors)
    own_tensors, own_kept, _ = prepare_tensors(Preprocessor(own_spec[0]), paths)
    if len(own_kept) != len(paths):
        raise ValueError(f"{name}: some images the bundle could prepare failed with its input spec")
    return embed(own_tensors)


def format_delta(m: ModelParity) -> str:
    """ΔAUROC with its CI, as the tables print it: "-0.0012 [-0.0040, +0.0015] p=0.41"."""
    b, d = m.bootstrap, m.delong
    if b is None:
        return ""
    p = "" if d is None or math.isnan(d.p_value) else f" p={d.p_value:.2g}"
    return f"{b.delta:+.4f} [{b.ci_low:+.4f}, {b.ci_high:+.4f}]{p}"


def _percent(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x * 100:.1f} %"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


class ParityTable(NamedTuple):
    """A table of a parity report as text cells (``parity_tables``)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    footnote: str | None = None  # printed under the table: what a mark in it means


def parity_tables(report: ParityReport) -> list[ParityTable]:
    """One table per condition, then the cosine table: shared by the CLI, the HTML report and the
    demo. A condition's AUROCs on too few labels are marked, with the footnote saying so."""
    tables = []
    for c in report.conditions:
        threshold = "no threshold" if c.threshold is None else f"threshold {c.threshold:.3f}"
        # Site-adapted models have thresholds of their own: name them in their rows.
        own = any(m.threshold != c.threshold for m in c.models.values())
        rows = [[name + (f" (threshold {m.threshold:.3f})" if own and m.threshold is not None else ""),
                 metrics.format_auroc(m.auroc, c.n_pos, c.n_neg), format_delta(m) or "(reference)",
                 "" if name == report.reference else _ratio(m.retention), _percent(m.sensitivity),
                 _percent(m.specificity), _percent(m.agreement)] for name, m in c.models.items()]
        counts = f"{plural(c.n_pos, 'positive')} / {plural(c.n_neg, 'negative')}"
        tables.append(ParityTable(f"{c.condition}: {counts}, {threshold}",
                                  ["model", "AUROC", "ΔAUROC [95% CI] DeLong p", "retention", "sensitivity",
                                   "specificity", "agreement"], rows,
                                  metrics.few_labels_footnote([(c.n_pos, c.n_neg)])))
    cosine_rows = [[name, *(f"{v:.6f}" for v in metrics.distribution(values).values())]
                   for name, values in report.cosine.items()]
    tables.append(ParityTable(f"Embedding cosine to {report.reference} ({plural(report.n_images, 'image')})",
                              ["model", "min", "p1", "p5", "median", "mean", "max"], cosine_rows))
    return tables
