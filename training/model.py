"""The STML networks (docs/design.md §7): backbone -> GAP + GMP (summed) -> linear heads f and g.
Pixels enter as uint8 (or float 0..255) and are normalized inside, so the exported graph takes
the same uint8 input the edge runtime produces."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from training.backbones import Backbone


def pool_features(features: torch.Tensor) -> torch.Tensor:
    """Global average + global max pooling, summed: maps [B,C,h,w] or tokens [B,T,C] -> [B,C]."""
    if features.dim() == 4:
        return features.mean(dim=(2, 3)) + features.amax(dim=(2, 3))
    if features.dim() == 3:
        return features.mean(dim=1) + features.amax(dim=1)
    raise ValueError(f"backbone output has unexpected shape {tuple(features.shape)}")


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
    ) -> None:
        super().__init__()
        mean = torch.tensor(backbone.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(backbone.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean)
        self.register_buffer("pixel_std", std)
        self.backbone = backbone.module
        self.g = _orthogonal_head(backbone.feature_dim, aux_dim)
        self.f = _orthogonal_head(backbone.feature_dim, embedding_dim) if with_f else None

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return pool_features(self.backbone(x))

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
