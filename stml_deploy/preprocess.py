"""The evaluation-time preprocessing, in numpy + Pillow (no torch): resize the shorter side,
center crop, uint8 NCHW RGB. Training's eval transform calls this same code, and the rounding
rules are torchvision's (Resize(int) then CenterCrop), so pixels agree with torchvision's
eval pipeline exactly. Normalization is not here: it is folded into the model / ONNX graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from stml_deploy.errors import StmlError

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """What a runtime must do before the graph: recorded in config.json and ONNX metadata."""

    image_size: int = 224  # center-crop side = network input H = W
    resize: int = 256  # the shorter side is resized to this before the crop
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on 0..1 pixels, RGB order
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "uint8"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise StmlError(
                f"unknown interpolation {self.interpolation!r}; one of {', '.join(_INTERPOLATIONS)}"
            )
        if self.image_size < 8 or self.resize < self.image_size:
            raise StmlError(
                f"preprocessing needs resize >= image_size >= 8 "
                f"(got resize={self.resize}, image_size={self.image_size})"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise StmlError("preprocessing mean and std need 3 values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision's Resize(int) rule: shorter side -> `shorter`, longer side truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop offsets (round half to even, as its int(round(...)))."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def preprocess_image(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB PIL image -> uint8 array [3, H, W]."""
    if img.mode != "RGB":
        raise ValueError(f"preprocess_image expects an RGB image, got mode {img.mode}")
    width, height = resized_size(img.width, img.height, spec.resize)
    if (width, height) != img.size:
        img = img.resize((width, height), _INTERPOLATIONS[spec.interpolation])
    img = img.crop(center_crop_box(width, height, spec.image_size))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def stack_batch(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """List of [3, H, W] uint8 arrays -> one contiguous [N, 3, H, W] batch."""
    return np.ascontiguousarray(np.stack(arrays, axis=0))
