"""Model <-> model package: build the student a config describes, write its weights
(safetensors, never pickle) and config.json, and load them back with strict key matching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from stml_deploy.atomic import atomic_path
from stml_deploy.errors import StmlError
from stml_deploy.package import WEIGHTS_NAME, ModelPackage, new_config
from stml_deploy.preprocess import PreprocessSpec
from training.backbones import create_backbone
from training.config import TrainConfig
from training.model import EmbeddingNet

# config.json "architecture" keys that rebuild an hf-hub: backbone without the Hub
HUB_RECIPE_KEYS = ("timm_architecture", "timm_model_args")


def build_student(
    cfg: TrainConfig, pretrained: bool | None = None, recipe: dict[str, Any] | None = None
) -> tuple[EmbeddingNet, PreprocessSpec]:
    """The student network and the preprocessing its backbone expects (`recipe`: see
    hub_backbone_recipe)."""
    backbone = create_backbone(
        cfg.backbone, cfg.pretrained if pretrained is None else pretrained, recipe
    )
    spec = PreprocessSpec(
        image_size=cfg.image_size,
        resize=cfg.resize_side,
        interpolation=backbone.interpolation,
        mean=backbone.mean,
        std=backbone.std,
    )
    return EmbeddingNet(backbone, cfg.embedding_dim, cfg.aux_dim), spec


def architecture(cfg: TrainConfig, student: EmbeddingNet) -> dict[str, Any]:
    return {
        "backbone": cfg.backbone,
        "pooling": "gap+gmp",
        "feature_dim": student.g.in_features,
        "embedding_dim": cfg.embedding_dim,
        "aux_dim": cfg.aux_dim,
        "image_size": cfg.image_size,
    }


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_weights(path: Path, module: torch.nn.Module) -> None:
    with atomic_path(path) as tmp:
        save_file(cpu_state(module), str(tmp), metadata={"format": "pt"})


def load_weights(path: Path, module: torch.nn.Module) -> None:
    """Strict load; a mismatch says which keys differ instead of a torch traceback."""
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise StmlError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape differs", wrong),
        ):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
        raise StmlError(
            f"{path}: weights do not match the architecture in config.json ({'; '.join(parts)})"
        )
    module.load_state_dict(state, strict=True)


def write_package(
    out: Path,
    student: EmbeddingNet,
    cfg: TrainConfig,
    spec: PreprocessSpec,
    name: str,
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    backbone_recipe: dict[str, Any] | None = None,
) -> ModelPackage:
    """(Re)write model.safetensors and config.json; other artifacts of an earlier export no
    longer match new weights, so they are dropped from the record. `backbone_recipe` (from
    hub_backbone_recipe) goes into the architecture record."""
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / WEIGHTS_NAME, student)
    config = new_config(
        name, {**architecture(cfg, student), **(backbone_recipe or {})}, spec, training
    )
    if metrics:
        config["metrics"] = metrics
    package = ModelPackage(out, config)
    package.record_artifact(WEIGHTS_NAME, kind="weights", format="safetensors")
    return package


def train_config_of(package: ModelPackage) -> TrainConfig:
    hyper = package.config.get("training", {}).get("hyperparameters")
    if not hyper:
        raise StmlError(f"{package.root}: config.json has no training.hyperparameters")
    return TrainConfig.from_dict(hyper)


def load_student(package: ModelPackage, device: torch.device | str = "cpu") -> EmbeddingNet:
    """The trained student of a package (no download: the backbone is built without pretrained
    weights, then the package's weights are loaded strictly)."""
    cfg = train_config_of(package)
    recorded = package.config.get("architecture", {})
    recipe = {k: recorded[k] for k in HUB_RECIPE_KEYS if k in recorded} or None
    student, spec = build_student(cfg, pretrained=False, recipe=recipe)
    load_weights(package.path(WEIGHTS_NAME), student)
    _check_config_agrees(package, architecture(cfg, student), spec)
    return student.to(device).eval()


def _check_config_agrees(
    package: ModelPackage, built: dict[str, Any], spec: PreprocessSpec
) -> None:
    """config.json's architecture and preprocessing describe the network the weights load into
    (exported graphs and the edge runtime trust them); a hand-edited config would otherwise
    export silently wrong metadata."""
    recorded = package.config.get("architecture", {})
    wrong = [f"architecture.{k} {recorded.get(k)!r} (the network has {v!r})"
             for k, v in built.items() if recorded.get(k) != v]  # fmt: skip
    size = package.preprocessing.image_size
    if size != spec.image_size:
        wrong.append(f"preprocessing.image_size {size} (the network has {spec.image_size})")
    if wrong:
        raise StmlError(
            f"{package.root / 'config.json'} does not match its weights and hyper-parameters: "
            + "; ".join(wrong)
        )
