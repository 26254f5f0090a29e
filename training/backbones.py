"""Backbones: any timm model by name (hf-hub: names included) or torchvision's GoogLeNet
(the paper's). Each returns a module mapping normalized images to a feature map, its feature
width, and the preprocessing its weights expect."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stml_deploy.errors import StmlError
from stml_deploy.hub import hub_backbone

GOOGLENET_NAMES = ("googlenet", "torchvision:googlenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    module: nn.Module  # normalized float images [B,3,H,W] -> features [B,C,h,w] or tokens [B,T,C]
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    source: str  # "timm" or "torchvision"


class GoogLeNetFeatures(nn.Module):
    """torchvision GoogLeNet up to inception5b (1024 channels), without its classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a",
                 "inception3b", "maxpool3", "inception4a", "inception4b", "inception4c",
                 "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b"]  # fmt: skip
        self.order = names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's ImageNet weights expect its own input re-scaling (transform_input).
        x = self.net._transform_input(x)
        for name in self.order:
            x = getattr(self.net, name)(x)
        return x


class TimmFeatures(nn.Module):
    """A timm model without pooling or classifier, always returning NCHW maps or NLC tokens."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.nhwc and out.dim() == 4:
            out = out.permute(0, 3, 1, 2)
        return out


def _googlenet(pretrained: bool) -> Backbone:
    from torchvision.models import GoogLeNet_Weights, googlenet

    # transform_input=True in both cases: it is a flag, not a weight, so a package trained
    # from pretrained weights must rebuild the same input re-scaling when loaded without them.
    if pretrained:
        try:
            net = googlenet(weights=GoogLeNet_Weights.IMAGENET1K_V1, transform_input=True)
        except (OSError, RuntimeError) as exc:  # offline (URLError is an OSError), bad download
            raise StmlError(
                f"cannot fetch torchvision's GoogLeNet ImageNet weights ({exc}); check the "
                "network, or train from scratch with --no-pretrained"
            ) from None
    else:
        net = googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=True)
    net.fc = nn.Identity()  # the ImageNet classifier is never used
    return Backbone(
        GoogLeNetFeatures(net), 1024, IMAGENET_MEAN, IMAGENET_STD, "bilinear", "torchvision"
    )


def _timm(name: str, pretrained: bool, model_args: dict[str, Any] | None = None) -> Backbone:
    import timm
    from timm.data import resolve_model_data_config

    if hub_backbone(name) is None and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise StmlError(f"unknown backbone {name!r}: not a timm model name{hint}")
    try:
        net = timm.create_model(
            name, pretrained=pretrained, num_classes=0, global_pool="", **(model_args or {})
        )
    except (RuntimeError, TypeError) as exc:  # TypeError: arguments the model does not take
        raise StmlError(f"cannot create backbone {name!r}: {exc}") from None
    except OSError as exc:  # download failures, offline
        what = "pretrained weights" if pretrained else "the model's config from the Hub"
        raise StmlError(f"cannot fetch {what} for {name!r}: {exc}") from None
    cfg = resolve_model_data_config(net)
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
        interpolation = "bilinear"
    return Backbone(
        TimmFeatures(net),
        # models with a pre-logits projection report its width as head_hidden_size
        int(getattr(net, "head_hidden_size", None) or net.num_features),
        tuple(float(v) for v in cfg["mean"]),
        tuple(float(v) for v in cfg["std"]),
        interpolation,
        "timm",
    )


def hub_backbone_recipe(name: str) -> dict[str, Any] | None:
    """For an `hf-hub:` backbone, the timm architecture and arguments its Hub config names
    (read from the local Hub cache, where timm just put it). Stored in config.json, they let
    eval and export rebuild the network with no Hub access (the weights come from the package)."""
    repo = hub_backbone(name)
    if repo is None:
        return None
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo.repo_id, "config.json", revision=repo.revision)
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        return {
            "timm_architecture": str(config["architecture"]),
            # stml sets the head itself (num_classes=0, no pooling)
            "timm_model_args": {
                k: v
                for k, v in (config.get("model_args") or {}).items()
                if k not in ("num_classes", "global_pool", "pretrained")
            },
        }
    except Exception:  # no config reachable: eval/export will fetch it from the Hub then
        return None


def create_backbone(name: str, pretrained: bool, recipe: dict[str, Any] | None = None) -> Backbone:
    """`recipe` (from hub_backbone_recipe) rebuilds an `hf-hub:` backbone without the Hub when
    no pretrained weights are wanted."""
    if name.lower() in GOOGLENET_NAMES:
        return _googlenet(pretrained)
    if recipe and not pretrained and hub_backbone(name) is not None:
        return _timm(recipe["timm_architecture"], False, recipe.get("timm_model_args") or {})
    return _timm(name, pretrained)
