"""Labelled fundus images from the shared datasets, their deterministic splits, and a pixel cache.

Splits (train / val / test; test is never used for training or model selection):

- RIM-ONE DL: its published train/test split; val is carved out of train by hash.
- HEI-MED, eye4class, ODIR and PALM: by a hash of a grouping key, so that everything sharing the key
  lands on the same side: for ODIR-5K images the patient, in both folders that hold them
  (``eye4class/`` and ``odir/``: ``<id>_left``/``<id>_right`` are one patient; EyePACS ids are a
  separate namespace), else the file's sha1 (the two byte-identical eye4class images share both).
  HEI-MED and PALM key by the sha1 of the JPEG bytes.

Findings: from the graders' diagnostic keywords where ODIR-5K has them (``odir/labels.csv``,
``odir/eye4class_keywords.csv``; an eye can have several), else from the dataset's labels.

Images are prepared ONCE with the project's shared preprocessing (``edge_retina.preprocess``) and
cached as uint8 arrays keyed by the input spec's hash and the record list's hash.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from converters.reference.captions import FindingClass, keyword_findings
from edge_retina.preprocess.spec import InputSpec

SPLITS = ("train", "val", "test")
SHARED_DATASETS = ("heimed", "rimone", "eye4class", "odir", "palm")  # folders of ../shared/datasets
# (val, test) fractions for hash-split datasets. HEI-MED is small (169 images, 54 with exudates):
# a larger test share keeps its test AUROC from resting on a handful of positives.
# ODIR patients appear in eye4class/ and odir/: both use eye4class's fractions, so a patient's
# images share a split whichever folder they are in.
_HASH_FRACTIONS = {"heimed": (0.10, 0.30), "eye4class": (0.10, 0.20), "rimone": (0.15, 0.0),
                   "odir": (0.10, 0.20), "palm": (0.15, 0.25)}
_PATIENT_FILE = re.compile(r"^(\d+)_(left|right)\.jpe?g$", re.IGNORECASE)
_DR_GRADE_CLASSES = {
    0: FindingClass.NORMAL,
    1: FindingClass.DR_MILD,
    2: FindingClass.DR_MODERATE,
    3: FindingClass.DR_SEVERE,
    4: FindingClass.DR_PROLIFERATIVE,
}


@dataclass(frozen=True)
class Record:
    """One labelled image: where it is, what it shows, which split it belongs to."""

    dataset: str  # heimed | rimone | eye4class | odir | palm
    source: str  # original collection: heimed | rimone | odir | eyepacs | palm
    file: str  # relative to the dataset folder
    findings: tuple[str, ...]  # sorted FindingClass values (and ODIR keywords without a class)
    split: str
    group: str  # split key: records sharing it always share a split
    keywords: str = ""  # the grader's diagnostic keywords, where the dataset has them

    def has(self, *findings: FindingClass) -> bool:
        return any(f.value in self.findings for f in findings)

    def only(self, finding: FindingClass) -> bool:
        return self.findings == (finding.value,)

    def path(self, root: Path) -> Path:
        return Path(root) / self.dataset / self.file


def _file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    # sha256 of the key spreads any key (sha1, patient id) uniformly over [0, 1).
    u = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _by_file_hash(root: Path, dataset: str, file: str, finding: FindingClass) -> Record:
    """A record of a dataset without patient ids: split by the sha1 of the file's bytes."""
    val, test = _HASH_FRACTIONS[dataset]
    group = "sha1:" + _file_sha1(root / dataset / file)
    return Record(dataset, dataset, file, (finding.value,), _hash_split(group, val, test), group)


def _heimed(root: Path) -> list[Record]:
    records = []
    for row in _read_csv(root / "heimed" / "labels.csv"):
        if row["exudate"] == "1":
            finding = FindingClass.EXUDATES
        elif row["healthy"] == "1":
            finding = FindingClass.NORMAL
        else:  # no exudate but not healthy: microaneurysms (the README's definition of healthy)
            finding = FindingClass.DR_MILD
        records.append(_by_file_hash(root, "heimed", row["file"], finding))
    return records


def _rimone(root: Path) -> list[Record]:
    val, _ = _HASH_FRACTIONS["rimone"]
    records = []
    for row in _read_csv(root / "rimone" / "labels.csv"):
        if row["glaucoma"] == "1":
            finding = FindingClass.GLAUCOMA_SUSPECT_DISC if row["suspect"] == "1" else FindingClass.GLAUCOMA_DISC
        else:
            finding = FindingClass.NORMAL_DISC
        group = "sha1:" + _file_sha1(root / "rimone" / row["file"])
        split = row["split"]
        if split == "train":
            split = _hash_split(group, val, 0.0)
        elif split != "test":
            raise ValueError(f"rimone/labels.csv: unknown split {split!r} for {row['file']}")
        records.append(Record("rimone", "rimone", row["file"], (finding.value,), split, group))
    return records


