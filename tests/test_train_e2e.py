"""End to end on CPU: `stml train` writes a package, `stml eval --json` reads it, an
interrupted run resumed with --resume ends with bit-identical weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import TINY_TRAIN, run_cli

pytestmark = pytest.mark.slow
TRAIN_DATA = ["digits", "--max-images", "240"]


def weights(path: Path) -> dict:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "pkg"
    result = run_cli("train", *TRAIN_DATA, "--out", str(out), "--epochs", "2", *TINY_TRAIN)
    assert result.code == 0, result.err
    return out


def test_package_has_config_safetensors_and_its_history(trained: Path) -> None:
    published = sorted(p.name for p in trained.iterdir() if p.name != "train_state")
    assert published == ["config.json", "curves.png", "history.csv", "model.safetensors"]
    rows = (trained / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (trained / "curves.png").read_bytes().startswith(b"\x89PNG")
    config = json.loads((trained / "config.json").read_text())
    assert config["training"]["epochs_done"] == 2 and config["training"]["complete"]
    assert config["architecture"]["embedding_dim"] == 16
    assert config["preprocessing"]["image_size"] == 32
    assert len(config["training"]["history"]) == 2
    from stml_deploy.package import ModelPackage, sha256_file

    assert config["artifacts"]["model.safetensors"]["sha256"] == sha256_file(
        trained / "model.safetensors"
    )
    package = ModelPackage.load(trained)  # hashes verify
    assert {"history.csv", "curves.png"} <= set(package.artifacts)  # pushed with the package
    # safetensors: 8-byte little-endian header length, then a JSON header (no pickle opcodes)
    raw = (trained / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])
    assert "f.weight" in weights(trained / "model.safetensors")


def test_eval_json(trained: Path) -> None:
    result = run_cli("eval", str(trained), "digits", "--split", "test", "--json", "--workers", "0")
    assert result.code == 0, result.err
    metrics = json.loads(result.out)
    for key in (
        "recall_at_1",
        "recall_at_2",
        "recall_at_4",
        "recall_at_8",
        "map_at_r",
        "nmi",
        "num_queries",
    ):
        assert key in metrics
    from training.named_datasets import resolve_source

    assert metrics["num_queries"] == len(resolve_source("digits", None, "test"))  # all of 5-9
    assert (
        0.2
        < metrics["recall_at_1"]
        <= metrics["recall_at_2"]
        <= metrics["recall_at_4"]
        <= metrics["recall_at_8"]
        <= 1.0
    )


def test_eval_record_feeds_the_model_card_and_json_stays_valid(
    trained: Path, tmp_path: Path
) -> None:
    import shutil

    from stml_deploy.model_card import render_card
    from stml_deploy.package import ModelPackage

    package = tmp_path / "pkg"
    shutil.copytree(trained, package)
    result = run_cli("eval", str(package), "digits", "--json", "--workers", "0", "--record")
    assert result.code == 0, result.err
    recorded = json.loads((package / "config.json").read_text())["metrics"]["test"]
    assert recorded["recall_at_1"] == json.loads(result.out)["recall_at_1"]
    assert recorded["data"]["name"] == "digits (test)"
    card = render_card(ModelPackage.load(package), "user/tiny")
    assert "model-index" in card and f"value: {round(recorded['recall_at_1'], 4)}" in card
    # 3 images of 3 classes: no query has a match, MAP@R is undefined -> null, not NaN
    tiny = run_cli("eval", str(package), "digits", "--json", "--workers", "0", "--max-images", "3")
    assert tiny.code == 0, tiny.err
    metrics = json.loads(tiny.out)
    assert metrics["queries_without_match"] == 3 and metrics["recall_at_1"] == 0.0
    assert metrics["map_at_r"] is None


def test_resume_after_interruption_gives_identical_weights(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    first = run_cli(
        "train", *TRAIN_DATA, "--out", str(out), "--epochs", "2", "--stop-after", "1", *TINY_TRAIN
    )
    assert first.code == 0, first.err
    assert json.loads((out / "config.json").read_text())["training"]["epochs_done"] == 1
    # stderr is a pipe here: no progress bar drawing, one summary line per epoch instead
    assert "━" not in first.err and "epoch 1/2: loss" in first.err
    # resume with a loader worker process: augmentations are seeded per sample, so the
    # result cannot depend on how many workers load the data
    resumed = run_cli("train", *TRAIN_DATA, "--out", str(out), "--resume", "--workers", "1")
    assert resumed.code == 0, resumed.err
    assert "resuming" in resumed.err
    a, b = weights(trained / "model.safetensors"), weights(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)


def test_existing_package_is_not_overwritten_by_accident(trained: Path) -> None:
    before = (trained / "model.safetensors").read_bytes()
    result = run_cli("train", *TRAIN_DATA, "--out", str(trained), "--epochs", "1", *TINY_TRAIN)
    assert result.code == 1 and "already holds a model package" in result.err
    assert (trained / "model.safetensors").read_bytes() == before


def test_resume_refuses_changed_options(trained: Path) -> None:
    result = run_cli("train", *TRAIN_DATA, "--out", str(trained), "--resume", "--lr", "0.5")
    assert result.code == 1 and "differ in: lr" in result.err


def test_damaged_images_are_skipped_or_stop_the_run_under_strict(
    digit_folder: Path, tmp_path: Path
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digit_folder, data)
    good = next(data.rglob("*.png")).read_bytes()
    (data / "class_5" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "class_6" / "empty.jpg").write_bytes(b"")
    args = ["train", str(data), "--epochs", "1", *TINY_TRAIN]
    result = run_cli(*args, "--out", str(tmp_path / "pkg"))
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert any("truncated.png" in w for w in warnings) and any("empty.jpg" in w for w in warnings)
    dropped = json.loads((tmp_path / "pkg" / "train_state" / "progress.json").read_text())[
        "dropped"
    ]
    assert len(dropped) == 2
    strict = run_cli(*args, "--out", str(tmp_path / "strict"), "--strict")
    assert (
        strict.code == 1
        and "error: cannot read image" in strict.err
        and "Traceback" not in strict.err
    )
    assert not (tmp_path / "strict" / "model.safetensors").exists()


def test_resume_on_a_folder_checks_the_files_not_the_spelling(
    digit_folder: Path, tmp_path: Path
) -> None:
    import shutil

    data = tmp_path / "images"
    shutil.copytree(digit_folder, data)
    out = tmp_path / "pkg"
    tiny = [*TINY_TRAIN[:-4], "--batch-size", "20", "--workers", "0"]
    first = run_cli(
        "train", str(data), "--out", str(out), "--epochs", "3", "--stop-after", "1", *tiny
    )
    assert first.code == 0, first.err
    spelled_otherwise = str(data / ".." / "images")
    second = run_cli("train", spelled_otherwise, "--out", str(out), "--resume", "--stop-after", "1")
    assert second.code == 0 and "resuming" in second.err, second.err
    renamed = next(data.rglob("*.png"))
    renamed.rename(renamed.with_name("renamed.png"))
    refused = run_cli("train", str(data), "--out", str(out), "--resume")
    assert refused.code == 1 and "files in" in refused.err and "changed" in refused.err


def test_resume_repairs_a_package_cut_between_weights_and_config(
    trained: Path, tmp_path: Path
) -> None:
    import shutil

    from stml_deploy.package import ModelPackage

    out = tmp_path / "pkg"
    shutil.copytree(trained, out)
    config = json.loads((out / "config.json").read_text())
    config["artifacts"]["model.safetensors"]["sha256"] = "0" * 64  # the older config.json
    (out / "config.json").write_text(json.dumps(config))
    result = run_cli("train", *TRAIN_DATA, "--out", str(out), "--resume")
    assert result.code == 0 and "rewriting the package" in result.err, result.err
    ModelPackage.load(out)  # verifies again
    a, b = weights(trained / "model.safetensors"), weights(out / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)
