"""The networks, the package format (hashes, strict weights) and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from stml_deploy.atomic import atomic_directory, atomic_path, atomic_write_json
from stml_deploy.config import TrainingRecord
from stml_deploy.errors import StmlError
from stml_deploy.package import ModelPackage
from stml_deploy.preprocess import PreprocessSpec
from training.config import TrainConfig, build_config
from training.model import make_teacher
from training.package_io import architecture_of, build_student, load_student, write_package

TINY = TrainConfig(
    backbone="test_resnet", pretrained=False, embedding_dim=16, aux_dim=32, image_size=32, resize=32
)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit", "test_mambaout", "googlenet"])
def test_student_shapes_for_maps_tokens_and_nhwc(backbone: str) -> None:
    cfg = TrainConfig(
        backbone=backbone, pretrained=False, embedding_dim=16, aux_dim=32, image_size=32, resize=32
    )
    torch.manual_seed(0)
    student, _ = build_student(cfg)
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    f, g = student(pixels)
    assert f.shape == (3, 16) and g.shape == (3, 32)
    emb = student.embed(pixels)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    teacher = make_teacher(student)
    assert teacher.f is None and not any(p.requires_grad for p in teacher.parameters())
    student.eval()
    assert torch.equal(teacher(pixels)[1], student(pixels)[1])  # starts as an exact copy


def test_heads_are_orthogonal() -> None:
    student, _ = build_student(TINY)
    w = student.g.weight  # [32, feat]: rows orthonormal when out <= in, else columns
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)
    assert float(student.g.bias.detach().abs().max()) == 0.0


def test_recipes_set_paper_values_and_options_win() -> None:
    sop = build_config("sop", {})
    assert (sop.neighbours, sop.delta, sop.momentum, sop.effective_head_lr, sop.backbone) == (
        2,
        0.9,
        0.9,
        1e-2,
        "googlenet",
    )
    assert build_config("cub", {"delta": 0.5}).delta == 0.5
    assert build_config("cub", {}).topk == 10


def _write(out: Path, student: torch.nn.Module, spec: PreprocessSpec) -> ModelPackage:
    record = TrainingRecord(TINY.to_dict(), None, epochs_done=0, complete=False)
    return write_package(out, student, architecture_of(TINY, student), spec, "tiny", record)


def test_the_network_is_rebuilt_from_the_architecture_not_the_hyperparameters(
    tmp_path: Path,
) -> None:
    """The training record is history: editing it changes nothing about the network."""
    student, spec = build_student(TINY)
    package = _write(tmp_path / "pkg", student, spec)
    config = json.loads((package.root / "config.json").read_text())
    config["training"]["hyperparameters"].update(embedding_dim=64, backbone="resnet50")
    (package.root / "config.json").write_text(json.dumps(config))
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    loaded = load_student(ModelPackage.load(package.root))
    assert torch.equal(loaded.embed(pixels), student.eval().embed(pixels))


def test_package_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student, spec = build_student(TINY)
    package = _write(tmp_path / "pkg", student, spec)
    loaded = load_student(ModelPackage.load(package.root))
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(loaded.embed(pixels), student.eval().embed(pixels))
    weights = package.root / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StmlError, match="sha256 mismatch"):
        ModelPackage.load(package.root)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    student, spec = build_student(TINY)
    package = _write(tmp_path / "pkg", student, spec)
    config = json.loads((package.root / "config.json").read_text())
    config["architecture"]["embedding_dim"] = 64  # config now says f has 64 outputs
    (package.root / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        StmlError, match=r"weights do not match .*shape differs: f\.bias, f\.weight"
    ):
        load_student(ModelPackage.load(package.root))


def test_atomic_file_keeps_old_content_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["index.json"]  # no temporary left behind


def test_atomic_directory_swaps_whole_folders(tmp_path: Path) -> None:
    target = tmp_path / "gallery.idx"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("new, half written")
        raise RuntimeError("interrupted")
    assert (target / "a").read_text() == "old"
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(os.listdir(target)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["gallery.idx"]
