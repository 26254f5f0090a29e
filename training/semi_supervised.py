"""Semi-supervised STML (issue 12): a few labelled images among many unlabelled ones.

The labels of the training images are one int64 array over the training source (-1 =
unlabelled), built once from `--labeled DIR` (class sub-folders) or `--labeled-fraction F` (a
seeded, class-stratified share of a labelled source's own labels). In training, the label of a
batch row is looked up from its id, so labels travel wherever the ids go. Three things use them:
labelled query groups in each batch (the sampler), the ground truth in place of the teacher's
pseudo label W on pairs of labelled rows, and a supervised metric loss on the labelled rows of
the student's f embedding."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stml_deploy.config import SupervisionRecord
from stml_deploy.errors import StmlError
from training.config import SUPERVISED_LOSSES, TrainConfig
from training.losses import LossTerms
from training.sources import ImageSource, folder_source

UNLABELLED = -1


@dataclass
class LabelledSet:
    """`labels[i]` is the class of training image i, or UNLABELLED."""

    labels: np.ndarray  # int64 [len(training source)]
    record: SupervisionRecord  # counts and a fingerprint, never the labels
    origin: str  # the option that gave them, for messages

    @property
    def labelled(self) -> np.ndarray:
        return np.flatnonzero(self.labels != UNLABELLED)


def _fingerprint(labels: np.ndarray, listing: str | None) -> str:
    """Changes when any image's label changes, or the labelled folder's file list does."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    if listing is not None:
        digest.update(listing.encode())
    return digest.hexdigest()


def _record(labels: np.ndarray, origin: str, listing: str | None, **extra: object) -> LabelledSet:
    chosen = labels[labels != UNLABELLED]
    classes = len(np.unique(chosen))
    if len(chosen) == 0:
        raise StmlError(f"{origin}: the label set holds no images")
    if classes < 2:
        raise StmlError(
            f"{origin}: a single class ({len(chosen)} images); labels need at least 2 classes "
            "to say what differs"
        )
    record = SupervisionRecord(
        labelled_images=len(chosen),
        classes=classes,
        unlabelled_images=int((labels == UNLABELLED).sum()),
        labels_sha256=_fingerprint(labels, listing),
        **extra,  # type: ignore[arg-type]
    )
    return LabelledSet(labels, record, origin)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise StmlError(f"--labeled-fraction must be in (0, 1] (got {fraction})")


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded share `fraction` of each class (at least one image per class),
    sorted: the same images every time for the same labels, fraction and seed."""
    _check_fraction(fraction)
    rng = np.random.default_rng([seed, 12])  # 12: a stream of its own, apart from sampling
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def _same_files(data: ImageSource, labelled: ImageSource) -> dict[int, int]:
    """labelled index -> DATA index for images in both: the same path, or the same bytes
    (a reference shot copied into the labelled folder). Only DATA files whose size equals a
    labelled file's are read."""
    if not data.is_files:
        return {}
    where = {os.path.realpath(p): i for i, p in enumerate(data.items)}
    found: dict[int, int] = {}
    by_size: dict[int, list[int]] = {}
    for j, path in enumerate(labelled.items):
        i = where.get(os.path.realpath(path))
        if i is not None:
            found[j] = i
        else:
            by_size.setdefault(os.path.getsize(path), []).append(j)
    if not by_size:
        return found
    wanted: dict[str, list[int]] = {}
    for j in (j for group in by_size.values() for j in group):
        digest = _file_sha256(labelled.items[j])
        if digest is not None:
            wanted.setdefault(digest, []).append(j)
    taken = set(found.values())
    for i, path in enumerate(data.items):
        if i in taken:
            continue
        try:
            size = os.path.getsize(path)
        except OSError:  # unreadable files are the trainer's to report
            continue
        if size in by_size:
            for j in wanted.get(_file_sha256(path) or "", []):
                found.setdefault(j, i)
    return found


