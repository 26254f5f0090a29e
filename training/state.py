"""Resumable training state, kept in DIR/train_state/ beside the package: student and teacher
weights (safetensors), optimizer + scheduler state (torch.save, loaded with
weights_only=True), and progress.json. The folder is replaced atomically after every epoch,
so a crash leaves the last complete epoch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stml_deploy.atomic import atomic_directory, atomic_write_json, disk_errors, recover_directory
from stml_deploy.console import warn
from stml_deploy.errors import PackageError, StmlError
from stml_deploy.package import STATE_DIR
from training.config import TrainConfig
from training.package_io import load_weights, save_weights


@dataclass
class Progress:
    epochs_done: int
    global_step: int
    config: dict[str, Any]
    data: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)  # source indices found unreadable
    supervision: dict[str, Any] | None = None  # semi-supervised runs: SupervisionRecord


def state_dir(out: Path) -> Path:
    return out / STATE_DIR


def _saved_state(out: Path) -> Path:
    """The state folder to read, restored first when a kill cut its last swap in half."""
    folder = state_dir(out)
    restored = recover_directory(folder)
    if restored is not None:
        warn(f"{folder}: restored from {restored.name}, left by an interrupted save")
    return folder


def save_state(
    out: Path,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
) -> None:
    with atomic_directory(state_dir(out)) as tmp:
        save_weights(tmp / "student.safetensors", student)
        save_weights(tmp / "teacher.safetensors", teacher)
        with disk_errors(state_dir(out) / "optimizer.pt"):  # torch.save raises RuntimeError
            torch.save(
                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                tmp / "optimizer.pt",
            )
        atomic_write_json(tmp / "progress.json", progress.__dict__)


def read_progress(out: Path) -> Progress:
    path = _saved_state(out) / "progress.json"
    if not path.is_file():
        raise PackageError(f"{out}: nothing to resume (no {STATE_DIR}/progress.json)", path)
    try:
        return Progress(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: damaged training state ({exc})", path) from None


def load_networks(out: Path, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    folder = _saved_state(out)
    load_weights(folder / "student.safetensors", student)
    load_weights(folder / "teacher.safetensors", teacher)


def load_optimization(
    out: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    folder = _saved_state(out)
    try:
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of many kinds: report, do not trace
        raise PackageError(
            f"{folder / 'optimizer.pt'}: damaged training state ({exc})", folder / "optimizer.pt"
        ) from None
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])


def resume_config(out: Path, recipe: str | None, given: dict[str, Any]) -> TrainConfig:
    """The saved run's options; options given again must agree with them."""
    saved = TrainConfig.from_dict(read_progress(out).config)
    values = saved.to_dict()
    differs = sorted(k for k, v in given.items() if v is not None and values.get(k) != v)
    if recipe is not None and recipe != saved.recipe:
        differs.insert(0, "recipe")
    if differs:
        raise StmlError(
            f"{out}: --resume continues the saved run, whose options differ in: "
            f"{', '.join(differs)}; drop them (or start anew with --overwrite)"
        )
    return saved
