"""The gallery index (docs/design.md §6): a directory with index.json (model id, dim, metric, kind,
count), vectors.npy (the unit vectors, always: exact search and rebuilds need nothing else),
items.jsonl (id, path, optional label) and, for the HNSW kind, hnsw.faiss. This file holds the
index and its storage; the HNSW graph is in index_hnsw.py, the measures of its search in
index_quality.py and the exact inner-product search (faiss when installed, numpy otherwise) in
neighbours.py. Every write goes to a temporary sibling directory that replaces the index in
one step."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stml_deploy import index_hnsw, index_quality
from stml_deploy.atomic import atomic_directory, atomic_write_json, recover_directory
from stml_deploy.console import warn
from stml_deploy.errors import PackageError, StmlError
from stml_deploy.neighbours import SearchResult, check_engine, faiss_module, nearest

if TYPE_CHECKING:
    from stml_deploy.embedder import Embedder

FORMAT_VERSION = 1
META_NAME, VECTORS_NAME, ITEMS_NAME, HNSW_NAME = (
    "index.json",
    "vectors.npy",
    "items.jsonl",
    "hnsw.faiss",
)
KINDS = ("flat", "hnsw")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise StmlError(f"unknown index kind {kind!r}; one of {', '.join(KINDS)}")
    if kind == "hnsw" and faiss_module() is None:
        raise StmlError("an HNSW index needs faiss: pip install 'stml[index]'")


def _check_meta(root: Path, meta: Any) -> None:
    """index.json has the fields and types the rest of the code relies on."""
    where = root / META_NAME
    expected = {"model": dict, "dim": int, "kind": str, "count": int}
    if not isinstance(meta, dict):
        raise PackageError(f"{where}: damaged index (not a JSON object)", where)
    wrong = [k for k, t in expected.items() if not isinstance(meta.get(k), t)]
    if not wrong and not isinstance(meta["model"].get("weights_sha256"), str):
        wrong = ["model.weights_sha256"]
    names = meta.get("class_names")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        wrong.append("class_names (a list of names)")
    if meta.get("hnsw") is not None and not isinstance(meta["hnsw"], dict):
        wrong.append("hnsw")
    if wrong:
        raise PackageError(f"{where}: damaged index (no valid {', '.join(wrong)})", where)
    if meta["kind"] not in KINDS:
        raise PackageError(f"{where}: damaged index (unknown kind {meta['kind']!r})", where)


def _read_items(path: Path) -> list[dict[str, Any]]:
    """items.jsonl: one {"id": int, "path": str, "label": int | null} object per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PackageError(f"{path}: damaged index (not UTF-8: {exc.reason})", path) from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PackageError(
                f"{path}: damaged index (line {number} is not JSON: {exc.msg})", path
            ) from None
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("path"), str)
            or not isinstance(item.get("id"), int)
            or not (item.get("label") is None or isinstance(item.get("label"), int))
        ):
            raise PackageError(
                f"{path}: damaged index (line {number} is not an item: an object with id, path, label)",
                path,
            )
        items.append(item)
    return items


