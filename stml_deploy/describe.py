"""`stml info`: what a model package or a gallery index holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stml_deploy.index import META_NAME, GalleryIndex
from stml_deploy.package import ModelPackage
from stml_deploy.parity_files import read_report


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_package(package: ModelPackage) -> dict[str, Any]:
    config = package.config
    training = config.training
    artifacts = {
        rel: {
            "bytes": meta.bytes,
            "sha256": meta.sha256,
            **{
                k: meta.details[k]
                for k in ("precision", "int8_target", "opset")
                if k in meta.details
            },
        }
        for rel, meta in package.artifacts.items()
    }
    parity = [
        {
            "artifact": e.artifact,
            "runtime": e.runtime,
            "device": e.device,
            "passed": e.passed,
            "cosine_min": e.cosine_min,
            "top10_overlap": e.top10_overlap,
            "recall_at_1_drop": e.recall_at_1_drop,
        }
        for e in read_report(package)
    ]
    engines = (
        sorted(p.name for p in (package.root / "engines").glob("*.engine"))
        if (package.root / "engines").is_dir()
        else []
    )
    return {
        "kind": "model package",
        "path": str(package.root),
        "name": package.name,
        "architecture": config.architecture.to_json(),
        "preprocessing": config.preprocessing.to_dict(),
        "training": {
            "method": training.method,
            "epochs_done": training.epochs_done,
            "complete": training.complete,
            "data": training.data.to_json() if training.data is not None else None,
        }
        if training is not None
        else {},
        "metrics": {split: m.to_json() for split, m in config.metrics.items()},
        "artifacts": artifacts,
        "parity": parity,
        "engines": engines,
        "hub": config.hub.to_json() if config.hub is not None else None,
        "total_bytes": _size(package.root),
    }


def describe_index(index: GalleryIndex) -> dict[str, Any]:
    labels = [i["label"] for i in index.items if i["label"] is not None]
    return {
        "kind": "gallery index",
        "path": str(index.root),
        "model": index.meta["model"],
        "count": index.count,
        "dim": index.dim,
        "index_kind": index.kind,
        "hnsw": index.meta.get("hnsw"),
        "labelled_items": len(labels),
        "classes": len(index.class_names or []),
        "created_at": index.meta.get("created_at"),
        "updated_at": index.meta.get("updated_at"),
        "total_bytes": _size(index.root) if index.root else None,
    }


def describe(path: str) -> dict[str, Any]:
    """Package or index, told apart by their marker files; hf:// names are packages."""
    from stml_deploy.hub import is_hub_package, open_package

    if not is_hub_package(path) and (Path(path) / META_NAME).is_file():
        return describe_index(GalleryIndex.load(path))
    return describe_package(open_package(path, verify=True))
