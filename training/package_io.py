"""Model <-> model package: build the student a config describes, write its weights
(safetensors, never pickle) and config.json, and load them back with strict key matching."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from stml_deploy.atomic import atomic_path
from stml_deploy.config import Architecture, MetricsRecord, PackageConfig, TrainingRecord
from stml_deploy.errors import PackageError
from stml_deploy.package import WEIGHTS_NAME, ModelPackage
from stml_deploy.preprocess import PreprocessSpec
from training.backbones import create_backbone, hub_backbone_recipe
from training.config import TrainConfig
from training.model import EmbeddingNet, resolve_pooling


def build_student(
    cfg: TrainConfig, pretrained: bool | None = None
) -> tuple[EmbeddingNet, PreprocessSpec]:
    """The student network a training configuration asks for, and the preprocessing its
    backbone expects."""
    backbone = create_backbone(
        cfg.backbone, cfg.pretrained if pretrained is None else pretrained, cfg.image_size
    )
    pooling = resolve_pooling(cfg.pooling, backbone, repr(cfg.backbone))
    spec = PreprocessSpec(
        image_size=cfg.image_size,
        resize=cfg.resize_side,
        interpolation=backbone.interpolation,
        mean=backbone.mean,
        std=backbone.std,
    )
    return EmbeddingNet(backbone, cfg.embedding_dim, cfg.aux_dim, pooling=pooling), spec


def architecture_of(cfg: TrainConfig, student: EmbeddingNet) -> Architecture:
    """What config.json records to rebuild `student` without the training options (an
    hf-hub: backbone adds its timm architecture, read once from the Hub cache)."""
    recipe = hub_backbone_recipe(cfg.backbone) or {}
    return Architecture(
        backbone=cfg.backbone,
        embedding_dim=cfg.embedding_dim,
        aux_dim=cfg.aux_dim,
        image_size=cfg.image_size,
        feature_dim=student.g.in_features,
        pooling=student.pooling,  # resolved: "auto" never reaches config.json
        timm_architecture=recipe.get("timm_architecture"),
        timm_model_args=recipe.get("timm_model_args"),
    )


def build_network(arch: Architecture) -> EmbeddingNet:
    """The network an architecture record describes, randomly initialised (no download: an
    hf-hub: backbone is rebuilt from its recorded timm architecture)."""
    recipe = (
        {"timm_architecture": arch.timm_architecture, "timm_model_args": arch.timm_model_args}
        if arch.timm_architecture
        else None
    )
    backbone = create_backbone(arch.backbone, False, arch.image_size, recipe)
    # checked again here: a hand-edited config must not pool a CNN by a class token
    pooling = resolve_pooling(arch.pooling, backbone, repr(arch.backbone))
    return EmbeddingNet(
        backbone,
        arch.embedding_dim,
        arch.aux_dim,
        pooling=pooling,
        pool_prefix_tokens=arch.pool_prefix_tokens,
    )


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
        raise PackageError(f"{path}: not a readable safetensors file ({exc})", path) from None
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
        raise PackageError(
            f"{path}: weights do not match the architecture in config.json ({'; '.join(parts)})",
            path,
        )
    module.load_state_dict(state, strict=True)


def write_package(
    out: Path,
    student: EmbeddingNet,
    architecture: Architecture,
    spec: PreprocessSpec,
    name: str,
    training: TrainingRecord,
    metrics: dict[str, MetricsRecord] | None = None,
) -> ModelPackage:
    """(Re)write model.safetensors and config.json; other artifacts of an earlier export no
    longer match new weights, so they are dropped from the record."""
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / WEIGHTS_NAME, student)
    config = PackageConfig(name, architecture, spec, training, dict(metrics or {}))
    package = ModelPackage(out, config)
    package.record_artifact(WEIGHTS_NAME, kind="weights", format="safetensors")
    return package


def train_config_of(package: ModelPackage) -> TrainConfig:
    """The options a package was trained with (to continue training from it)."""
    training = package.config.training
    if training is None or not training.hyperparameters:
        raise PackageError(
            f"{package.root}: config.json has no training.hyperparameters", package.root
        )
    return TrainConfig.from_dict(training.hyperparameters)


def load_student(package: ModelPackage, device: torch.device | str = "cpu") -> EmbeddingNet:
    """The trained student of a package, rebuilt from its architecture record (no download),
    its weights loaded strictly."""
    arch = package.config.architecture
    student = build_network(arch)
    load_weights(package.path(WEIGHTS_NAME), student)
    _check_config_agrees(package, student)
    return student.to(device).eval()


def _check_config_agrees(package: ModelPackage, student: EmbeddingNet) -> None:
    """config.json's architecture and preprocessing describe the network the weights load into
    (exported graphs and the edge runtime trust them); a hand-edited config would otherwise
    export silently wrong metadata."""
    arch = package.config.architecture
    wrong = []
    if student.g.in_features != arch.feature_dim:
        wrong.append(
            f"architecture.feature_dim {arch.feature_dim} (the network has {student.g.in_features})"
        )
    size = package.preprocessing.image_size
    if size != arch.image_size:
        wrong.append(
            f"preprocessing.image_size {size} (architecture.image_size is {arch.image_size})"
        )
    if wrong:
        raise PackageError(
            f"{package.root / 'config.json'} does not match its weights: " + "; ".join(wrong),
            package.root / "config.json",
        )