def _odir_keywords(path: Path) -> dict[str, str]:
    """file -> the grader's keywords, from an ODIR keywords CSV (empty when the file is absent)."""
    return {row["file"]: row["keywords"] for row in _read_csv(path)} if path.is_file() else {}


def _eye4class(root: Path) -> list[Record]:
    val, test = _HASH_FRACTIONS["eye4class"]
    keywords_of = _odir_keywords(root / "odir" / "eye4class_keywords.csv")
    records = []
    split_of_sha1: dict[str, str] = {}
    for row in _read_csv(root / "eye4class" / "labels.csv"):
        label = row["label"]
        source = "eyepacs" if label == "diabetic_retinopathy" else "odir"
        if label == "diabetic_retinopathy":
            if not row["eyepacs_dr_grade"]:
                continue  # ungraded: its folder name alone says nothing (most of the folder is grade 0)
            finding = _DR_GRADE_CLASSES[int(row["eyepacs_dr_grade"])]
        else:
            finding = FindingClass(label)
        keywords = keywords_of.get(row["file"], "")
        findings = keyword_findings(keywords) if keywords else (finding.value,)
        patient = _PATIENT_FILE.match(Path(row["file"]).name)
        group = f"{source}:{patient.group(1)}" if patient else "sha1:" + row["sha1"]
        split = _hash_split(group, val, test)
        # Grouping by patient already keeps byte-identical copies together; fail loudly if it ever does not.
        if split_of_sha1.setdefault(row["sha1"], split) != split:
            raise ValueError(f"byte-identical copies of eye4class/{row['file']} fell into different splits")
        records.append(Record("eye4class", source, row["file"], findings, split, group, keywords))
    return records


def _odir(root: Path) -> list[Record]:
    val, test = _HASH_FRACTIONS["odir"]
    records = []
    for file, keywords in _odir_keywords(root / "odir" / "labels.csv").items():
        findings = keyword_findings(keywords)
        if not findings:  # only image-quality notes: nothing to learn or test about the eye
            continue
        patient = _PATIENT_FILE.match(Path(file).name)
        group = f"odir:{patient.group(1)}" if patient else "sha1:" + _file_sha1(root / "odir" / file)
        records.append(Record("odir", "odir", file, findings, _hash_split(group, val, test), group, keywords))
    return records


def _palm(root: Path) -> list[Record]:
    records = []
    for row in _read_csv(root / "palm" / "labels.csv"):
        if row["pathological_myopia"] == "1":
            finding = FindingClass.PATHOLOGICAL_MYOPIA
        elif row["high_myopia"] == "1":
            finding = FindingClass.HIGH_MYOPIA
        else:
            finding = FindingClass.NORMAL
        records.append(_by_file_hash(root, "palm", row["file"], finding))
    return records


def load_records(root: str | Path) -> list[Record]:
    """All usable labelled images of the shared datasets, in a fixed order, with their split.

    The ODIR and PALM folders are optional (older copies of the shared datasets lack them)."""
    root = Path(root)
    optional = [reader(root) for name, reader in (("odir", _odir), ("palm", _palm)) if (root / name).is_dir()]
    return _heimed(root) + _rimone(root) + _eye4class(root) + [r for found in optional for r in found]


def split_hash(records: list[Record]) -> str:
    """Identifies the exact split: sha256 over (dataset, file, finding, split) of every record."""
    blob = json.dumps([[r.dataset, r.file, list(r.findings), r.split] for r in records], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _prepare(args: tuple[str, dict]) -> np.ndarray:
    from edge_retina.preprocess import Preprocessor

    path, spec = args
    return Preprocessor(InputSpec.from_dict(spec)).prepare(path).image


def build_pixel_cache(
    records: list[Record], root: str | Path, spec: InputSpec, cache_dir: str | Path, workers: int = 2
) -> np.ndarray:
    """(N, H, W, 3) uint8 images of ``records`` after the shared preprocessing, cached on disk."""
    cache_dir = Path(cache_dir)
    from edge_retina.preprocess import pixels_key

    key = hashlib.sha256(f"{pixels_key(spec)}{split_hash(records)}".encode()).hexdigest()[:16]
    cache = cache_dir / f"pixels-{key}.npy"
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(r.path(root)), spec.to_dict()) for r in records]
    tmp = cache.with_suffix(".tmp.npy")
    # Written image by image into a memory map: the whole set can be larger than what RAM should hold twice.
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(records), spec.height, spec.width, 3))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, image in enumerate(pool.map(_prepare, jobs, chunksize=32)):
            pixels[i] = image
    pixels.flush()
    del pixels
    tmp.replace(cache)
    (cache_dir / f"pixels-{key}.json").write_text(
        json.dumps({"spec": spec.to_dict(), "records": [asdict(r) for r in records]})
    )
    return np.load(cache, mmap_mode="r")
