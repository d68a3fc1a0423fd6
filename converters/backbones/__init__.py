"""ImageNet-pretrained image backbones (host side, torch): the starting point of teachers and students."""
from .efficientnet_lite import (
    LITE_ARCHS,
    create_lite,
    imagenet_state_dict,
    lite_head,
    lite_trunk,
    trunk_parameters,
)

__all__ = ["LITE_ARCHS", "create_lite", "imagenet_state_dict", "lite_head", "lite_trunk", "trunk_parameters"]