def _read_vectors(path: Path) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # numpy says "mmap length is greater than file size" and alike
        raise PackageError(
            f"{path}: damaged index (truncated, or not a .npy array: {exc})", path
        ) from None
    for start in range(
        0, len(vectors), 65536
    ):  # a NaN row would never be found, not even for its own image
        block = np.asarray(vectors[start : start + 65536])
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1)) if block.ndim == 2 else []
        if len(bad):
            raise PackageError(
                f"{path}: damaged index (row {start + int(bad[0])} is not finite, NaN or inf); rebuild it",
                path,
            )
    return vectors


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class GalleryIndex:
    meta: dict[str, Any]
    vectors: np.ndarray  # float32 [N, dim]
    items: list[dict[str, Any]]  # {"id", "path", "label"}
    root: Path | None = None
    _hnsw: Any = field(default=None, repr=False)

    # --- creation and storage -----------------------------------------------------------
    @classmethod
    def create(
        cls,
        model: dict[str, Any],
        vectors: np.ndarray,
        paths: list[str],
        labels: list[int] | None = None,
        class_names: list[str] | None = None,
        kind: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
    ) -> GalleryIndex:
        check_kind(kind)
        meta = {
            "format_version": FORMAT_VERSION,
            "model": model,
            "dim": int(vectors.shape[1]) if vectors.ndim == 2 else int(model["embedding_dim"]),
            "metric": "inner_product (cosine on unit vectors)",
            "kind": kind,
            "hnsw": {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
            if kind == "hnsw"
            else None,
            "class_names": class_names,
            "count": 0,
            "created_at": _now(),
        }
        index = cls(meta, np.zeros((0, meta["dim"]), dtype=np.float32), [])
        index.extend(vectors, paths, labels)
        return index

    def extend(
        self, vectors: np.ndarray, paths: list[str], labels: list[int | None] | None = None
    ) -> int:
        """Append new items (paths already in the index are skipped); returns how many."""
        if self.kind == "hnsw" and faiss_module() is None:
            raise StmlError("adding to an HNSW index needs faiss: pip install 'stml[index]'")
        if vectors.shape[1:] != (self.dim,):
            raise StmlError(
                f"vectors of dim {vectors.shape[1:]} do not fit an index of dim {self.dim}"
            )
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):  # such a row could never be found, not even by its own image
            raise StmlError(
                f"{paths[int(bad[0])]}: its embedding is not finite (NaN or inf); "
                f"{len(bad)} such image(s), nothing added"
            )
        known = {item["path"] for item in self.items}
        keep = [i for i, p in enumerate(paths) if p not in known]
        if len(keep) < len(paths):
            warn(f"{len(paths) - len(keep)} image(s) already in the index: skipped")
        if not keep:
            return 0
        start = len(self.items)
        new = np.ascontiguousarray(vectors[keep], dtype=np.float32)
        self.vectors = np.concatenate([np.asarray(self.vectors), new])
        self.items += [
            {
                "id": start + n,
                "path": paths[i],
                "label": None if labels is None or labels[i] is None else int(labels[i]),
            }
            for n, i in enumerate(keep)
        ]
        self.meta["count"] = len(self.items)
        self.meta["updated_at"] = _now()
        if self.kind == "hnsw":
            if self._hnsw is None:
                self._hnsw_index()  # built from all vectors, the new ones included
            else:
                self._hnsw.add(new)
        return len(keep)

    def save(self, root: str | os.PathLike[str]) -> None:
        root = Path(root).resolve()
        check_index_target(root)
        with atomic_directory(root) as tmp:
            np.save(tmp / VECTORS_NAME, np.asarray(self.vectors, dtype=np.float32))
            with open(tmp / ITEMS_NAME, "w", encoding="utf-8") as fh:
                for item in self.items:
                    fh.write(json.dumps(item) + "\n")
            if self.kind == "hnsw":
                index_hnsw.write(self._hnsw_index(), tmp / HNSW_NAME)
            atomic_write_json(tmp / META_NAME, self.meta)
        self.root = root

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> GalleryIndex:
        root = Path(root)
        restored = recover_directory(root)
        if restored is not None:
            warn(f"{root}: restored from {restored.name}, left by an interrupted write")
        meta_path = root / META_NAME
        if not meta_path.is_file():
            raise PackageError(f"{root}: not a gallery index (no {META_NAME})", root)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(
                f"{meta_path}: damaged index (not valid JSON: {exc})", meta_path
            ) from None
        version = meta.get("format_version", 0) if isinstance(meta, dict) else 0
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise PackageError(
                f"{root}: index format {version} is newer than this stml understands", root
            )
        _check_meta(root, meta)
        vectors = _read_vectors(root / VECTORS_NAME)
        items = _read_items(root / ITEMS_NAME)
        count = meta.get("count")
        if (
            vectors.ndim != 2
            or vectors.shape[1] != meta.get("dim")
            or len(vectors) != count
            or len(items) != count
        ):
            raise PackageError(
                f"{root}: damaged index ({len(vectors)} vectors of shape {vectors.shape[1:]}, {len(items)} items, "
                f"index.json says {count} of dim {meta.get('dim')})",
                root,
            )
        index = cls(meta, vectors, items, root)
        if index.kind == "hnsw" and faiss_module() is not None:
            index._hnsw = index_hnsw.read(root / HNSW_NAME, count)
        return index

    # --- properties ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def model_id(self) -> str:
        return str(self.meta["model"]["weights_sha256"])

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    def label_name(self, label: int | None) -> str | None:
        names = self.class_names
        if label is None:
            return None
        return names[label] if names and 0 <= label < len(names) else str(label)

    def _hnsw_index(self) -> Any:
        if self._hnsw is None:
            self._hnsw = index_hnsw.build(self.vectors, self.dim, self.meta["hnsw"])
        return self._hnsw

    # --- search -------------------------------------------------------------------------
    def check_model(self, weights_sha256: str, what: str) -> None:
        """Refuse vectors of another model (`what` names where they come from): embeddings of
        different models cannot be compared."""
        if weights_sha256 != self.model_id:
            raise StmlError(
                f"{what} is not the model this index was built with ({self.meta['model'].get('name')}, "
                f"weights {self.model_id[:12]}...; {what} has {weights_sha256[:12]}...): embeddings "
                "of different models cannot be compared"
            )

    def hits(self, found: SearchResult, query: int) -> list[dict[str, Any]]:
        """Query `query`'s results as {"rank", "path", "score", "label"} rows, best first."""
        return [
            {
                "rank": rank,
                "path": self.items[int(row)]["path"],
                "score": round(float(score), 6),
                "label": self.label_name(self.items[int(row)]["label"]),
            }
            for rank, (score, row) in enumerate(
                zip(found.scores[query], found.indices[query], strict=True), start=1
            )
        ]

    def search_images(
        self, embedder: Embedder, images: Sequence[str | os.PathLike[str]], k: int = 5
    ) -> list[list[dict[str, Any]]]:
        """Embed `images` and search: one list of hits per readable image (unreadable ones are
        skipped with a warning). Refuses an embedder of another model, whose vectors would not
        be comparable with the index's."""
        self.check_model(embedder.model_id, "the embedder's package")
        result = embedder.embed_paths(list(images), show_progress=False)
        found = self.search(result.vectors, k)
        return [self.hits(found, q) for q in range(len(result.items))]

    def search(self, queries: np.ndarray, k: int, engine: str = "auto") -> SearchResult:
        check_engine(engine)
        if self.count == 0:
            raise StmlError(
                f"{self.root or 'index'}: the index is empty; add images with stml index add"
            )
        if k < 1:
            raise StmlError("-k must be at least 1")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise StmlError(
                f"queries of shape {list(queries.shape)} do not fit an index of dim {self.dim}"
            )
        if self.kind == "hnsw" and engine != "numpy" and faiss_module() is not None:
            k = min(k, self.count)
            return index_hnsw.search(self._hnsw_index(), queries, k, self.meta["hnsw"]["ef_search"])
        if self.kind == "hnsw" and faiss_module() is None:
            warn("faiss is not installed: searching this HNSW index exactly with numpy")
        return nearest(queries, self.vectors, k, "ip", engine=engine)

    # --- measures of the search (index_quality.py) ----------------------------------------
    def self_retrieval(self, engine: str = "auto", batch: int = 4096) -> float:
        return index_quality.self_retrieval(self, engine, batch)

    def ann_recall(self, k: int = 10, sample: int = 500, seed: int = 0) -> float:
        return index_quality.ann_recall(self, k, sample, seed)

    def leave_one_out_recall_at_1(self, engine: str = "auto", batch: int = 4096) -> float | None:
        return index_quality.leave_one_out_recall_at_1(self, engine, batch)


def check_index_target(root: Path) -> None:
    """An index may replace an index or fill an empty or new folder, nothing else: the swap
    deletes what was there."""
    if (
        root.exists()
        and not (root / META_NAME).is_file()
        and (root.is_file() or any(root.iterdir()))
    ):
        raise StmlError(
            f"{root}: exists and is not a gallery index; choose another --out (nothing was written)"
        )
