"""Backbones: any timm model by name (hf-hub: names included) or torchvision's GoogLeNet
(the paper's). Each returns a module mapping normalized images to a feature map or a token
sequence, its feature width, its prefix tokens, and the preprocessing its weights expect.

Token models (ViT, DeiT, EVA, DINOv2...) fix their input size at creation (patch grid and
position embeddings), so the training image size is passed to timm as `img_size`; with
pretrained weights timm resamples the position embeddings to the new grid while loading.
Every backbone is probed once at its image size, so one that cannot take it fails in one line."""

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
    tokens: bool = False  # the output is a token sequence [B,T,C], not a map
    prefix_tokens: int = 0  # leading non-patch tokens (class, registers, distillation)
    class_token: bool = False  # the first token is a class token


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


def _check_hub_reachable(name: str, timeout: float = 5.0) -> None:
    """Offline, the Hub client spends about a minute in retries before it fails: when the Hub
    is not reachable and HF_HUB_OFFLINE is not set, say so at once (a cache-only run sets
    HF_HUB_OFFLINE=1, which timm and huggingface_hub then honour)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise StmlError(
            f"cannot reach the Hugging Face Hub at {endpoint.hostname}:{port} ({exc.strerror or exc}) "
            f"to fetch {name!r}: train from scratch with --no-pretrained, or set HF_HUB_OFFLINE=1 "
            "to use weights already in the local cache"
        ) from None


def _create_timm(name: str, pretrained: bool, args: dict[str, Any], image_size: int) -> nn.Module:
    """timm.create_model without pooling or classifier, at `image_size` for the models that
    take one (a constructor without `img_size` raises TypeError naming it: convolutional
    networks, which take any size)."""
    import timm

    common = dict(pretrained=pretrained, num_classes=0, global_pool="")
    if pretrained or hub_backbone(name) is not None:
        _check_hub_reachable(name)
    try:
        try:
            return timm.create_model(name, **common, **{**args, "img_size": image_size})
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            return timm.create_model(name, **common, **args)
    except OSError as exc:  # download failures, offline
        what = "pretrained weights" if pretrained else "the model's config from the Hub"
        raise StmlError(f"cannot fetch {what} for {name!r}: {exc}") from None
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StmlError(
            f"cannot create backbone {name!r} at image size {image_size}: {reason}"
        ) from None


def _check_patch_grid(name: str, net: nn.Module, image_size: int) -> None:
    """A patch model silently drops the border pixels that do not fill a patch; refuse instead."""
    patch = getattr(getattr(net, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    side = int(patch[0] if isinstance(patch, tuple | list) else patch)
    if image_size % side:
        raise StmlError(
            f"backbone {name!r} splits images into {side} px patches: --image-size {image_size} "
            f"is not a multiple of {side} (try {max(side, image_size // side * side)})"
        )


def _probe(name: str, module: nn.Module, image_size: int) -> torch.Tensor:
    """One forward pass of a blank image: the output layout, and a clear line if the backbone
    cannot take the size (too small for its strides, window sizes...)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StmlError(
            f"backbone {name!r} cannot take --image-size {image_size}: {reason}"
        ) from None
    finally:
        module.train(was_training)


def _timm(
    name: str, pretrained: bool, image_size: int, model_args: dict[str, Any] | None = None
) -> Backbone:
    import timm
    from timm.data import resolve_model_data_config

    if hub_backbone(name) is None and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise StmlError(f"unknown backbone {name!r}: not a timm model name{hint}")
    net = _create_timm(name, pretrained, dict(model_args or {}), image_size)
    _check_patch_grid(name, net, image_size)
    module = TimmFeatures(net)
    tokens = _probe(name, module, image_size).dim() == 3
    cfg = resolve_model_data_config(net)
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
        interpolation = "bilinear"
    class_token = getattr(net, "has_class_token", None)
    if class_token is None:  # EVA and others name only the parameter
        class_token = getattr(net, "cls_token", None) is not None
    return Backbone(
        module,
        # models with a pre-logits projection report its width as head_hidden_size
        int(getattr(net, "head_hidden_size", None) or net.num_features),
        tuple(float(v) for v in cfg["mean"]),
        tuple(float(v) for v in cfg["std"]),
        interpolation,
        "timm",
        tokens=tokens,
        prefix_tokens=int(getattr(net, "num_prefix_tokens", 0) or 0) if tokens else 0,
        class_token=bool(class_token) and tokens,
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


def create_backbone(
    name: str, pretrained: bool, image_size: int, recipe: dict[str, Any] | None = None
) -> Backbone:
    """The backbone at `image_size`. `recipe` (from hub_backbone_recipe) rebuilds an `hf-hub:`
    backbone without the Hub when no pretrained weights are wanted (its recorded `img_size`,
    the size it was published at, gives way to `image_size`)."""
    if name.lower() in GOOGLENET_NAMES:
        backbone = _googlenet(pretrained)
        _probe(name, backbone.module, image_size)
        return backbone
    if recipe and not pretrained and hub_backbone(name) is not None:
        args = recipe.get("timm_model_args") or {}
        return _timm(recipe["timm_architecture"], False, image_size, args)
    return _timm(name, pretrained, image_size)