def _file_sha256(path: Path | str) -> str | None:
    """None for a file that cannot be read (the trainer reports unreadable images)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def _from_folder(
    data: ImageSource, folder: str | os.PathLike[str]
) -> tuple[ImageSource, LabelledSet]:
    """DATA plus the labelled folder's images that DATA lacks, appended; an image in both is
    used once, with its label."""
    labelled = folder_source(folder)
    origin = f"--labeled {folder}"
    if labelled.labels is None:
        raise StmlError(
            f"{origin}: needs class sub-folders (every image inside a folder named for its class)"
        )
    shared = _same_files(data, labelled)
    extra = [j for j in range(len(labelled)) if j not in shared]
    source = data
    if extra:
        items = list(data.items) + [labelled.items[j] for j in extra]
        source = ImageSource(
            data.name, data.root, items, None, data.class_names, dict(data.description)
        )
        source.description["added_from_labeled"] = len(extra)
    labels = np.full(len(source), UNLABELLED, dtype=np.int64)
    for j, i in shared.items():
        labels[i] = labelled.labels[j]
    labels[len(data) :] = labelled.labels[extra]
    listing = str(labelled.description["files_sha256"])
    name = f"folder {Path(labelled.root).name}"
    return source, _record(labels, origin, listing, source=name, in_data=len(shared))


def _from_fraction(data: ImageSource, fraction: float, seed: int) -> LabelledSet:
    origin = f"--labeled-fraction {fraction}"
    if data.labels is None:
        raise StmlError(
            f"{origin}: {data.name} has no labels to take a share of (give a known dataset "
            "name, a folder with class sub-folders, or --labeled DIR)"
        )
    chosen = stratified_fraction(data.labels, fraction, seed)
    labels = np.full(len(data), UNLABELLED, dtype=np.int64)
    labels[chosen] = data.labels[chosen]
    return _record(labels, origin, None, source=data.name, fraction=fraction, seed=seed)


def attach_labels(
    data: ImageSource,
    labeled: str | os.PathLike[str] | None,
    fraction: float | None,
    seed: int,
) -> tuple[ImageSource, LabelledSet | None]:
    """The training source and its labels (None: the usual unsupervised run)."""
    if labeled is not None and fraction is not None:
        raise StmlError("give --labeled or --labeled-fraction, not both")
    if labeled is not None:
        return _from_folder(data, labeled)
    if fraction is not None:
        _check_fraction(fraction)
        return data, _from_fraction(data, fraction, seed)
    return data, None


# --- batches ---------------------------------------------------------------------------------
class LabelledGroups:
    """Query groups of labelled images: a labelled query and `size - 1` other labelled images
    of its class (repeats only when the class has fewer). Indices are into the active source."""

    def __init__(self, labels: np.ndarray, groups: int, size: int) -> None:
        self.labels = labels
        self.groups = groups
        self.size = size
        self.queries = np.flatnonzero(labels != UNLABELLED)
        # one sort, not one pass over all images per class (SOP has thousands of classes)
        by_class = self.queries[np.argsort(labels[self.queries], kind="stable")]
        classes, starts = np.unique(labels[by_class], return_index=True)
        self.members = dict(zip(classes.tolist(), np.split(by_class, starts[1:]), strict=True))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """[groups, size] indices, from the sampler's generator (so epochs replay exactly)."""
        out = np.empty((self.groups, self.size), dtype=np.int64)
        for g, query in enumerate(rng.choice(self.queries, size=self.groups)):
            others = self.members[int(self.labels[query])]
            others = others[others != query]
            take = self.size - 1
            if len(others) == 0:
                others = np.array([query])
            out[g, 0] = query
            out[g, 1:] = rng.choice(others, size=take, replace=take > len(others))
        return out


def labelled_groups(
    supervision: LabelledSet | None, active: np.ndarray, cfg: TrainConfig
) -> LabelledGroups | None:
    """The groups of a batch of `cfg.batch_size // cfg.neighbours` query groups that are
    labelled: round(labeled_ratio x groups), at least one when the ratio is above 0."""
    if supervision is None or cfg.labeled_ratio == 0:
        return None
    labels = supervision.labels[active]
    if not (labels != UNLABELLED).any():
        raise StmlError(f"{supervision.origin}: none of the labelled images is readable")
    per_batch = cfg.batch_size // cfg.neighbours
    groups = min(per_batch, max(1, int(round(cfg.labeled_ratio * per_batch))))
    return LabelledGroups(labels, groups, cfg.neighbours)


def batch_labels(
    supervision: LabelledSet | None, active: np.ndarray, ids: torch.Tensor
) -> torch.Tensor | None:
    """The label of each batch row (ids index the active source), on the ids' device."""
    if supervision is None:
        return None
    rows = active[ids.cpu().numpy()]
    return torch.from_numpy(supervision.labels[rows]).to(ids.device)


# --- pseudo labels and loss ------------------------------------------------------------------
def ground_truth_pairs(w: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """W with the ground truth (1 same class, 0 otherwise) where both rows are labelled and
    the teacher's prediction elsewhere."""
    if labels is None:
        return w
    known = labels != UNLABELLED
    both = known[:, None] & known[None, :]
    same = (labels[:, None] == labels[None, :]).to(w.dtype)
    return torch.where(both, same, w)


@cache
def _metric_loss(name: str) -> torch.nn.Module:
    from pytorch_metric_learning import losses

    return getattr(losses, SUPERVISED_LOSSES[name])()


def supervised_loss(f: torch.Tensor, labels: torch.Tensor | None, name: str) -> torch.Tensor:
    """The metric loss `name` on the labelled rows of f; 0 (still part of the graph) when fewer
    than two rows are labelled, i.e. no labelled pair is in the batch."""
    if labels is None:
        return f.new_zeros(())
    known = labels != UNLABELLED
    if int(known.sum()) < 2:
        return (f * 0).sum()
    return _metric_loss(name)(f[known].float(), labels[known])


def add_supervised(
    terms: LossTerms, f: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig
) -> LossTerms:
    """The STML terms plus the weighted supervised loss (unchanged in an unsupervised run)."""
    if labels is None:
        return terms
    return terms.plus_supervised(
        supervised_loss(f, labels, cfg.supervised_loss), cfg.supervised_weight
    )


# --- the record: training state and package ---------------------------------------------------
def progress_record(supervision: LabelledSet | None) -> dict[str, Any] | None:
    return supervision.record.to_json() if supervision is not None else None


def package_record(saved: dict[str, Any] | None) -> SupervisionRecord | None:
    if saved is None:
        return None
    return SupervisionRecord.from_json(saved, "train_state/progress.json")


def check_resume(saved: dict[str, Any] | None, now: LabelledSet | None, out: Path) -> None:
    """--resume continues with the labels the run began with, or refuses."""
    if saved is None and now is None:
        return
    if saved is None:
        raise StmlError(f"{out}: the run began without labels; resume it without {now.origin}")
    began = package_record(saved)
    if now is None:
        raise StmlError(
            f"{out}: the run began with {began.labelled_images} labelled images ({began.source}); "
            "give the same --labeled / --labeled-fraction to resume it"
        )
    if began.labels_sha256 != now.record.labels_sha256:
        raise StmlError(
            f"{out}: the labelled images changed since the run began ({now.origin}: "
            f"{now.record.labelled_images} images in {now.record.classes} classes, was "
            f"{began.labelled_images} in {began.classes}); resuming would mix two label sets"
        )
