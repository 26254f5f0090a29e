"""The edge runtime's numpy + Pillow preprocessing against torchvision's eval transform
(Resize(shorter side) + CenterCrop) on real photographs: identical pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from stml_deploy.errors import StmlError
from stml_deploy.images import load_rgb
from stml_deploy.preprocess import PreprocessSpec, preprocess_image

MODES = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def torchvision_eval(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    pipeline = T.Compose(
        [
            T.Resize(spec.resize, interpolation=MODES[spec.interpolation]),
            T.CenterCrop(spec.image_size),
            T.PILToTensor(),
        ]
    )
    return pipeline(img).numpy()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("resize", "size"), [(256, 224), (73, 64), (427, 427), (33, 32)])
def test_matches_torchvision_eval_transform(
    real_photos: list[Path], interpolation: str, resize: int, size: int
) -> None:
    spec = PreprocessSpec(image_size=size, resize=resize, interpolation=interpolation)
    for photo in real_photos:
        for img in (
            load_rgb(photo),
            load_rgb(photo).rotate(90, expand=True),
            load_rgb(photo).crop((0, 0, 301, 299)),
        ):
            ours = preprocess_image(img, spec)
            assert ours.dtype == np.uint8 and ours.shape == (3, size, size)
            assert np.array_equal(ours, torchvision_eval(img, spec))


def test_training_eval_transform_is_the_same_code(real_photos: list[Path]) -> None:
    from training.transforms import eval_transform

    spec = PreprocessSpec(image_size=224, resize=256)
    img = load_rgb(real_photos[0])
    assert torch.equal(eval_transform(img, spec), torch.from_numpy(preprocess_image(img, spec)))


def test_spec_round_trip_and_validation() -> None:
    spec = PreprocessSpec(
        image_size=32,
        resize=36,
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(StmlError, match="resize >= image_size"):
        PreprocessSpec(image_size=64, resize=32)
    with pytest.raises(StmlError, match="unknown interpolation"):
        PreprocessSpec(interpolation="area")
