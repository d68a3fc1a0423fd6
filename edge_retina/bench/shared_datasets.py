"""Where the shared labelled datasets are: the default images and labels of the benchmarks, the
demo and distillation (docs/LABELS.md)."""
from __future__ import annotations

import os
from pathlib import Path

BESIDE_THE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def shared_datasets_dir() -> Path | None:
    """``$EDGE_RETINA_DATASETS``, else ../shared/datasets beside the checkout, when present (its
    README.md marks it); None when neither is."""
    candidate = Path(os.environ.get("EDGE_RETINA_DATASETS", BESIDE_THE_CHECKOUT))
    return candidate if (candidate / "README.md").is_file() else None
