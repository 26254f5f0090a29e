"""The model package (docs/design.md §2): a directory with config.json, model.safetensors, onnx/,
parity/ and, locally only, engines/. config.json lists every artifact with its sha256;
loading checks them all and refuses any mismatch."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stml_deploy.atomic import atomic_write_json
from stml_deploy.errors import ArtifactMismatchError, StmlError
from stml_deploy.preprocess import PreprocessSpec

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_DIR = "onnx"
PARITY_DIR = "parity"
ENGINES_DIR = "engines"
PRECISIONS = ("fp32", "fp16", "int8")


def onnx_name(precision: str) -> str:
    """Relative path of the ONNX artifact for a precision (docs/design.md §2 names)."""
    if precision not in PRECISIONS:
        raise StmlError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    return f"{ONNX_DIR}/model.onnx" if precision == "fp32" else f"{ONNX_DIR}/model.{precision}.onnx"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ModelPackage:
    """A model package on disk. `config` is the parsed config.json (a plain dict, the file
    format is the contract); helpers below read the parts runtimes need."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.config = config
        self._verified: dict[str, str] = {}  # rel -> sha256 this object already checked

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> ModelPackage:
        root = Path(path)
        config_path = root / CONFIG_NAME
        if not root.is_dir():
            raise StmlError(f"{root}: not a model package folder (no such directory)")
        if not config_path.is_file():
            raise StmlError(f"{root}: not a model package (no {CONFIG_NAME})")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StmlError(f"{config_path}: not valid JSON ({exc})") from None
        if not isinstance(config, dict) or "format_version" not in config:
            raise StmlError(f"{config_path}: not an stml package config (no format_version)")
        if config["format_version"] > FORMAT_VERSION:
            raise StmlError(
                f"{config_path}: package format {config['format_version']} is newer than this "
                f"stml understands ({FORMAT_VERSION}); upgrade stml"
            )
        package = cls(root, config)
        if verify:
            package.verify()
        return package

    def verify(self, only: list[str] | None = None) -> None:
        """Every recorded artifact (or those in `only`) exists and matches its sha256."""
        artifacts = self.artifacts
        for rel in only if only is not None else list(artifacts):
            meta = artifacts.get(rel)
            if meta is None:
                raise StmlError(f"{self.root}: {rel} is not recorded in {CONFIG_NAME}")
            if self._verified.get(rel) == meta.get("sha256"):
                continue  # hashed once already (large files cost seconds)
            file = self.path(rel)
            if not file.is_file():
                raise ArtifactMismatchError(f"{file}: missing (listed in {CONFIG_NAME})", rel)
            actual = sha256_file(file)
            if actual != meta.get("sha256"):
                raise ArtifactMismatchError(
                    f"{file}: sha256 mismatch (expected {str(meta.get('sha256'))[:12]}..., "
                    f"found {actual[:12]}...); the file is damaged or was modified",
                    rel,
                )
            self._verified[rel] = actual

    # --- parts ---------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        # lexical check (the Hub cache keeps files as symlinks into its blob store)
        normal = os.path.normpath(rel)
        if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
            raise StmlError(f"{rel}: artifact path escapes the package folder {self.root}")
        return self.root / rel

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.root.name)

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.config.setdefault("artifacts", {})

    @property
    def preprocessing(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.config["preprocessing"])

    @property
    def embedding_dim(self) -> int:
        return int(self.config["architecture"]["embedding_dim"])

    @property
    def weights_sha256(self) -> str:
        """Identifies the model: indexes built with one model refuse vectors of another."""
        meta = self.artifacts.get(WEIGHTS_NAME) or self.artifacts.get(onnx_name("fp32"))
        if meta is None:
            raise StmlError(f"{self.root}: package records neither weights nor an fp32 ONNX")
        return str(meta["sha256"])

    def onnx_path(self, precision: str = "fp32") -> Path:
        rel = onnx_name(precision)
        if rel not in self.artifacts:
            have = [p for p in PRECISIONS if onnx_name(p) in self.artifacts]
            hint = (
                f" (it has: {', '.join(have)})"
                if have
                else " (run: stml export PACKAGE --format onnx)"
            )
            raise StmlError(f"{self.root}: no {precision} ONNX model in this package{hint}")
        return self.path(rel)

    # --- writing -------------------------------------------------------------------------
    def record_artifact(self, rel: str, **meta: Any) -> None:
        """Hash a file already in place and record it (and `meta`) in config.json."""
        file = self.path(rel)
        entry = {"sha256": sha256_file(file), "bytes": file.stat().st_size, **meta}
        self.artifacts[rel] = entry
        self._verified[rel] = entry["sha256"]
        self.save()

    def forget_artifact(self, rel: str) -> None:
        if self.artifacts.pop(rel, None) is not None:
            self.save()

    def save(self) -> None:
        atomic_write_json(self.root / CONFIG_NAME, self.config)


def new_config(
    name: str,
    architecture: dict[str, Any],
    preprocessing: PreprocessSpec,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh config.json body; artifacts are added by record_artifact."""
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "library": "stml",
        "architecture": architecture,
        "preprocessing": preprocessing.to_dict(),
        "embedding": {
            "dim": architecture["embedding_dim"],
            "distance": "cosine",
            "normalized": True,
            "output": "embedding",
            "input": "pixels",
        },
        "training": training or {},
        "metrics": {},
        "artifacts": {},
    }
