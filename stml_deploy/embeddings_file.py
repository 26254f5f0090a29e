"""`stml embed`'s output: the vectors (`NAME.npy`) and, beside them, what each row is
(`NAME.items.json`). The two are written together (both or neither) and the items file
records the vectors file's sha256, so a pair that does not belong together is refused."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy.atomic import atomic_paths
from stml_deploy.errors import PackageError

FORMAT_VERSION = 1

Item = str | os.PathLike[str] | Mapping[str, Any]


@dataclass
class EmbeddingsFile:
    vectors: np.ndarray  # float32 [count, dim]
    items: list[dict[str, Any]]  # {"id", "path", "label"} per row, as in an index's items.jsonl

    @property
    def paths(self) -> list[str]:
        return [item["path"] for item in self.items]


def items_path(out: str | os.PathLike[str]) -> Path:
    """`emb.npy` -> `emb.items.json`."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".npy") + ".items.json")


def write_embeddings(
    out: str | os.PathLike[str], vectors: np.ndarray, items: Sequence[Item]
) -> Path:
    """Write `vectors` to `out` (.npy) and the items beside it; returns the items file.
    An item is a path, or a mapping with "path" and optional "id" and "label"."""
    out = Path(out)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(items):
        raise ValueError(f"{len(items)} items for vectors of shape {vectors.shape}")
    records = [_record(row, item) for row, item in enumerate(items)]
    sidecar = items_path(out)
    with atomic_paths([out, sidecar]) as (vectors_tmp, items_tmp):
        with open(vectors_tmp, "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)
        document = {
            "format_version": FORMAT_VERSION,
            "vectors": out.name,
            "vectors_sha256": _sha256(vectors_tmp),
            "count": len(vectors),
            "dim": vectors.shape[1],
            "items": records,
        }
        items_tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return sidecar


def _record(row: int, item: Item) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return {"id": item.get("id", row), "path": str(item["path"]), "label": item.get("label")}
    return {"id": row, "path": str(item), "label": None}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_embeddings(path: str | os.PathLike[str]) -> EmbeddingsFile:
    """Read a pair written by write_embeddings, or by stml 0.1 (whose items file is a JSON list
    of paths). Raises PackageError naming the file for a missing, damaged or mismatched pair."""
    path = Path(path)
    sidecar = items_path(path)
    try:
        vectors = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PackageError(f"{path}: no such file", path) from None
    except (OSError, ValueError, EOFError) as exc:
        raise PackageError(f"{path}: not a readable .npy file ({exc})", path) from None
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise PackageError(f"{path}: not embeddings (array {vectors.shape} of {vectors.dtype})")
    try:
        document = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{path}: its items file {sidecar.name} is missing", sidecar) from None
    except (OSError, ValueError) as exc:
        raise PackageError(f"{sidecar}: damaged items file ({exc})", sidecar) from None
    if isinstance(document, list):  # stml 0.1: the paths, nothing else
        if not all(isinstance(p, str) for p in document):
            raise PackageError(f"{sidecar}: damaged items file (not a list of paths)", sidecar)
        items = [_record(row, p) for row, p in enumerate(document)]
    else:
        items = _checked_items(sidecar, document, _sha256(path))
    if len(items) != len(vectors):
        raise PackageError(
            f"{path} holds {len(vectors)} vectors but {sidecar.name} lists {len(items)} items: "
            "they are not one pair",
            sidecar,
        )
    return EmbeddingsFile(vectors.astype(np.float32, copy=False), items)


def _checked_items(sidecar: Path, document: object, vectors_sha256: str) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise PackageError(f"{sidecar}: damaged items file (no items list)", sidecar)
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PackageError(
            f"{sidecar}: items format {version!r} is not one this stml reads (1)", sidecar
        )
    items = document["items"]
    for row, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise PackageError(f"{sidecar}: damaged items file (item {row})", sidecar)
    if document.get("vectors_sha256") != vectors_sha256:
        raise PackageError(
            f"{sidecar} was written with other vectors than {document.get('vectors')!s} holds "
            "now (one of the two was replaced or cut off): embed again",
            sidecar,
        )
    return items


def embed_to_file(
    package: str,
    images: Sequence[str],
    out: str | os.PathLike[str],
    backend: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    strict: bool = False,
) -> tuple[Path, Path, int, int, int]:
    """`stml embed`: embed the images (files or folders) with a package and write the pair;
    returns (vectors file, items file, rows, dim, images skipped). Nothing is written when
    no image could be read."""
    from stml_deploy.embedder import Embedder
    from stml_deploy.errors import StmlError
    from stml_deploy.images import expand_image_args

    paths = expand_image_args(list(images))
    with Embedder.from_package(
        package, backend=backend, precision=precision, batch_size=batch_size
    ) as embedder:
        result = embedder.embed_paths(paths, strict=strict)
    if not result.items:
        raise StmlError("none of the images could be read; nothing written")
    sidecar = write_embeddings(out, result.vectors, result.items)
    return Path(out), sidecar, len(result.items), result.vectors.shape[1], len(result.skipped)
