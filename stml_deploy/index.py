"""The gallery index (DESIGN §6): a directory with index.json (model id, dim, metric, kind,
count), vectors.npy (the unit vectors, always: exact search and rebuilds need nothing else),
items.jsonl (id, path, optional label) and, for the HNSW kind, hnsw.faiss. Exact inner-product
search by default, with faiss when installed and numpy otherwise. Every write goes to a
temporary sibling directory that replaces the index in one step."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stml_deploy.atomic import atomic_directory, atomic_write_json
from stml_deploy.console import warn
from stml_deploy.errors import StmlError
from stml_deploy.neighbours import check_engine, faiss_module

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
    expected = {"model": dict, "dim": int, "kind": str, "count": int}
    if not isinstance(meta, dict):
        raise StmlError(f"{root}: damaged index ({META_NAME} is not a JSON object)")
    wrong = [k for k, t in expected.items() if not isinstance(meta.get(k), t)]
    if not wrong and not isinstance(meta["model"].get("weights_sha256"), str):
        wrong = ["model.weights_sha256"]
    if wrong:
        raise StmlError(f"{root}: damaged index ({META_NAME} lacks a valid {', '.join(wrong)})")
    if meta["kind"] not in KINDS:
        raise StmlError(f"{root}: damaged index (unknown kind {meta['kind']!r})")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class SearchResult:
    scores: np.ndarray  # float32 [Q, k], cosine similarity, best first
    indices: np.ndarray  # int64 [Q, k] rows of the index


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
                faiss_module().write_index(self._hnsw_index(), str(tmp / HNSW_NAME))
            atomic_write_json(tmp / META_NAME, self.meta)
        self.root = root

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> GalleryIndex:
        root = Path(root)
        meta_path = root / META_NAME
        if not meta_path.is_file():
            raise StmlError(f"{root}: not a gallery index (no {META_NAME})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            vectors = np.load(root / VECTORS_NAME, mmap_mode="r", allow_pickle=False)
            lines = (root / ITEMS_NAME).read_text(encoding="utf-8").splitlines()
            items = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise StmlError(f"{root}: damaged index ({exc})") from None
        version = meta.get("format_version", 0) if isinstance(meta, dict) else 0
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise StmlError(f"{root}: index format {version} is newer than this stml understands")
        _check_meta(root, meta)
        count = meta.get("count")
        if (
            vectors.ndim != 2
            or vectors.shape[1] != meta.get("dim")
            or len(vectors) != count
            or len(items) != count
        ):
            raise StmlError(
                f"{root}: damaged index ({len(vectors)} vectors of shape {vectors.shape[1:]}, {len(items)} items, "
                f"index.json says {count} of dim {meta.get('dim')})"
            )
        index = cls(meta, vectors, items, root)
        if index.kind == "hnsw" and faiss_module() is not None:
            try:
                index._hnsw = faiss_module().read_index(str(root / HNSW_NAME))
            except RuntimeError as exc:
                raise StmlError(f"{root}: damaged HNSW file ({exc})") from None
            if index._hnsw.ntotal != count:
                raise StmlError(
                    f"{root}: damaged index (HNSW holds {index._hnsw.ntotal} vectors, not {count})"
                )
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
            faiss = faiss_module()
            params = self.meta["hnsw"]
            self._hnsw = faiss.IndexHNSWFlat(self.dim, params["M"], faiss.METRIC_INNER_PRODUCT)
            self._hnsw.hnsw.efConstruction = params["ef_construction"]
            if len(self.vectors):
                self._hnsw.add(np.ascontiguousarray(self.vectors, dtype=np.float32))
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
        k = min(k, self.count)
        faiss = faiss_module() if engine != "numpy" else None
        if self.kind == "hnsw" and faiss is not None:
            hnsw = self._hnsw_index()
            hnsw.hnsw.efSearch = max(self.meta["hnsw"]["ef_search"], k)
            scores, indices = hnsw.search(queries, k)
            if (indices < 0).any():  # HNSW found fewer than k: pad with the best found (rare)
                indices = np.where(indices < 0, indices[:, :1], indices)
                scores = np.where(np.isfinite(scores), scores, scores[:, :1])
        elif faiss is not None:
            scores, indices = faiss.knn(
                queries, np.ascontiguousarray(self.vectors), k, metric=faiss.METRIC_INNER_PRODUCT
            )
        else:
            if self.kind == "hnsw":
                warn("faiss is not installed: searching this HNSW index exactly with numpy")
            scores, indices = exact_search_numpy(np.asarray(self.vectors), queries, k)
        return SearchResult(scores.astype(np.float32), indices.astype(np.int64))

    def self_retrieval(self, engine: str = "auto", batch: int = 4096) -> float:
        """Fraction of gallery items whose nearest neighbour is themselves."""
        hits = 0
        for start in range(0, self.count, batch):
            part = np.asarray(self.vectors[start : start + batch])
            found = self.search(part, 1, engine).indices[:, 0]
            hits += int((found == np.arange(start, start + len(part))).sum())
        return hits / max(self.count, 1)

    def ann_recall(self, k: int = 10, sample: int = 500, seed: int = 0) -> float:
        """Recall@k of this HNSW index against exact search, gallery items as queries."""
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(self.count, size=min(sample, self.count), replace=False))
        queries = np.asarray(self.vectors[rows])
        approx = self.search(queries, k).indices
        exact = exact_search_numpy(np.asarray(self.vectors), queries, min(k, self.count))[1]
        return float(
            np.mean(
                [len(set(a) & set(b)) / exact.shape[1] for a, b in zip(approx, exact, strict=True)]
            )
        )

    def leave_one_out_recall_at_1(self, engine: str = "auto", batch: int = 4096) -> float | None:
        """Recall@1 over the gallery, each item querying all others (needs labels)."""
        labels = np.array([-1 if i["label"] is None else i["label"] for i in self.items])
        if (labels < 0).any() or self.count < 2:
            return None
        hits = 0
        for start in range(0, self.count, batch):
            part = np.asarray(self.vectors[start : start + batch])
            found = self.search(part, 2, engine).indices
            own = np.arange(start, start + len(part))
            nearest = np.where(found[:, 0] == own, found[:, 1], found[:, 0])
            hits += int((labels[nearest] == labels[own]).sum())
        return hits / self.count


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


def exact_search_numpy(
    vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products, the gallery scanned in chunks (bounded memory), results merged."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_index = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        scores = queries @ np.asarray(vectors[start : start + chunk], dtype=np.float32).T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate(
            [best_scores, np.take_along_axis(scores, part, axis=1)], axis=1
        )
        best_index = np.concatenate([best_index, part + start], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_index = np.take_along_axis(best_index, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(
        best_index, order, axis=1
    )
