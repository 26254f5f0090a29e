"""The edge path runs where `import torch` fails: load, embed, index, search, bench, info, and
`stml export --format trt` (which then fails only for the missing TensorRT / GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ModuleNotFoundError(
                f"No module named {name!r} (blocked: the edge has no torch)", name=name
            )
        return None
sys.meta_path.insert(0, NoTorch())
import cli
code = cli.main()
assert not any(m.split(".")[0] == "torch" for m in sys.modules), "torch was imported"
sys.exit(code)
"""


def edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_blocker_blocks() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH.replace("import cli", "import torch"), "x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "blocked: the edge has no torch" in result.stderr


def test_edge_commands_without_torch(
    exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    package = str(exported_package)
    import shutil

    shutil.copy(next(digit_folder.rglob("*.png")), tmp_path / "extra.png")
    steps = [
        ("info", package, "--json"),
        (
            "embed",
            package,
            str(digit_folder),
            "--out",
            str(tmp_path / "e.npy"),
            "--precision",
            "int8",
        ),
        (
            "index",
            "build",
            package,
            str(digit_folder),
            "--out",
            str(tmp_path / "idx"),
            "--validate",
        ),
        (
            "search",
            str(tmp_path / "idx"),
            str(next(digit_folder.rglob("*.png"))),
            "-k",
            "3",
            "--json",
            "--grid",
            str(tmp_path / "g.png"),
        ),
        ("bench", package, "--backends", "onnx", "--batch-sizes", "1", "--repeats", "2", "--json"),
        ("index", "add", str(tmp_path / "idx"), str(tmp_path / "extra.png")),
        ("index", "info", str(tmp_path / "idx")),
    ]
    for step in steps:
        result = edge(*step)
        assert result.returncode == 0, (step, result.stderr)
    assert json.loads(edge("info", package, "--json").stdout)["kind"] == "model package"
    assert (tmp_path / "g.png").is_file() and (tmp_path / "e.npy").is_file()
    trt = edge("export", package, "--format", "trt", "--precision", "fp16")
    assert trt.returncode == 2, trt.stderr
    lines = [line for line in trt.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "torch" not in lines[0]
    # training-side commands say which extra is missing, in one line, exit 2
    for command in (("eval", package, "digits"), ("train", "digits", "--out", str(tmp_path / "t"))):
        result = edge(*command)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, (command, result.stderr)
        assert "needs torch" in lines[0] and "pip install 'stml[train]'" in lines[0]
