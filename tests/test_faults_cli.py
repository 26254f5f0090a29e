"""Faults a user meets on the command line: Ctrl-C (a real SIGINT to a real `stml` process),
damaged indexes, wrong option values, and results that used to be silently wrong."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import OLD_PACKAGE, ROOT, one_line_error, run_cli


@pytest.fixture
def package(old_package: Path) -> Path:
    return old_package


def _gallery(folder: Path, count: int = 12) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(count):
        label = int(digits.target[i])
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(folder / str(label) / f"{i}.png")
    return folder


def _interrupt(args: list[str], marker: str, timeout: float = 120) -> tuple[int, str]:
    """Start `stml ARGS`, wait until its stderr shows `marker`, send SIGINT; (code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    time.sleep(0.5)  # inside the work that follows the marker line
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(seen) + rest


def test_ctrl_c_in_export_exits_130_with_one_line_and_keeps_the_package(package: Path) -> None:
    from stml_deploy.package import ModelPackage

    onnx = {
        rel: a["sha256"]
        for rel, a in json.loads((package / "config.json").read_text())["artifacts"].items()
        if rel.startswith("onnx/")
    }
    code, err = _interrupt(
        ["export", str(package), "--parity-data", "digits", "--calib", "digits"],
        "parity images",
    )
    assert code == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)"
    kept = ModelPackage.load(package, verify=True)  # every recorded artifact still whole
    assert {rel: kept.artifacts[rel].sha256 for rel in onnx} == onnx  # the old variants stay
    assert not [p for p in package.rglob("*") if ".tmp-" in p.name]


def test_ctrl_c_in_training_before_its_first_epoch_exits_130(tmp_path: Path) -> None:
    code, err = _interrupt(
        ["train", "digits", "--out", str(tmp_path / "run"), "--backbone", "test_resnet",
         "--no-pretrained", "--image-size", "32", "--resize", "32", "--workers", "0",
         "--batch-size", "40", "--epochs", "50"],
        "training on",
    )  # fmt: skip
    assert code == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted")


def test_damaged_index_files_are_one_line_naming_the_file(package: Path, tmp_path: Path) -> None:
    index = tmp_path / "gallery.idx"
    built = run_cli(
        "index", "build", str(package), str(_gallery(tmp_path / "g")), "--out", str(index)
    )
    assert built.code == 0, built.err
    pristine = tmp_path / "pristine.idx"
    shutil.copytree(index, pristine)

    def damaged(edit) -> str:  # type: ignore[no-untyped-def]
        shutil.rmtree(index)
        shutil.copytree(pristine, index)
        edit()
        return one_line_error(run_cli("index", "info", str(index)))

    vectors = index / "vectors.npy"
    line = damaged(lambda: vectors.write_bytes(vectors.read_bytes()[:200]))
    assert "vectors.npy" in line and "truncated" in line

    def nan_row() -> None:
        data = np.load(vectors)
        data[3] = np.nan
        np.save(vectors, data)

    line = damaged(nan_row)
    assert "vectors.npy: damaged index (row 3 is not finite" in line

    def names_as_text() -> None:
        meta = json.loads((index / "index.json").read_text())
        meta["class_names"] = "0123456789"
        (index / "index.json").write_text(json.dumps(meta))

    assert "class_names" in damaged(names_as_text)

    def items_not_objects() -> None:
        lines = (index / "items.jsonl").read_text().splitlines()
        lines[2] = "[1, 2]"
        (index / "items.jsonl").write_text("\n".join(lines) + "\n")

    line = damaged(items_not_objects)
    assert "items.jsonl: damaged index (line 3 is not an item" in line


def test_index_add_of_only_unreadable_images_fails_and_changes_nothing(
    package: Path, tmp_path: Path
) -> None:
    index = tmp_path / "gallery.idx"
    assert (
        run_cli(
            "index", "build", str(package), str(_gallery(tmp_path / "g")), "--out", str(index)
        ).code
        == 0
    )
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    result = run_cli("index", "add", str(index), str(broken))
    lines = [x for x in result.err.splitlines() if x.startswith("error: ")]
    assert result.code == 1 and "none of the images could be read" in lines[0]
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before


def test_search_refuses_an_index_whose_variant_was_re_exported(
    package: Path, tmp_path: Path
) -> None:
    index = tmp_path / "gallery.idx"
    gallery = _gallery(tmp_path / "g")
    assert (
        run_cli(
            "index", "build", str(package), str(gallery), "--out", str(index), "--precision", "int8"
        ).code
        == 0
    )
    meta = json.loads((index / "index.json").read_text())
    meta["model"]["onnx_sha256"] = "0" * 64  # as if onnx/model.int8.onnx had been re-exported
    (index / "index.json").write_text(json.dumps(meta))
    line = one_line_error(run_cli("search", str(index), str(gallery / "0")))
    assert "changed since the index was built" in line


def test_bench_with_an_unknown_backend_fails(package: Path) -> None:
    line = one_line_error(run_cli("bench", str(package), "--backends", "foo", "--repeats", "1"))
    assert "unknown backend foo" in line


def test_trt_without_the_fp16_variant_says_which_command_adds_it(package: Path) -> None:
    line = one_line_error(run_cli("export", str(package), "--format", "trt"))
    assert "no fp16 ONNX model" in line and "--format onnx --precision fp16" in line


def test_an_abandoned_pull_staging_folder_is_removed_by_the_next_swap(tmp_path: Path) -> None:
    from stml_deploy.atomic import atomic_directory, sibling_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    target = tmp_path / "model"
    staging = sibling_path(target, "pull")
    staging = staging.with_name(
        staging.name.replace(f"-{os.getpid()}-", f"-{dead.stdout.strip()}-")
    )
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"x" * 1000)
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert not staging.exists() and (target / "config.json").is_file()


def test_overwrite_on_a_full_disk_keeps_the_exported_package(tmp_path: Path) -> None:
    """--overwrite deletes the old ONNX / parity files only after the new weights, config and
    training state are written: when the disk fills first, the old package still loads."""
    from stml_deploy.package import ModelPackage
    from tests.conftest import TINY_TRAIN
    from tests.small_disk import fill, small_tmpfs

    with small_tmpfs(tmp_path / "disk", "12m") as disk:
        package = disk / "pkg"
        shutil.copytree(OLD_PACKAGE, package)
        fill(disk, leave=2_000_000)  # room for new weights (1.5 MB), not for the state (6 MB)
        result = run_cli(
            "train", "digits", "--max-images", "80", "--out", str(package), "--overwrite",
            "--epochs", "1", *TINY_TRAIN,
        )  # fmt: skip
        last = result.err.strip().splitlines()[-1]
        assert result.code == 1 and "Traceback" not in result.err
        assert last.startswith("error: cannot write ") and "No space left" in last
        kept = ModelPackage.load(package, verify=True)
        assert (package / "onnx" / "model.onnx").is_file() and "onnx/model.onnx" in kept.artifacts


def test_pretrained_backbone_without_the_hub_fails_at_once_naming_the_way_out(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    result = run_cli(
        "train", str(_gallery(tmp_path / "g")), "--out", str(tmp_path / "run"),
        "--backbone", "resnet18", "--pretrained", "--batch-size", "8", "--neighbours", "4",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    line = one_line_error(result)
    assert "cannot reach the Hugging Face Hub" in line
    assert "--no-pretrained" in line and "HF_HUB_OFFLINE=1" in line
    assert time.monotonic() - started < 60  # the client's retries took about a minute
