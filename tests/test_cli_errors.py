"""User mistakes give one readable line and a non-zero exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_TRAIN, one_line_error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["train", "/no/such/folder", "--out", "x"],
            "neither an existing folder nor a known dataset",
        ),
        (["train", "imagenet-42", "--out", "x"], "neither an existing folder nor a known dataset"),
        (
            [
                "train",
                "digits",
                "--out",
                "x",
                "--backbone",
                "resnet_does_not_exist",
                "--no-pretrained",
            ],
            "unknown backbone",
        ),
        (["train", "digits", "--out", "x", "--epochs", "many"], "Invalid value for '--epochs'"),
        (["train", "digits", "--out", "x", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "digits", "--out", "x", "--recipe", "imagenet"], "unknown recipe"),
        (["train", "digits", "--out", "x", "--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["train", "digits", "--out", "x", "--device", "tpu"], "unknown device"),
        (
            ["train", "digits", "--out", "x", "--amp", "fp16", "--device", "cpu"],
            "--amp fp16 needs a CUDA device",
        ),
        (["train", "digits", "--out", "x", "--weight-decay", "-1"], "--weight-decay must be"),
        (
            [
                "train",
                "digits",
                "--out",
                "x",
                "--max-images",
                "30",
                *TINY_TRAIN[:-4],
                "--batch-size",
                "100000",
            ],
            "--batch-size 100000 exceeds the 30 readable training images",
        ),
        (["train", "digits"], "Missing option '--out'"),
        (["train", "digits", "--out", "x", "--bogus"], "No such option: --bogus"),
        (["eval", "/no/such/package", "digits"], "not a model package folder"),
        (["eval", "/tmp", "digits"], "not a model package (no config.json)"),
        (["frobnicate"], "No such command"),
    ],
)
def test_user_mistakes_are_one_line(
    cli_main, tmp_path: Path, monkeypatch, args: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line_error(cli_main(*args))
    assert expected in line


def test_eval_of_unlabelled_folder(cli_main, tmp_path: Path, real_photos) -> None:
    """A package is needed first; a labelled set is needed for eval: both explained."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in real_photos:
        shutil.copy(photo, folder / photo.name)
    result = cli_main(
        "train",
        str(folder),
        "--out",
        str(tmp_path / "pkg"),
        "--epochs",
        "1",
        *TINY_TRAIN,
        "--batch-size",
        "2",
        "--neighbours",
        "2",
    )
    assert result.code == 0, result.err
    line = one_line_error(cli_main("eval", str(tmp_path / "pkg"), str(folder)))
    assert "needs labels" in line


def test_help_is_instant_and_lists_commands(cli_main) -> None:
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "--help"],
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - started
    assert proc.returncode == 0 and "train" in proc.stdout and "eval" in proc.stdout
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, cli; cli.main(['--help']); print(sorted(m for m in ('torch', 'onnxruntime', 'faiss', 'timm') if m in sys.modules))"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert heavy.stdout.strip().endswith("[]"), heavy.stdout
    assert took < 30  # generous: only guards against importing torch at start-up
