"""The student image encoder: a small timm backbone projected into the teacher's embedding space;
and its shipped weights (safetensors fp16 + JSON sidecar).

The default student is EfficientNet-Lite0 at 192x192, initialised with ImageNet weights
(``converters.backbones``) with its stem and stages 0-4 frozen (``DEFAULT_FROZEN_BLOCKS``): only
stages 5-6, the head convolution and the projection learn the teacher, on trunk features computed
once per view (by OpenVINO; ``converters.backbones.trunk_cache``). Lite rather than the previous
MobileNetV3-Small because it quantizes to INT8 (ReLU6, no hard-swish or squeeze-excite: both INT8
engines of the MobileNetV3 student failed the accuracy guard), and ImageNet-initialised because a
from-scratch tower trained on a few thousand photos did not transfer to other cameras. 192 px keeps
the student at about a sixth of the reference teacher's compute (EfficientNet-Lite2 at 384 px).
Other timm architectures train in full from random initialisation (``frozen_blocks=0``).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from converters.backbones import LITE_ARCHS, create_lite, lite_head, lite_trunk, trunk_parameters
from converters.torch_compat import ensure_torchvision
from edge_retina.preprocess.spec import InputSpec

DEFAULT_ARCH = "efficientnet_lite0"
DEFAULT_SIZE = 192
DEFAULT_FROZEN_BLOCKS = 5
FORMAT_VERSION = 1
#: Where the distilled default student (from the reference teacher) is shipped.
STUDENT_WEIGHTS = Path(__file__).with_name("weights") / "student-v5.safetensors"
WEIGHTS_FORMAT = "edge-retina-student"


def student_input_spec(teacher_spec: InputSpec, size: int) -> InputSpec:
    """The student's pixel contract: the teacher's (crop, padding, normalisation) at ``size`` px.

    timm's MobileNet/EfficientNet families are trained with ImageNet statistics too, so the
    teacher's normalisation suits them; only the resolution may differ.
    """
    return replace(teacher_spec, size=(size, size))


class StudentEncoder(nn.Module):
    """Normalised image (N, 3, H, W) -> L2-normalised embedding (N, embed_dim) in the teacher's space.

    ``backbone`` is a timm model built with ``num_classes=0`` (pooled features, no classifier);
    ``projection`` maps its features to the teacher's embedding size. Export-ready as one module.
    With ``frozen_blocks`` (EfficientNet-Lite only), the stem and the first ``frozen_blocks`` stages
    keep their ImageNet weights and ``embed_trunk_features`` runs the rest on their features.
    """

    def __init__(self, arch: str, embed_dim: int, input_size: int, frozen_blocks: int = 0,
                 pretrained: bool = False):
        super().__init__()
        ensure_torchvision()
        import timm

        if (frozen_blocks or pretrained) and arch not in LITE_ARCHS:
            raise ValueError(f"ImageNet initialisation and frozen stages need one of {sorted(LITE_ARCHS)}, not {arch}")
        self.arch = arch
        self.frozen_blocks = frozen_blocks
        self.backbone = (create_lite(arch, pretrained=pretrained) if arch in LITE_ARCHS
                         else timm.create_model(arch, pretrained=False, num_classes=0))
        # timm's `num_features` is not always the pooled width (MobileNetV3 adds a conv head after
        # it), so measure the width once on a dummy image.
        self.backbone.eval()
        with torch.no_grad():
            width = self.backbone(torch.zeros(1, 3, input_size, input_size)).shape[1]
        self.projection = nn.Linear(width, embed_dim)

    def embed_trunk_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(lite_head(self.backbone, features, self.frozen_blocks)), dim=-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for p in trunk_parameters(self.backbone, self.frozen_blocks)} if self.frozen_blocks else set()
        return [p for p in self.parameters() if id(p) not in frozen]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.frozen_blocks:
            return self.embed_trunk_features(lite_trunk(self.backbone, image, self.frozen_blocks))
        return F.normalize(self.projection(self.backbone(image)), dim=-1)


def build_student(arch: str, embed_dim: int, input_size: int, seed: int, frozen_blocks: int = 0) -> StudentEncoder:
    """A new student: ImageNet-initialised where the architecture has pip-packaged weights (the
    projection, and any other architecture, random); ``seed`` makes the random part reproducible."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return StudentEncoder(arch, embed_dim, input_size, frozen_blocks, pretrained=arch in LITE_ARCHS)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(encoder: nn.Module, input_size: tuple[int, int]) -> int:
    """FLOPs of one image through ``encoder`` (torch's counter: a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder = encoder.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder(torch.zeros(1, 3, *input_size))
    return int(counter.get_total_flops())


def sidecar_path(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def save_student(student: StudentEncoder, spec: InputSpec, weights_path: str | Path, metadata: dict) -> Path:
    """Write the student's weights as fp16 safetensors and a sidecar JSON saying how to rebuild it."""
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in student.state_dict().items()
               if v.is_floating_point()}
    save_file(tensors, str(weights_path), metadata={"format": WEIGHTS_FORMAT, "version": str(FORMAT_VERSION)})
    sidecar = {
        "format_version": FORMAT_VERSION,
        "arch": student.arch,
        "frozen_blocks": student.frozen_blocks,
        "embed_dim": student.projection.out_features,
        "input_spec": spec.to_dict(),
        "input_spec_sha256": spec.sha256(),
        "dtype": "float16",
        **metadata,
    }
    sidecar_path(weights_path).write_text(json.dumps(sidecar, indent=2) + "\n")
    return weights_path


def load_student(weights_path: str | Path) -> tuple[StudentEncoder, InputSpec, dict]:
    """Rebuild a saved student (float32, eval mode); returns it, its input spec and its sidecar."""
    weights_path = Path(weights_path)
    sidecar = json.loads(sidecar_path(weights_path).read_text())
    spec = InputSpec.from_dict(sidecar["input_spec"])
    student = StudentEncoder(sidecar["arch"], sidecar["embed_dim"], spec.height, sidecar.get("frozen_blocks", 0))
    state = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    # Integer buffers (BatchNorm's num_batches_tracked) are not shipped; everything else must match.
    result = student.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{weights_path} does not match {sidecar['arch']}: missing {missing}, "
                         f"unexpected {result.unexpected_keys}")
    return student.eval(), spec, sidecar
