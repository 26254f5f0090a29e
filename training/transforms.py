"""Train and eval transforms. Eval is the edge runtime's own numpy preprocessing (one code path
for training, export golden sets and deployment); train is torchvision's multi-view
augmentation (RandomResizedCrop scale 0.16-1 + horizontal flip), seeded per sample."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from stml_deploy.preprocess import PreprocessSpec, preprocess_image

_MODES = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}
CROP_SCALE = (0.16, 1.0)


def eval_transform(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """RGB image -> uint8 [3, H, W] (resize shorter side, center crop)."""
    return torch.from_numpy(preprocess_image(img, spec))


class MultiViewAugment:
    """`views` independent augmentations of one image as uint8 [views, 3, H, W].

    Seeded per call, so the result depends only on (image, seed): identical with any number
    of loader workers and after a resume."""

    def __init__(self, spec: PreprocessSpec, views: int) -> None:
        self.views = views
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(
                    spec.image_size,
                    scale=CROP_SCALE,
                    interpolation=_MODES[spec.interpolation],
                    antialias=True,
                ),
                v2.RandomHorizontalFlip(),
                v2.PILToTensor(),
            ]
        )

    def __call__(self, img: Image.Image, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(img) for _ in range(self.views)])
