"""Shared fixtures: real images (scikit-learn's bundled photos and digits), a tiny labelled
image folder, and an in-process runner for the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# The tiny from-scratch setting every CPU training test uses (a timm test model, 32 px).
TINY_TRAIN = [
    "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--resize", "32",
    "--embedding-dim", "16", "--aux-dim", "32", "--batch-size", "40", "--neighbours", "4",
    "--lr", "3e-3", "--momentum", "0.9", "--workers", "0",
]  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where torch or cuda-python sees a CUDA device."""
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _has_cuda() -> bool:
    try:
        from stml_deploy.cuda_device import current_device

        current_device()  # cuda-python first, torch as a fallback
        return True
    except Exception:  # MissingDependencyError, or a CUDA error from the bindings
        return False


@pytest.fixture(scope="session")
def real_photos() -> list[Path]:
    """scikit-learn's two bundled JPEG photographs (china.jpg, flower.jpg; 640x427)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    photos = sorted(folder.glob("*.jpg"))
    assert len(photos) == 2
    return photos


def digit_images(classes: range, per_class: int, size: int = 40) -> list[tuple[int, Image.Image]]:
    """Real handwritten digits (scikit-learn), upscaled to `size` px RGB."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    out = []
    for label in classes:
        picks = np.flatnonzero(bunch.target == label)[:per_class]
        for i in picks:
            grey = np.rint(bunch.images[i] * 255 / 16).astype(np.uint8)
            img = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR)
            out.append((label, img.convert("RGB")))
    return out


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder: digits 5-9 as PNG files in one sub-folder per class."""
    root = tmp_path_factory.mktemp("digits")
    for n, (label, img) in enumerate(digit_images(range(5, 10), 12)):
        (root / f"class_{label}").mkdir(exist_ok=True)
        img.save(root / f"class_{label}" / f"{n:04d}.png")
    return root


# a package written by stml 0.1.0, before the typed config: it must keep loading
OLD_PACKAGE = ROOT / "tests" / "data" / "package-0.1.0"


@pytest.fixture
def old_package(tmp_path: Path) -> Path:
    """A writable copy of OLD_PACKAGE."""
    import shutil

    out = tmp_path / "pkg"
    shutil.copytree(OLD_PACKAGE, out)
    return out


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """Run `stml` in a fresh interpreter, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def one_line_error(result: CliResult) -> str:
    """The single `error: ...` line of a failed command (only warnings naming skipped files
    may precede it); no traceback, non-zero exit."""
    lines = [
        line for line in result.err.splitlines() if line.strip() and not line.startswith("warning:")
    ]
    assert result.code != 0 and "Traceback" not in result.err and len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def cli_main(capsys: pytest.CaptureFixture[str]):
    """Run `stml` in this process (fast; for argument and error handling)."""
    import cli

    def invoke(*args: str) -> CliResult:
        code = cli.main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


EXPORT_DATA = ["--calib", "digits", "--calib-size", "64", "--parity-data", "digits", "--parity-size", "400"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 4 epochs on digits 0-4 (treat as read-only; copy to modify)."""
    out = tmp_path_factory.mktemp("tiny") / "pkg"
    result = run_cli(
        "train", "digits", "--max-images", "240", "--out", str(out), "--epochs", "4", *TINY_TRAIN
    )
    assert result.code == 0, result.err
    return out


@pytest.fixture(scope="session")
def exported_package(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_package with fp32, fp16 and int8 (cpu) ONNX exports (read-only; copy to modify)."""
    import shutil

    out = tmp_path_factory.mktemp("exported") / "pkg"
    shutil.copytree(tiny_package, out)
    result = run_cli("export", str(out), "--format", "onnx", *EXPORT_DATA)
    assert result.code == 0, result.err + result.out
    return out
