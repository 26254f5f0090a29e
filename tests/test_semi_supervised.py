"""Semi-supervised STML (issue 12): the labelled set, labelled batch groups, the ground truth
in W, the supervised loss, the package record, and an end-to-end run with --resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from stml_deploy.errors import StmlError
from tests.conftest import TINY_TRAIN, digit_images, one_line_error, run_cli
from training.config import TrainConfig
from training.sampler import NeighbourBatchSampler
from training.semi_supervised import (
    UNLABELLED,
    LabelledGroups,
    attach_labels,
    ground_truth_pairs,
    labelled_groups,
    stratified_fraction,
    supervised_loss,
)
from training.similarity import contextual_similarity
from training.sources import folder_source


def _save_digits(root: Path, classes: range, per_class: int, flat: bool = False) -> Path:
    for n, (label, img) in enumerate(digit_images(classes, per_class, size=32)):
        folder = root if flat else root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{label}_{n:04d}.png")
    return root


# --- the labelled set ------------------------------------------------------------------------
def test_stratified_fraction_is_seeded_per_class_and_never_empties_a_class() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 10, 3])
    chosen = stratified_fraction(labels, 0.1, seed=0)
    assert np.array_equal(chosen, stratified_fraction(labels, 0.1, seed=0))
    assert not np.array_equal(chosen, stratified_fraction(labels, 0.1, seed=1))
    assert np.all(np.diff(chosen) > 0)
    # round(0.1 x n) per class, at least one: 10, 5, 1, 1 (0.3 rounds to 0, kept at 1)
    assert np.bincount(labels[chosen]).tolist() == [10, 5, 1, 1]
    assert len(stratified_fraction(labels, 1.0, seed=0)) == len(labels)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(StmlError, match=r"--labeled-fraction must be in \(0, 1\]"):
        stratified_fraction(np.zeros(10, dtype=np.int64), fraction, seed=0)


def test_fraction_of_a_known_dataset_labels_only_that_share() -> None:
    from training.named_datasets import resolve_source

    data = resolve_source("digits").limit(240, seed=0)
    source, labelled = attach_labels(data, None, 0.1, seed=0)
    assert source is data and labelled is not None
    known = labelled.labels != UNLABELLED
    assert known.sum() == labelled.record.labelled_images == 24  # 5 classes of about 48
    assert np.array_equal(labelled.labels[known], data.labels[known])  # the true labels
    assert labelled.record.unlabelled_images == 240 - 24
    assert labelled.record.classes == 5 and labelled.record.fraction == 0.1
    assert "labels" not in labelled.record.to_json()  # counts and a fingerprint only


def test_labelled_folder_joins_data_and_an_image_in_both_is_used_once(tmp_path: Path) -> None:
    data_dir = _save_digits(tmp_path / "data", range(0, 3), 6, flat=True)
    labelled_dir = _save_digits(tmp_path / "labelled", range(3, 5), 3)
    # two of DATA's images copied (same bytes, other names) into the labelled classes
    shared = sorted(data_dir.glob("0_*.png"))[:2]
    shutil.copy(shared[0], labelled_dir / "class_3" / "copy_a.png")
    shutil.copy(shared[1], labelled_dir / "class_4" / "copy_b.png")
    data = folder_source(data_dir)
    source, labelled = attach_labels(data, labelled_dir, None, seed=0)
    assert labelled is not None
    assert len(source) == len(data) + 6  # the 6 labelled digits DATA lacks; copies not again
    assert labelled.record.in_data == 2 and labelled.record.labelled_images == 8
    assert labelled.record.unlabelled_images == len(data) - 2
    index = {p: i for i, p in enumerate(source.items)}
    # class_3 is label 0 of the labelled folder, class_4 label 1
    assert labelled.labels[index[shared[0].resolve()]] == 0
    assert labelled.labels[index[shared[1].resolve()]] == 1
    assert (labelled.labels[len(data) :] != UNLABELLED).all()
    assert source.description["added_from_labeled"] == 6


def test_a_labelled_folder_inside_data_adds_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _save_digits(data_dir / "unsorted", range(0, 3), 4, flat=True)
    _save_digits(data_dir / "labelled", range(5, 7), 3)
    data = folder_source(data_dir)
    source, labelled = attach_labels(data, data_dir / "labelled", None, seed=0)
    assert source is data and labelled.record.in_data == 6


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("flat", "needs class sub-folders"),
        ("one class", "a single class"),
        ("empty classes", "no images found"),
    ],
)
def test_bad_labelled_folders_are_one_line_errors(
    tmp_path: Path, cli_main, layout: str, message: str
) -> None:
    labelled = tmp_path / "labelled"
    if layout == "flat":
        _save_digits(labelled, range(0, 2), 3, flat=True)
    elif layout == "one class":
        _save_digits(labelled, range(0, 1), 3)
    else:
        (labelled / "class_a").mkdir(parents=True)
        (labelled / "class_b").mkdir()
    result = cli_main("train", "digits", "--out", str(tmp_path / "pkg"), "--labeled", str(labelled), *TINY_TRAIN)  # fmt: skip
    line = one_line_error(result)
    assert message in line and str(labelled) in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labeled-fraction", "0"], "must be in (0, 1]"),
        (["--labeled-fraction", "1.01"], "must be in (0, 1]"),
        (["--labeled-fraction", "0.5", "--labeled", "."], "not both"),
        (["--labeled-fraction", "0.5", "--labeled-ratio", "1.5"], "--labeled-ratio must be in"),
        (["--labeled-fraction", "0.5", "--supervised-loss", "hinge"], "--supervised-loss 'hinge'"),
    ],
)
def test_bad_options_are_one_line_errors(
    tmp_path: Path, cli_main, args: list[str], message: str
) -> None:
    result = cli_main("train", "digits", "--out", str(tmp_path / "pkg"), *args, *TINY_TRAIN)
    assert message in one_line_error(result)


def test_fraction_of_unlabelled_data_is_refused(tmp_path: Path, cli_main) -> None:
    data = _save_digits(tmp_path / "flat", range(0, 3), 4, flat=True)
    result = cli_main(
        "train", str(data), "--out", str(tmp_path / "pkg"), "--labeled-fraction", "0.5"
    )
    assert "has no labels to take a share of" in one_line_error(result)


# --- batches ---------------------------------------------------------------------------------
def test_labelled_groups_hold_one_class_of_labelled_images() -> None:
    labels = np.full(100, UNLABELLED, dtype=np.int64)
    labels[[3, 7, 11, 20, 40, 41, 42, 90]] = [0, 0, 0, 1, 1, 1, 2, 2]
    groups = LabelledGroups(labels, groups=50, size=4).draw(np.random.default_rng(0))
    assert groups.shape == (50, 4)
    assert (labels[groups] != UNLABELLED).all()
    assert (labels[groups] == labels[groups[:, :1]]).all()  # each group: its query's class
    # a query's own class has 3 (or 2) images: the other members differ from the query
    # wherever the class allows it
    assert all(groups[g, 0] not in groups[g, 1:3] for g in range(50))


def test_sampler_puts_labelled_groups_after_the_neighbour_groups() -> None:
    cfg = TrainConfig(batch_size=40, neighbours=4, labeled_ratio=0.3)
    labels = np.full(200, UNLABELLED, dtype=np.int64)
    labels[:20] = np.arange(20) % 4
    from training.semi_supervised import LabelledSet

    supervision = LabelledSet(labels, None, "test")  # type: ignore[arg-type]
    table = (np.arange(200)[:, None] + np.arange(4)[None, :]) % 200
    sampler = NeighbourBatchSampler(table, 40, seed=0)
    sampler.set_epoch(0, table, labelled_groups(supervision, np.arange(200), cfg))
    batches = [np.array([i for i, _ in b]).reshape(10, 4) for b in sampler]
    assert len(batches) == 5
    for batch in batches:
        # 10 groups, 3 of them (round(0.3 x 10)) labelled groups of one class each
        assert np.array_equal(batch[:7], table[batch[:7, 0]])
        assert (labels[batch[7:]] == labels[batch[7:, :1]]).all()
        assert (labels[batch[7:]] != UNLABELLED).all()
    again = [[i for i, _ in b] for b in sampler]  # the same epoch replays exactly
    assert again == [b.reshape(-1).tolist() for b in batches]


# --- W and the loss --------------------------------------------------------------------------
def test_w_is_the_ground_truth_on_labelled_pairs_and_the_teacher_elsewhere() -> None:
    torch.manual_seed(0)
    teacher_g = torch.randn(24, 32)
    ids = torch.arange(12).repeat(2)  # 12 images x 2 views
    image_labels = torch.tensor([0, 0, 1, 1, 2, -1, -1, -1, -1, -1, -1, -1])
    labels = image_labels[ids]
    teacher_w = contextual_similarity(teacher_g, ids, sigma=3.0, topk=8)
    w = ground_truth_pairs(teacher_w, labels)
    known = labels >= 0
    both = known[:, None] & known[None, :]
    truth = (labels[:, None] == labels[None, :]).float()
    assert torch.equal(w[both], truth[both])
    assert torch.equal(w[~both], teacher_w[~both])
    assert w[0, 1] == 1.0 and w[0, 2] == 0.0 and w[0, 12] == 1.0  # same class, other, own view
    assert 0 < both.sum() < both.numel()  # both parts are exercised
    assert not torch.equal(teacher_w[both], truth[both])  # the override changed something
    assert ground_truth_pairs(teacher_w, None) is teacher_w


def test_supervised_loss_is_zero_without_a_labelled_pair_and_trains_with_one() -> None:
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_()
    none = torch.full((8,), UNLABELLED)
    one = none.clone()
    one[3] = 2
    for labels in (none, one):
        loss = supervised_loss(f, labels, "multi-similarity")
        assert float(loss.detach()) == 0.0
        loss.backward()  # still part of the graph: backward works, adds nothing
        assert float(f.grad.abs().sum()) == 0.0
    pair = none.clone()
    pair[[1, 5, 6]] = torch.tensor([0, 0, 1])
    loss = supervised_loss(f, pair, "multi-similarity")
    assert float(loss.detach()) > 0
    loss.backward()
    grad_rows = f.grad.abs().sum(dim=1) > 0
    assert grad_rows.tolist() == [False, True, False, False, False, True, True, False]


# --- end to end ------------------------------------------------------------------------------
def _weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118


SEMI = ["digits", "--max-images", "240", "--labeled-fraction", "0.1", "--labeled-ratio", "0.3"]


@pytest.mark.slow
def test_semi_supervised_run_records_counts_and_resumes_identically(tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    result = run_cli("train", *SEMI, "--out", str(whole), "--epochs", "2", *TINY_TRAIN)
    assert result.code == 0, result.err
    config = json.loads((whole / "config.json").read_text())
    supervision = config["training"]["supervision"]
    assert supervision["labelled_images"] == 24 and supervision["classes"] == 5
    assert supervision["unlabelled_images"] == 216 and supervision["fraction"] == 0.1
    assert all(entry["supervised"] > 0 for entry in config["training"]["history"])
    assert config["training"]["hyperparameters"]["labeled_ratio"] == 0.3

    first = run_cli("train", *SEMI, "--out", str(cut), "--epochs", "2", "--stop-after", "1", *TINY_TRAIN)  # fmt: skip
    assert first.code == 0, first.err
    refused = run_cli("train", "digits", "--max-images", "240", "--out", str(cut), "--resume")
    assert refused.code == 1 and "began with 24 labelled images" in refused.err, refused.err
    assert "Traceback" not in refused.err
    resumed = run_cli("train", *SEMI, "--out", str(cut), "--resume")
    assert resumed.code == 0, resumed.err
    a, b = _weights(whole / "model.safetensors"), _weights(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    from stml_deploy.model_card import render_card
    from stml_deploy.package import ModelPackage

    card = render_card(ModelPackage.load(whole), "org/semi")
    assert "semi-supervised: 24 labelled in 5 classes" in card and "216 unlabelled" in card


@pytest.mark.slow
def test_resume_refuses_a_labelled_folder_that_changed(tmp_path: Path) -> None:
    data = _save_digits(tmp_path / "data", range(0, 5), 12, flat=True)
    labelled = _save_digits(tmp_path / "labelled", range(5, 8), 4)
    out = tmp_path / "pkg"
    args = [str(data), "--labeled", str(labelled), "--out", str(out), *TINY_TRAIN]
    first = run_cli("train", *args, "--epochs", "2", "--stop-after", "1")
    assert first.code == 0, first.err
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["supervision"]["source"] == "folder labelled"
    moved = next((labelled / "class_5").iterdir())
    moved.rename(labelled / "class_6" / moved.name)  # relabelled: same count, other class
    refused = run_cli("train", *args, "--resume")
    assert refused.code == 1 and "labelled images changed since the run began" in refused.err
    assert "Traceback" not in refused.err
