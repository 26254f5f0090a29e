"""Training hyper-parameters: defaults are the paper's CUB / Cars values (with a modern default
backbone); named recipes set the paper's values per dataset; explicit options win over both."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from stml_deploy.config import POOLINGS, PackageConfig
from stml_deploy.errors import StmlError

# --supervised-loss names -> pytorch-metric-learning loss classes (default arguments)
SUPERVISED_LOSSES = {
    "multi-similarity": "MultiSimilarityLoss",
    "contrastive": "ContrastiveLoss",
    "triplet-margin": "TripletMarginLoss",
    "circle": "CircleLoss",
    "ntxent": "NTXentLoss",
}


def _option(default: Any, help: str, default_text: str | None = None) -> Any:
    """A hyper-parameter that `stml train` offers as --NAME: its help and shown default live
    here, once (cli.py builds the options from these fields)."""
    return field(default=default, metadata={"help": help, "default_text": default_text})


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = _option("resnet50", "timm model name (hf-hub: names too) or googlenet.")
    pretrained: bool = _option(
        True, "Start from the backbone's pretrained weights (downloaded by timm/torchvision)."
    )
    embedding_dim: int = _option(512, "Size of the final embedding f.")
    aux_dim: int = _option(1024, "Size of the auxiliary head g.")
    image_size: int = _option(224, "Network input side after the crop.")
    resize: int | None = _option(
        None, "Shorter side before the center crop at eval.", "image-size / 0.875"
    )
    epochs: int = _option(90, "Training epochs.")
    batch_size: int = _option(120, "Images per batch; each is seen in --views augmentations.")
    views: int = _option(2, "Augmented views per image.")
    neighbours: int = _option(5, "Images per query group in nearest-neighbour batches.")
    lr: float = _option(1e-4, "Backbone learning rate (AdamP).")
    head_lr: float | None = _option(None, "Learning rate of the f and g heads.", "--lr")
    weight_decay: float = _option(1e-2, "AdamP weight decay.")
    schedule: str = _option("cosine", "Learning-rate schedule: cosine | constant.")
    sigma: float = _option(3.0, "Bandwidth of the pairwise similarity W_P.")
    delta: float = _option(1.0, "Margin of the relaxed contrastive loss.")
    momentum: float = _option(0.999, "EMA momentum of the teacher.")
    seed: int = _option(0, "Seed of initialisation, sampling and augmentation.")
    recipe: str | None = None  # set by build_config from --recipe
    # -- backbones (issue 10) --
    pooling: str = _option(
        "auto",
        "Pooling of the backbone output: gap+gmp | gap | gmp (maps or patch tokens), cls, "
        "cls+gap (token models; + sums). auto: gap+gmp for CNNs (the paper's); for ViT-like "
        "models cls (the summary their pretraining trains), or gap over patch tokens without "
        "a class token. Class and register tokens are never pooled as patches. Known to "
        "export fp32/fp16/int8 through the parity gate: ResNet, ConvNeXt, EfficientNet "
        "(gap+gmp), ViT/DINOv2 (cls), ViT with registers and no class token (gap); "
        "MobileNetV3 (gap+gmp): all three, its int8 with its most sensitive layers in float "
        "(docs/backbones.md).",
    )

    # --- semi-supervised STML (issue 12): used only with --labeled / --labeled-fraction
    labeled_ratio: float = _option(
        0.25, "Share of each batch's query groups that are labelled groups (labelled runs)."
    )
    supervised_loss: str = _option(
        "multi-similarity",
        f"pytorch-metric-learning loss on the labelled images: {' | '.join(SUPERVISED_LOSSES)}.",
    )
    supervised_weight: float = _option(1.0, "Weight of the supervised loss (labelled runs).")

    def __post_init__(self) -> None:
        positive = ("embedding_dim", "aux_dim", "image_size", "epochs", "batch_size", "views",
                    "neighbours")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise StmlError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise StmlError("learning rates must be positive")
        if self.weight_decay < 0:
            raise StmlError(f"--weight-decay must be at least 0 (got {self.weight_decay})")
        if self.sigma <= 0 or self.delta <= 0:
            raise StmlError("--sigma and --delta must be positive")
        if not 0.0 <= self.momentum < 1.0:
            raise StmlError(f"--momentum must be in [0, 1) (got {self.momentum})")
        if self.schedule not in ("cosine", "constant"):
            raise StmlError(f"--schedule must be cosine or constant (got {self.schedule!r})")
        if self.resize is not None and self.resize < self.image_size:
            raise StmlError(
                f"--resize {self.resize} is smaller than --image-size {self.image_size}"
            )
        if self.batch_size < self.neighbours:
            raise StmlError("--batch-size must be at least --neighbours")
        if self.neighbours * self.views < 2:
            raise StmlError(
                "--neighbours x --views must be at least 2 (the pseudo labels compare each image with others)"
            )
        if self.pooling != "auto" and self.pooling not in POOLINGS:
            raise StmlError(f"--pooling must be auto or one of {', '.join(POOLINGS)}")
        self._check_semi_supervised()

    def _check_semi_supervised(self) -> None:
        if not 0.0 <= self.labeled_ratio <= 1.0:
            raise StmlError(f"--labeled-ratio must be in [0, 1] (got {self.labeled_ratio})")
        if self.supervised_loss not in SUPERVISED_LOSSES:
            raise StmlError(
                f"--supervised-loss {self.supervised_loss!r}: one of {', '.join(SUPERVISED_LOSSES)}"
            )
        if self.supervised_weight < 0:
            raise StmlError(
                f"--supervised-weight must be at least 0 (got {self.supervised_weight})"
            )

    @property
    def topk(self) -> int:
        return self.neighbours * self.views

    @property
    def resize_side(self) -> int:
        return self.resize if self.resize is not None else int(round(self.image_size / 0.875))

    @property
    def effective_head_lr(self) -> float:
        return self.head_lr if self.head_lr is not None else self.lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_PAPER = dict(backbone="googlenet", pretrained=True, embedding_dim=512, aux_dim=1024,
              image_size=224, resize=256, epochs=90, batch_size=120, views=2, lr=1e-4,
              weight_decay=1e-2, sigma=3.0, schedule="cosine")  # fmt: skip
RECIPES: dict[str, dict[str, Any]] = {
    "cub": {**_PAPER, "neighbours": 5, "delta": 1.0, "momentum": 0.999, "head_lr": 1e-4},
    "cars": {**_PAPER, "neighbours": 5, "delta": 1.0, "momentum": 0.999, "head_lr": 1e-4},
    "sop": {**_PAPER, "neighbours": 2, "delta": 0.9, "momentum": 0.9, "head_lr": 1e-2},
    "sop-scratch": {
        **_PAPER,
        "backbone": "resnet18",
        "pretrained": False,
        "embedding_dim": 128,
        "lr": 5e-4,
        "head_lr": 5e-4,
        "schedule": "constant",
        "epochs": 180,
        "neighbours": 2,
        "delta": 0.9,
        "momentum": 0.9,
    },
    # not the paper's: a small network from scratch that trains on a laptop CPU in minutes (the
    # demo's setting: a shorter EMA horizon and a higher learning rate, since nothing is
    # pretrained); add --image-size 32 --resize 32 for 28-px data such as Fashion-MNIST
    "cpu-small": {
        "backbone": "resnet10t",
        "pretrained": False,
        "embedding_dim": 128,
        "aux_dim": 512,
        "image_size": 64,
        "epochs": 10,
        "batch_size": 120,
        "views": 2,
        "neighbours": 5,
        "lr": 1e-3,
        "head_lr": 1e-3,
        "momentum": 0.99,
        "sigma": 3.0,
        "delta": 1.0,
        "schedule": "cosine",
        "weight_decay": 1e-2,
    },
}


def build_config(recipe: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < recipe < explicit options (None in `overrides` means "not given")."""
    values: dict[str, Any] = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise StmlError(f"unknown recipe {recipe!r}; one of {', '.join(RECIPES)}")
        values.update(RECIPES[recipe])
        values["recipe"] = recipe
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(TrainConfig(), **values)


def init_config(recipe: str | None, overrides: dict[str, Any], init: PackageConfig) -> TrainConfig:
    """Options for continuing from a published package: its architecture is fixed (options
    that contradict it are refused), its weights replace any pretrained start."""
    arch = init.architecture
    fixed = {"backbone": arch.backbone, "embedding_dim": arch.embedding_dim,
             "aux_dim": arch.aux_dim, "image_size": arch.image_size,
             "resize": init.preprocessing.resize, "pooling": arch.pooling}  # fmt: skip
    clash = sorted(
        k for k, v in fixed.items() if overrides.get(k) is not None and overrides[k] != v
    )
    if clash:
        raise StmlError(
            f"--init-from fixes the architecture; these options contradict it: {', '.join(clash)}"
        )
    return build_config(recipe, {**overrides, **fixed, "pretrained": False})
