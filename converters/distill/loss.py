"""The distillation loss: match the teacher's embedding and its zero-shot distribution.

``loss = embed_weight * (1 - cos(student, teacher))
       + centred_weight * (1 - cos(student - mean, teacher - mean))
       + kl_weight * T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))``

where logits = logit_scale * embedding @ class_embeddings.T over the bundle's prompt table (the
teacher's class embeddings, normal class included). The cosine term pulls the student into the
teacher's embedding space (what the shipped prompt table needs); the KL term weights the errors
that change a zero-shot decision. The centred term exists because a retinal teacher's embeddings
of fundus photos crowd around their mean (the reference teacher: median cosine 0.96 to its mean
direction over the train split): a student can reach a cosine of 0.99 while missing most of the
image-to-image variation that carries the findings. With ``mean`` the teacher's mean embedding over
the training images, that term weighs the variation fully. T^2 keeps the KL gradients' scale
independent of T (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossConfig:
    embed_weight: float = 1.0
    centred_weight: float = 1.0
    kl_weight: float = 1.0
    temperature: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


class DistillLoss(torch.nn.Module):
    def __init__(self, class_embeddings: np.ndarray, logit_scale: float, teacher_mean: np.ndarray,
                 config: LossConfig = LossConfig()):
        super().__init__()
        self.register_buffer("class_embeddings", torch.as_tensor(np.asarray(class_embeddings, np.float32)))
        self.register_buffer("teacher_mean", torch.as_tensor(np.asarray(teacher_mean, np.float32)))
        self.logit_scale = float(logit_scale)
        self.config = config

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(embeddings, dim=-1) @ self.class_embeddings.T

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts (for the progress bar and the history)."""
        c = self.config
        embed = (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        centred = (1.0 - F.cosine_similarity(student - self.teacher_mean, teacher - self.teacher_mean, dim=-1)).mean()
        t = c.temperature
        kl = F.kl_div(F.log_softmax(self.logits(student) / t, dim=-1), F.log_softmax(self.logits(teacher) / t, dim=-1),
                      reduction="batchmean", log_target=True) * t * t
        total = c.embed_weight * embed + c.centred_weight * centred + c.kl_weight * kl
        return total, {"loss": total.item(), "cos_loss": embed.item(), "centred": centred.item(), "kl": kl.item()}
