"""The model package (docs/design.md §2): a directory with config.json, model.safetensors,
onnx/, parity/ and, locally only, engines/. config.json (stml_deploy/config.py) lists every
artifact with its sha256; loading checks them all and refuses any mismatch."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from stml_deploy.atomic import atomic_write_text
from stml_deploy.config import (
    ArtifactRecord,
    DataRecord,
    MetricsRecord,
    PackageConfig,
)
from stml_deploy.errors import ArtifactMismatchError, PackageError, StmlError
from stml_deploy.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from stml_deploy.hub_transfer import PushResult

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_DIR = "onnx"
PARITY_DIR = "parity"
ENGINES_DIR = "engines"
STATE_DIR = "train_state"  # training's resumable state, beside the package (never published)
PRECISIONS = ("fp32", "fp16", "int8")


def check_precision(precision: str, what: str = "precision") -> str:
    """The one check of a precision name (fp32 | fp16 | int8); `what` names the option."""
    if precision not in PRECISIONS:
        raise StmlError(f"unknown {what} {precision!r}; one of {', '.join(PRECISIONS)}")
    return precision


def onnx_name(precision: str) -> str:
    """Relative path of the ONNX artifact for a precision (docs/design.md §2 names)."""
    check_precision(precision)
    return f"{ONNX_DIR}/model.onnx" if precision == "fp32" else f"{ONNX_DIR}/model.{precision}.onnx"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ModelPackage:
    """A model package on disk. `config` is the typed config.json (stml_deploy/config.py)."""

    def __init__(self, root: Path, config: PackageConfig) -> None:
        self.root = Path(root)
        self.config = config
        self._verified: dict[str, str] = {}  # rel -> sha256 this object already checked

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> ModelPackage:
        root = Path(path)
        config_path = root / CONFIG_NAME
        if not root.is_dir():
            raise PackageError(f"{root}: not a model package folder (no such directory)", root)
        if not config_path.is_file():
            raise PackageError(f"{root}: not a model package (no {CONFIG_NAME})", root)
        package = cls(root, PackageConfig.read(config_path))
        if verify:
            package.verify()
        return package

    def verify(self, only: list[str] | None = None) -> None:
        """Every recorded artifact (or those in `only`) exists and matches its sha256."""
        artifacts = self.artifacts
        for rel in only if only is not None else list(artifacts):
            meta = artifacts.get(rel)
            if meta is None:
                raise PackageError(f"{self.root}: {rel} is not recorded in {CONFIG_NAME}", rel)
            if self._verified.get(rel) == meta.sha256:
                continue  # hashed once already (large files cost seconds)
            file = self.path(rel)
            if not file.is_file():
                raise ArtifactMismatchError(f"{file}: missing (listed in {CONFIG_NAME})", rel)
            actual = sha256_file(file)
            if actual != meta.sha256:
                cut = rel == WEIGHTS_NAME and (self.root / STATE_DIR).is_dir()
                why = (
                    "a training run was probably interrupted between writing the weights and "
                    "config.json: run the same stml train command with --resume to repair it"
                    if cut
                    else "the file is damaged or was modified"
                )
                raise ArtifactMismatchError(
                    f"{file}: sha256 mismatch (expected {meta.sha256[:12]}..., "
                    f"found {actual[:12]}...); {why}",
                    rel,
                )
            self._verified[rel] = actual

    # --- parts ---------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        # lexical check (the Hub cache keeps files as symlinks into its blob store)
        normal = os.path.normpath(rel)
        if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
            raise PackageError(f"{rel}: artifact path escapes the package folder {self.root}", rel)
        return self.root / rel

    @property
    def name(self) -> str:
        return self.config.name or self.root.name

    @property
    def artifacts(self) -> dict[str, ArtifactRecord]:
        return self.config.artifacts

    @property
    def preprocessing(self) -> PreprocessSpec:
        return self.config.preprocessing

    @property
    def embedding_dim(self) -> int:
        return self.config.architecture.embedding_dim

    @property
    def weights_sha256(self) -> str:
        """Identifies the model: indexes built with one model refuse vectors of another."""
        meta = self.artifacts.get(WEIGHTS_NAME) or self.artifacts.get(onnx_name("fp32"))
        if meta is None:
            raise PackageError(f"{self.root}: package records neither weights nor an fp32 ONNX")
        return meta.sha256

    def onnx_path(self, precision: str = "fp32") -> Path:
        rel = onnx_name(precision)
        if rel not in self.artifacts:
            have = [p for p in PRECISIONS if onnx_name(p) in self.artifacts]
            hint = (
                f" (it has: {', '.join(have)}; add it with: stml export {self.root} --format onnx "
                f"--precision {precision})"
                if have
                else " (run: stml export PACKAGE --format onnx)"
            )
            raise PackageError(f"{self.root}: no {precision} ONNX model in this package{hint}")
        return self.path(rel)

    # --- the Hub (huggingface_hub's mixin conventions) -------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        revision: str | None = None,
        token: str | None = None,
        verify: bool = True,
    ) -> ModelPackage:
        """The package published as `repo_id` (at a branch, tag or commit), from the local Hub
        cache, downloaded when online; every file's sha256 checked."""
        from stml_deploy.hub import pull_to_cache, split_ref

        ref = split_ref(repo_id)
        return pull_to_cache(ref.repo_id, revision or ref.revision, verify=verify, token=token)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        revision: str | None = None,
        create_pr: bool = False,
        commit_message: str | None = None,
        token: str | None = None,
        replace_readme: bool = False,
    ) -> PushResult:
        """Publish this package (config, weights, ONNX, parity, model card) as `repo_id`."""
        from stml_deploy.hub_transfer import push_package

        return push_package(
            str(self.root), repo_id, private, revision, create_pr, commit_message, token,
            replace_readme,
        )  # fmt: skip

    # --- writing -------------------------------------------------------------------------
    def record_artifact(self, rel: str, kind: str | None = None, **details: object) -> None:
        """Hash a file already in place and record it (and `details`) in config.json."""
        file = self.path(rel)
        entry = ArtifactRecord(sha256_file(file), file.stat().st_size, kind, dict(details))
        self.artifacts[rel] = entry
        self._verified[rel] = entry.sha256
        self.save()

    def forget_artifact(self, rel: str) -> None:
        if self.artifacts.pop(rel, None) is not None:
            self.save()

    def record_metrics(
        self, split: str, values: dict[str, float | int | None], data: DataRecord | None = None
    ) -> None:
        """Store evaluation results under `split` (the model card shows them)."""
        self.config.metrics[split] = MetricsRecord(dict(values), data)
        self.save()

    def save(self) -> None:
        atomic_write_text(self.root / CONFIG_NAME, self.config.dumps())
