"""A package written by stml 0.1.0 (tests/data/package-0.1.0: test_resnet trained one epoch on
digits, exported fp32 + int8, eval metrics recorded) still loads, runs on the edge runtime and
rebuilds its torch network, bit for bit where the format allows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def test_old_package_loads_and_verifies(old_package: Path) -> None:
    from stml_deploy.package import ModelPackage

    package = ModelPackage.load(old_package, verify=True)
    assert package.embedding_dim == 16
    assert package.preprocessing.image_size == 32
    assert set(package.artifacts) >= {
        "model.safetensors",
        "onnx/model.onnx",
        "onnx/model.int8.onnx",
    }


def test_old_package_embeds_its_golden_set_on_the_edge(old_package: Path) -> None:
    from stml_deploy.embedder import Embedder
    from stml_deploy.parity_files import load_golden

    golden = load_golden(old_package / "parity" / "golden.npz")
    with Embedder.from_package(old_package, backend="onnx", precision="fp32") as embedder:
        out = embedder.embed_pixels(golden["pixels"])
    assert np.abs(out - golden["embedding"]).max() < 1e-4


def test_old_package_rebuilds_its_torch_network(old_package: Path) -> None:
    import torch

    from stml_deploy.package import ModelPackage
    from stml_deploy.parity_files import load_golden
    from training.package_io import load_student

    golden = load_golden(old_package / "parity" / "golden.npz")
    net = load_student(ModelPackage.load(old_package))
    with torch.inference_mode():
        out = net.embed(torch.from_numpy(golden["pixels"])).numpy()
    assert np.abs(out - golden["embedding"]).max() < 1e-5


def test_saving_an_old_package_keeps_every_field(old_package: Path) -> None:
    """Loading and saving rewrites config.json with the same content (key order aside)."""
    from stml_deploy.package import ModelPackage

    before = json.loads((old_package / "config.json").read_text())
    ModelPackage.load(old_package).save()
    assert json.loads((old_package / "config.json").read_text()) == before
