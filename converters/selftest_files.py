"""The self-test files a bundle carries (host side): a golden fundus photo and its expected embedding.

Give ``selftest_files`` the bundle's image encoders (by engine role: a callable from a preprocessed
tensor to its embedding) and the bundle's input spec; pass what it returns to ``write_bundle`` with the other
files. The device checks them with ``edge_retina.selftest.run_selftest``.

The golden image is scikit-image's real colour fundus photograph (``skimage.data.retina``, CC0),
downsized and re-encoded as JPEG: JPEG because that is what fundus cameras write, so the self-test
also exercises the device's decoder.
"""
from __future__ import annotations

import io
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from edge_retina.preprocess import Preprocessor
from edge_retina.preprocess.spec import InputSpec
from edge_retina.selftest import (
    EXPECTED_FILE,
    GOLDEN_IMAGE,
    ReferenceEmbedding,
    SelftestExpectation,
)

# Lowest cosine similarity to the recorded embedding that still counts as the same model, by the
# precision of the engine under test. FP32 engines differ from the reference by float rounding only
# (parity ~1e-6); fp16 loses about three decimal digits; int8 engines pass their accuracy guard with
# cosines around 0.99 on fundus photos, so 0.95 separates "quantized" from "broken". A broken
# engine (wrong weights, wrong preprocessing, a driver computing garbage) lands far below all of them.
DEFAULT_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.95}
GOLDEN_SIDE = 640  # pixels: covers a 512x512 model input after the field-of-view crop; ~60 KB as JPEG
GOLDEN_JPEG_QUALITY = 90


def golden_jpeg(side: int = GOLDEN_SIDE, quality: int = GOLDEN_JPEG_QUALITY) -> bytes:
    """scikit-image's fundus photograph resized to ``side`` x ``side`` and encoded as JPEG."""
    from skimage import data

    image = Image.fromarray(data.retina()).resize((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def selftest_files(
    encoders: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    input_spec: InputSpec,
    *,
    engine: str,
    min_cosine: Mapping[str, float] | None = None,
    image: bytes | None = None,
) -> dict[str, bytes]:
    """``{"selftest/golden.jpg": ..., "selftest/expected.json": ...}`` for ``write_bundle``.

    ``encoders`` maps each engine role the bundle has ("teacher", "student") to its image encoder:
    a callable from the preprocessed float32 (1, 3, H, W) tensor to the embedding ((1, D) or (D,)).
    ``engine`` names what computes them (e.g. ``"torch-fp32"``). ``image`` replaces the golden JPEG.
    """
    jpeg = golden_jpeg() if image is None else image
    tensor = Preprocessor(input_spec).prepare(jpeg).tensor
    references = {}
    for role, encode in encoders.items():
        embedding = np.asarray(encode(tensor), dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(embedding)):
            raise ValueError(f"the {role} encoder gave NaN or infinite values on the golden image")
        references[role] = ReferenceEmbedding(embedding=embedding, engine=engine)
    expectation = SelftestExpectation(
        image=GOLDEN_IMAGE,
        references=references,
        min_cosine=dict(DEFAULT_MIN_COSINE if min_cosine is None else min_cosine),
    )
    return {GOLDEN_IMAGE: jpeg, EXPECTED_FILE: expectation.to_bytes()}
