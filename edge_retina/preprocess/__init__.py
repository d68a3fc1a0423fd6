"""The single preprocessing implementation (decode, field-of-view crop, resize, normalise).

Used alike by the device runtime, calibration, training caches and parity checks::

    from edge_retina.preprocess import Preprocessor, InputSpec
    prepared = Preprocessor(InputSpec(size=(224, 224))).prepare("photo.jpg")
    prepared.tensor  # float32 (1, 3, 224, 224)
"""
from edge_retina.preprocess.decode import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    MIN_SIDE,
    DecodedImage,
    ImageHeader,
    decode_image,
    probe_image,
)
from edge_retina.preprocess.fov import FieldOfView, crop_to_fov, find_field_of_view
from edge_retina.preprocess.pipeline import (
    PREPROCESSING_VERSION,
    PreparedImage,
    Preprocessor,
    pixels_key,
)
from edge_retina.preprocess.spec import InputSpec

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "PREPROCESSING_VERSION",
    "DecodedImage",
    "FieldOfView",
    "ImageHeader",
    "InputSpec",
    "PreparedImage",
    "Preprocessor",
    "crop_to_fov",
    "decode_image",
    "find_field_of_view",
    "pixels_key",
    "probe_image",
]
