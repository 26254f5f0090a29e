"""config.json as typed records: the one reader (`PackageConfig.from_json`) and the one writer
(`PackageConfig.to_json`) of the file. Every field is checked once, on load, and a bad one is
reported as one line naming the file and the field. The file layout is the contract
(docs/formats.md); packages written by earlier releases of the same format_version load
unchanged (tests/data/package-0.1.0 is one).

The network is rebuilt from `architecture` (as timm's pretrained_cfg travels with weights),
never from the training hyper-parameters, which are a record of how it was trained."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stml_deploy.errors import PackageError
from stml_deploy.preprocess import PreprocessSpec

FORMAT_VERSION = 1
LIBRARY = "stml"
STML_METHOD = "STML (Self-Taught Metric Learning, Kim et al., CVPR 2022)"
# the exported graph's tensor names (docs/design.md §3)
GRAPH_INPUT, GRAPH_OUTPUT = "pixels", "embedding"


class _Fields:
    """Typed access to one JSON object of a config file; errors name the file and field."""

    def __init__(self, data: Any, file: Path | str, where: str) -> None:
        if not isinstance(data, dict):
            raise PackageError(f"{file}: {where or 'the file'} must be an object", file)
        self.data, self.file, self.where = data, file, where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _bad(self, key: str, wanted: str) -> PackageError:
        return PackageError(
            f"{self.file}: field {self._name(key)} must be {wanted} "
            f"(found {json.dumps(self.data.get(key))[:60]})",
            self.file,
        )

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def str(self, key: str, default: str | None = None, required: bool = False) -> Any:
        value = self.data.get(key, default)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def int(self, key: str, default: int | None = None, required: bool = False) -> Any:
        value = self.data.get(key, default)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def float(self, key: str, default: float | None = None) -> Any:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number")
        return float(value)

    def bool(self, key: str, default: bool | None = None) -> Any:
        value = self.data.get(key, default)
        if value is not None and not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def object(self, key: str, required: bool = False) -> _Fields | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise PackageError(f"{self.file}: field {self._name(key)} is missing", self.file)
            return None
        return _Fields(value, self.file, self._name(key))

    def dict(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return value

    def list(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return value

    def numbers(self, key: str, count: int) -> tuple[float, ...]:
        value = self.data.get(key)
        if (
            not isinstance(value, list)
            or len(value) != count
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            raise self._bad(key, f"a list of {count} numbers")
        return tuple(float(v) for v in value)


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


# --- records -------------------------------------------------------------------------------
# Pooling of the backbone's output; "a+b" sums the two (training/model.py pool_features).
POOLINGS = ("gap+gmp", "gap", "gmp", "cls", "cls+gap")


@dataclass
class Architecture:
    """What rebuilds the network: the backbone (at image_size: token models are built for
    it), its pooling and the heads."""

    backbone: str
    embedding_dim: int
    aux_dim: int
    image_size: int
    feature_dim: int
    pooling: str = "gap+gmp"  # one of POOLINGS (training/model.py says what each does)
    # True only in packages from before token pooling skipped the class / register tokens
    # (they pooled every token): read as such, so they embed as they always did
    pool_prefix_tokens: bool = False
    # an hf-hub: backbone's timm architecture and arguments (rebuilt without the Hub)
    timm_architecture: str | None = None
    timm_model_args: dict[str, Any] | None = None

    @classmethod
    def parse(cls, f: _Fields) -> Architecture:
        return cls(
            backbone=f.str("backbone", required=True),
            embedding_dim=_positive(f, "embedding_dim"),
            aux_dim=_positive(f, "aux_dim"),
            image_size=_positive(f, "image_size"),
            feature_dim=_positive(f, "feature_dim"),
            pooling=_pooling(f),
            pool_prefix_tokens=f.bool("pool_prefix_tokens", True),
            timm_architecture=f.str("timm_architecture"),
            timm_model_args=f.dict("timm_model_args") if f.has("timm_model_args") else None,
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "backbone": self.backbone,
            "pooling": self.pooling,
            "feature_dim": self.feature_dim,
            "embedding_dim": self.embedding_dim,
            "aux_dim": self.aux_dim,
            "image_size": self.image_size,
        }
        if not self.pool_prefix_tokens:  # absent (old packages) reads as True
            out["pool_prefix_tokens"] = False
        if self.timm_architecture is not None:
            out["timm_architecture"] = self.timm_architecture
            out["timm_model_args"] = self.timm_model_args or {}
        return out


def _pooling(f: _Fields) -> str:
    value = f.str("pooling", "gap+gmp")
    if value not in POOLINGS:
        raise f._bad("pooling", f"one of {', '.join(POOLINGS)}")
    return value


def _positive(f: _Fields, key: str) -> int:
    value = f.int(key, required=True)
    if value < 1:
        raise f._bad(key, "a positive integer")
    return int(value)


@dataclass
class DataRef:
    """How to reopen the data: a dataset name or a folder, its root, its split."""

    data: str
    split: str = "train"
    data_root: str | None = None

    @classmethod
    def parse(cls, f: _Fields) -> DataRef:
        return cls(f.str("data", required=True), f.str("split", "train"), f.str("data_root"))

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "data_root": self.data_root, "split": self.split}


@dataclass
class DataRecord:
    """What data a model saw or was measured on (never its labels)."""

    name: str
    images: int
    root: str | None = None
    kind: str | None = None  # "folder" for an image folder; None for a named dataset
    classes: int | None = None
    files_sha256: str | None = None  # a folder's file list, to notice a changed folder
    subset: str | None = None
    ref: DataRef | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields a later stml may add

    @property
    def is_folder(self) -> bool:
        return self.kind == "folder"

    @classmethod
    def from_json(cls, data: Any, file: Path | str = "data summary") -> DataRecord:
        return cls.parse(_Fields(data, file, ""))

    @classmethod
    def parse(cls, f: _Fields) -> DataRecord:
        known = {x.name for x in fields(cls)}
        ref = f.object("ref")
        return cls(
            name=f.str("name", required=True),
            images=f.int("images", required=True),
            root=f.str("root"),
            kind=f.str("kind"),
            classes=f.int("classes"),
            files_sha256=f.str("files_sha256"),
            subset=f.str("subset"),
            ref=DataRef.parse(ref) if ref is not None else None,
            extra={k: v for k, v in f.data.items() if k not in known},
        )

    def published(self) -> DataRecord:
        """As published: local folder paths reduced to the folder's name (they say nothing to
        others and may say too much about this machine)."""
        out = copy.deepcopy(self)
        if self.is_folder or (self.ref is not None and Path(self.ref.data).is_absolute()):
            if out.root is not None:
                out.root = Path(out.root).name
            if out.ref is not None:
                out.ref.data = Path(out.ref.data).name
            if self.is_folder:
                out.name = f"folder {Path(self.root or self.name).name}"
        if out.ref is not None:
            out.ref.data_root = None
        return out

    def to_json(self) -> dict[str, Any]:
        out = _drop_none(
            {"name": self.name, "root": self.root, "images": self.images, "classes": self.classes,
             "kind": self.kind, "files_sha256": self.files_sha256, "subset": self.subset}
        )  # fmt: skip
        if self.ref is not None:
            out["ref"] = self.ref.to_json()
        return {**out, **self.extra}


@dataclass
class SupervisionRecord:
    """The labels a semi-supervised run used: counts only (never the labels themselves), and
    a fingerprint of them that --resume compares."""

    labelled_images: int
    classes: int
    unlabelled_images: int
    source: str  # "folder NAME" (--labeled) or the dataset whose labels were sampled
    labels_sha256: str
    fraction: float | None = None  # --labeled-fraction
    seed: int | None = None  # of the fraction's draw
    in_data: int | None = None  # labelled images that DATA also holds (used once)

    @classmethod
    def from_json(cls, data: Any, file: Path | str) -> SupervisionRecord:
        return cls.parse(_Fields(data, file, "supervision"))

    @classmethod
    def parse(cls, f: _Fields) -> SupervisionRecord:
        return cls(
            labelled_images=f.int("labelled_images", required=True),
            classes=f.int("classes", required=True),
            unlabelled_images=f.int("unlabelled_images", required=True),
            source=f.str("source", required=True),
            labels_sha256=f.str("labels_sha256", required=True),
            fraction=f.float("fraction"),
            seed=f.int("seed"),
            in_data=f.int("in_data"),
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {"labelled_images": self.labelled_images, "classes": self.classes,
             "unlabelled_images": self.unlabelled_images, "source": self.source,
             "fraction": self.fraction, "seed": self.seed, "in_data": self.in_data,
             "labels_sha256": self.labels_sha256}
        )  # fmt: skip


@dataclass
class TrainingRecord:
    """How the weights were trained: the hyper-parameters (a record, not the architecture),
    the data, progress and the per-epoch history."""

    hyperparameters: dict[str, Any]
    data: DataRecord | None
    epochs_done: int
    complete: bool
    method: str = STML_METHOD
    device: str | None = None
    amp: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    init_from: str | None = None
    supervision: SupervisionRecord | None = None  # semi-supervised runs only

    @classmethod
    def parse(cls, f: _Fields) -> TrainingRecord:
        data = f.object("data")
        supervision = f.object("supervision")
        return cls(
            hyperparameters=f.dict("hyperparameters"),
            data=DataRecord.parse(data) if data is not None else None,
            epochs_done=f.int("epochs_done", 0),
            complete=bool(f.bool("complete", False)),
            method=f.str("method", STML_METHOD),
            device=f.str("device"),
            amp=f.str("amp"),
            history=f.list("history"),
            init_from=f.str("init_from"),
            supervision=SupervisionRecord.parse(supervision) if supervision is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "hyperparameters": self.hyperparameters,
            "data": self.data.to_json() if self.data is not None else None,
            "epochs_done": self.epochs_done,
            "complete": self.complete,
            "device": self.device,
            "amp": self.amp,
            "history": self.history,
            "init_from": self.init_from,
            **({"supervision": self.supervision.to_json()} if self.supervision else {}),
        }


@dataclass
class MetricsRecord:
    """Retrieval metrics of the model on one split (`values`: recall_at_1, map_at_r, ...)."""

    values: dict[str, float | int | None]
    data: DataRecord | None = None

    @classmethod
    def parse(cls, f: _Fields) -> MetricsRecord:
        data = f.object("data")
        values = {k: v for k, v in f.data.items() if k != "data"}
        for key, value in values.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise f._bad(key, "a number or null")
        return cls(values, DataRecord.parse(data) if data is not None else None)

    def to_json(self) -> dict[str, Any]:
        head = {"data": self.data.to_json()} if self.data is not None else {}
        return {**head, **self.values}


@dataclass
class ArtifactRecord:
    """One file of the package with its sha256; `details` holds what its maker recorded
    (precision, opset, int8 target and quantization details, golden-set counts...)."""

    sha256: str
    bytes: int
    kind: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def precision(self) -> str | None:
        return self.details.get("precision")

    @property
    def int8_target(self) -> str | None:
        return self.details.get("int8_target")

    @classmethod
    def parse(cls, f: _Fields) -> ArtifactRecord:
        sha = f.str("sha256", required=True)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise f._bad("sha256", "a sha256 hex digest")
        return cls(
            sha,
            f.int("bytes", required=True),
            f.str("kind"),
            {k: v for k, v in f.data.items() if k not in ("sha256", "bytes", "kind")},
        )

    def to_json(self) -> dict[str, Any]:
        head = {"sha256": self.sha256, "bytes": self.bytes}
        if self.kind is not None:
            head["kind"] = self.kind
        return {**head, **self.details}


@dataclass
class HubOrigin:
    """Where a pulled package came from (local only: not published)."""

    repo_id: str
    revision: str
    commit: str

    @classmethod
    def parse(cls, f: _Fields) -> HubOrigin:
        return cls(
            f.str("repo_id", required=True),
            f.str("revision", "main"),
            f.str("commit", required=True),
        )

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}


@dataclass
class PackageConfig:
    """config.json. `embedding` (dim, distance, normalization, tensor names) is derived from the
    architecture and the graph contract, written for other runtimes, never read back."""

    name: str
    architecture: Architecture
    preprocessing: PreprocessSpec
    training: TrainingRecord | None = None
    metrics: dict[str, MetricsRecord] = field(default_factory=dict)
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    hub: HubOrigin | None = None
    format_version: int = FORMAT_VERSION

    # --- the one reader ----------------------------------------------------------------------
    @classmethod
    def read(cls, path: Path) -> PackageConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PackageError(f"{path}: not UTF-8 text ({exc.reason})", path) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PackageError(f"{path}: not valid JSON ({exc})", path) from None
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: Any, file: Path | str) -> PackageConfig:
        top = _Fields(data, file, "")
        if "format_version" not in top.data:
            raise PackageError(f"{file}: not an stml package config (no format_version)", file)
        version = top.int("format_version", required=True)
        if version > FORMAT_VERSION:
            raise PackageError(
                f"{file}: package format {version} is newer than this stml understands "
                f"({FORMAT_VERSION}); upgrade stml",
                file,
            )
        training = top.object("training")
        hub = top.object("hub")
        metrics = top.object("metrics")
        artifacts = top.object("artifacts")
        return cls(
            name=top.str("name", "") or "",
            architecture=Architecture.parse(top.object("architecture", required=True)),  # type: ignore[arg-type]
            preprocessing=_preprocessing(top.object("preprocessing", required=True)),  # type: ignore[arg-type]
            training=TrainingRecord.parse(training) if training and training.data else None,
            metrics={
                split: MetricsRecord.parse(_Fields(v, file, f"metrics.{split}"))
                for split, v in (metrics.data.items() if metrics else ())
            },
            artifacts={
                rel: ArtifactRecord.parse(_Fields(v, file, f"artifacts.{rel}"))
                for rel, v in (artifacts.data.items() if artifacts else ())
            },
            hub=HubOrigin.parse(hub) if hub is not None else None,
            format_version=version,
        )

    # --- the one writer ----------------------------------------------------------------------
    def to_json(self, published: bool = False) -> dict[str, Any]:
        """The file's content; `published` leaves out what stays on this machine (the Hub
        origin, local folder paths of the data)."""
        data_json = (lambda d: d.published().to_json()) if published else (lambda d: d.to_json())
        training = self.training.to_json() if self.training is not None else {}
        if published and self.training is not None and self.training.data is not None:
            training["data"] = data_json(self.training.data)
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "library": LIBRARY,
            "architecture": self.architecture.to_json(),
            "preprocessing": self.preprocessing.to_dict(),
            "embedding": {
                "dim": self.architecture.embedding_dim,
                "distance": "cosine",
                "normalized": True,
                "output": GRAPH_OUTPUT,
                "input": GRAPH_INPUT,
            },
            "training": training,
            "metrics": {
                split: (
                    MetricsRecord(m.values, m.data.published()).to_json()
                    if published and m.data is not None
                    else m.to_json()
                )
                for split, m in self.metrics.items()
            },
            "artifacts": {rel: a.to_json() for rel, a in self.artifacts.items()},
        }
        if self.hub is not None and not published:
            out["hub"] = self.hub.to_json()
        return out

    def dumps(self, published: bool = False) -> str:
        return json.dumps(self.to_json(published), indent=2) + "\n"


def _preprocessing(f: _Fields) -> PreprocessSpec:
    from stml_deploy.errors import StmlError

    try:
        return PreprocessSpec(
            image_size=_positive(f, "image_size"),
            resize=_positive(f, "resize"),
            interpolation=f.str("interpolation", "bilinear"),
            mean=f.numbers("mean", 3),  # type: ignore[arg-type]
            std=f.numbers("std", 3),  # type: ignore[arg-type]
            channel_order=f.str("channel_order", "RGB"),
            layout=f.str("layout", "NCHW"),
            dtype=f.str("dtype", "uint8"),
            extra=f.dict("extra"),
        )
    except PackageError:
        raise
    except StmlError as exc:  # the spec's own range checks
        raise PackageError(f"{f.file}: {exc}", f.file) from None
