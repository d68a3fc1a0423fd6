"""The input specification: how a model wants its pixels.

One ``InputSpec`` travels from the teacher adapter (host) through the bundle manifest to the device,
so that calibration, parity checks and the runtime all prepare images the same way.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

ResizeMode = Literal["letterbox", "centre-crop", "stretch"]
PadPosition = Literal["centre", "top-left"]
Interpolation = Literal["bilinear", "bicubic", "area"]
ColourOrder = Literal["RGB", "BGR"]

RESIZE_MODES = ("letterbox", "centre-crop", "stretch")
PAD_POSITIONS = ("centre", "top-left")
INTERPOLATIONS = ("bilinear", "bicubic", "area")
COLOUR_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class InputSpec:
    """Model input contract.

    ``size`` is (height, width). Pixel values become ``(value * scale - mean) / std`` per channel, in
    ``colour_order``, laid out NCHW float32.

    - ``letterbox``: fit the longest side, pad the rest with ``pad_value`` (before normalisation);
      ``pad_position`` says where the image sits (FLAIR pads bottom/right, i.e. "top-left").
    - ``centre-crop``: fit the shortest side, crop the centre (CLIP style).
    - ``stretch``: resize both sides independently.
    """

    size: tuple[int, int] = (224, 224)
    resize_mode: ResizeMode = "letterbox"
    pad_position: PadPosition = "centre"
    pad_value: int = 0
    interpolation: Interpolation = "bilinear"
    fov_crop: bool = True
    colour_order: ColourOrder = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"InputSpec.size must be (height, width) of at least 8 px, got {self.size!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        for name, allowed in (
            ("resize_mode", RESIZE_MODES),
            ("pad_position", PAD_POSITIONS),
            ("interpolation", INTERPOLATIONS),
            ("colour_order", COLOUR_ORDERS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"InputSpec.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("InputSpec.mean and .std need three values, std > 0")

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown input-spec fields: {sorted(unknown)}")
        return cls(**d)

    def sha256(self) -> str:
        """Stable hash of the spec: calibration sets and caches are keyed by it."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()
