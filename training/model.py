"""The STML networks (docs/design.md §7): backbone -> pooling -> linear heads f and g.
Pixels enter as uint8 (or float 0..255) and are normalized inside, so the exported graph takes
the same uint8 input the edge runtime produces.

Pooling (recorded in config.json as architecture.pooling; training, export and eval use it):
* feature maps (CNNs): GAP + GMP summed, the paper's; `gap` or `gmp` alone on request;
* tokens (ViT-like): `gap`/`gmp` run over the patch tokens only (class and register tokens
  are not image regions: registers in particular collect global scratch values); `cls` is
  the class token; `cls+gap` sums the two. `auto` picks `cls` where the model has a class
  token (the summary its pretraining trains: supervised ViT, DINO/DINOv2, whose off-the-shelf
  CLS features are the baseline STML must beat), else `gap` over the patch tokens.
A `+` always sums, so the heads' input width is the backbone's."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from stml_deploy.config import POOLINGS
from stml_deploy.errors import StmlError
from training.backbones import Backbone

MAP_POOLINGS = ("gap+gmp", "gap", "gmp")


def resolve_pooling(requested: str, backbone: Backbone, name: str = "the backbone") -> str:
    """The pooling `requested` ("auto" or one of POOLINGS) means for this backbone."""
    if requested == "auto":
        if not backbone.tokens:
            return "gap+gmp"
        return "cls" if backbone.class_token else "gap"
    if requested not in POOLINGS:
        raise StmlError(f"unknown --pooling {requested!r}; one of auto, {', '.join(POOLINGS)}")
    if not backbone.tokens and requested not in MAP_POOLINGS:
        raise StmlError(
            f"--pooling {requested} needs a token backbone; {name} gives feature maps "
            f"(one of {', '.join(MAP_POOLINGS)})"
        )
    if "cls" in requested and not backbone.class_token:
        raise StmlError(f"--pooling {requested}: {name} has no class token (use gap or gap+gmp)")
    return requested


def pool_features(
    features: torch.Tensor, pooling: str = "gap+gmp", prefix_tokens: int = 0
) -> torch.Tensor:
    """Maps [B,C,h,w] or tokens [B,T,C] -> [B,C]. Tokens: the first `prefix_tokens` are not
    patches (the class token, if any, first: resolve_pooling allows `cls` only then)."""
    if features.dim() == 4:
        axes, regions, cls = (2, 3), features, None
    elif features.dim() == 3:
        axes, regions = (1,), features[:, prefix_tokens:]
        cls = features[:, 0] if prefix_tokens else None
    else:
        raise ValueError(f"backbone output has unexpected shape {tuple(features.shape)}")
    pooled = None
    for part in pooling.split("+"):
        if part == "gap":
            value = regions.mean(dim=axes)
        elif part == "gmp":
            value = regions.amax(dim=axes)
        elif part == "cls" and cls is not None:
            value = cls
        else:
            raise ValueError(f"pooling {pooling!r} does not apply to {tuple(features.shape)}")
        pooled = value if pooled is None else pooled + value
    return pooled


def _orthogonal_head(in_dim: int, out_dim: int) -> nn.Linear:
    head = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class EmbeddingNet(nn.Module):
    """Student (f and g heads) or teacher (g head only, `with_f=False`).

    forward returns (f, g), raw (not normalized): the STML losses work on raw distances;
    `embed` gives the L2-normalized f that retrieval and export use."""

    def __init__(
        self,
        backbone: Backbone,
        embedding_dim: int,
        aux_dim: int,
        with_f: bool = True,
        pooling: str = "gap+gmp",
        pool_prefix_tokens: bool = False,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        # packages written before prefix tokens were told apart pooled them with the patches
        self.prefix_tokens = 0 if pool_prefix_tokens else backbone.prefix_tokens
        mean = torch.tensor(backbone.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(backbone.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean)
        self.register_buffer("pixel_std", std)
        self.backbone = backbone.module
        self.g = _orthogonal_head(backbone.feature_dim, aux_dim)
        self.f = _orthogonal_head(backbone.feature_dim, embedding_dim) if with_f else None

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return pool_features(self.backbone(x), self.pooling, self.prefix_tokens)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        pooled = self.features(pixels)
        f = self.f(pooled) if self.f is not None else None
        return f, self.g(pooled)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The deployed embedding: L2-normalized f, float32."""
        f, _ = self.forward(pixels)
        return F.normalize(f.float(), dim=1)

    def embed_aux(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw g (the embedding the nearest-neighbour batches are mined on)."""
        return self.forward(pixels)[1].float()


def make_teacher(student: EmbeddingNet) -> EmbeddingNet:
    """The EMA teacher starts as an exact copy of the student's backbone and g head
    (the reference code gives it a different random g init; a copy is what EMA assumes)."""
    teacher = copy.deepcopy(student)
    teacher.f = None
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher
