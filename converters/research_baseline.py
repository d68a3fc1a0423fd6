"""The research-code way of running a model, as the baseline the deployed pipeline is compared with.

PIL decodes the whole photograph, resizes it to the teacher's native input size (no field-of-view
crop), normalises it (the runtime's own arithmetic, in numpy), and the PyTorch FP32 teacher embeds
it; the prompt lookup is the same scaled-cosine softmax, in torch. Host code: ``bench latency
--baseline research`` imports it only when asked for.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edge_retina.preprocess.resize import normalise
from edge_retina.preprocess.spec import InputSpec
from edge_retina.prompt_table import PromptTable

NAME = "research (PIL + PyTorch fp32)"


class ResearchPipeline:
    """``encoder``: a torch module, image batch -> embeddings (the teacher's image tower)."""

    name = NAME

    def __init__(self, encoder: Any, spec: InputSpec, prompt_table: PromptTable, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.encoder = encoder.eval().float()
        self.spec = spec
        self.class_embeddings = torch.from_numpy(prompt_table.class_embeddings)
        self.logit_scale = prompt_table.logit_scale

    def _tensor(self, image: Any) -> Any:
        resized = image.resize((self.spec.width, self.spec.height), Image.BILINEAR)
        return torch.from_numpy(normalise(np.asarray(resized), self.spec))

    def run(self, image: Path) -> dict[str, float]:
        start = time.perf_counter()
        with Image.open(image) as opened:
            decoded = opened.convert("RGB")
        t_decode = time.perf_counter()
        tensor = self._tensor(decoded)
        t_pre = time.perf_counter()
        with torch.inference_mode():
            embedding = self.encoder(tensor)
            t_infer = time.perf_counter()
            logits = self.logit_scale * torch.nn.functional.normalize(embedding, dim=-1) @ self.class_embeddings.T
            logits.softmax(dim=-1).numpy()
        end = time.perf_counter()
        return {"decode": (t_decode - start) * 1e3, "preprocess": (t_pre - t_decode) * 1e3,
                "inference": (t_infer - t_pre) * 1e3, "lookup": (end - t_infer) * 1e3, "total": (end - start) * 1e3}

    def prepared_tensor(self, image: Path) -> np.ndarray:
        with Image.open(image) as opened:
            return self._tensor(opened.convert("RGB")).numpy()

    def unusable(self, image: Path) -> str | None:
        """Why the research code cannot run ``image`` (PIL cannot open or decode it: a DICOM, which
        the runtime reads, say), or None."""
        try:
            self.prepared_tensor(image)
        except UnidentifiedImageError:  # its message names the file again
            return f"{image}: the research baseline cannot read it (not a format PIL opens)"
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            return f"{image}: the research baseline cannot read it (PIL: {exc})"
        return None

    def run_engine(self, tensor: np.ndarray) -> None:
        with torch.inference_mode():
            self.encoder(torch.from_numpy(tensor))

    def close(self) -> None:
        """Nothing to release: the module is garbage-collected with the pipeline."""
