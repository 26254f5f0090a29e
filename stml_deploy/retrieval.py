"""Gallery work behind `stml index` and `stml search`: embed a gallery into an index, add to
it, and search it with query images, always with the model the index was built with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stml_deploy.embedder import Embedder
from stml_deploy.errors import StmlError
from stml_deploy.grid import MATCH, MISMATCH, QUERY, UNKNOWN, Tile, draw_grid
from stml_deploy.hub import is_hub_package, open_package
from stml_deploy.images import expand_image_args, folder_labels
from stml_deploy.index import GalleryIndex, check_engine, check_index_target, check_kind
from stml_deploy.package import onnx_name


def _variant_sha(embedder: Embedder) -> str | None:
    """sha256 of the ONNX variant behind the backend (a TensorRT engine is built from it)."""
    meta = embedder.package.artifacts.get(onnx_name(embedder.backend.precision))
    return meta.sha256 if meta else None


def _model_record(embedder: Embedder, package_ref: str) -> dict[str, Any]:
    ref = package_ref if is_hub_package(package_ref) else str(Path(package_ref).resolve())
    hub = embedder.package.config.hub
    return {
        "name": embedder.package.name,
        "weights_sha256": embedder.model_id,
        "package": ref,
        "hub_commit": hub.commit if hub is not None else None,
        "embedding_dim": embedder.dim,
        "precision": embedder.backend.precision,
        "onnx_sha256": _variant_sha(embedder),
        "backend": embedder.backend.description,
    }


def gallery_paths(args: list[str]) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Images of the gallery arguments, with labels when a single folder of class sub-folders
    was given."""
    paths = expand_image_args(args)
    if len(args) == 1 and Path(args[0]).is_dir():
        labels, names = folder_labels(Path(args[0]), paths)
        return paths, labels, names
    return paths, None, None


def build_index(
    package_ref: str,
    gallery: list[str],
    out: str | os.PathLike[str],
    backend: str = "auto",
    precision: str = "auto",
    kind: str = "flat",
    strict: bool = False,
    batch_size: int = 32,
) -> GalleryIndex:
    check_index_target(Path(out).resolve())  # before minutes of embedding
    check_kind(kind)
    paths, labels, names = gallery_paths(gallery)
    with Embedder(open_package(package_ref), backend, precision, batch_size) as embedder:
        result = embedder.embed_paths(paths, strict=strict, description="embedding gallery")
        if not result.items:
            raise StmlError(
                f"{', '.join(gallery)}: none of the {len(paths)} images could be read; no index written"
            )
        kept = None
        if labels is not None:
            by_path = {str(p): label for p, label in zip(paths, labels, strict=True)}
            kept = [by_path[item] for item in result.items]
        items = [str(Path(p).resolve()) for p in result.items]
        index = GalleryIndex.create(
            _model_record(embedder, package_ref), result.vectors, items, kept, names, kind
        )
    index.save(out)
    return index


def _embedder_for(
    index: GalleryIndex,
    package_ref: str | None,
    backend: str,
    precision: str | None,
    batch_size: int,
) -> Embedder:
    """The index's own model (or `package_ref`, which must hold the same weights)."""
    ref = package_ref or index.meta["model"]["package"]
    try:
        package = open_package(ref)
    except StmlError as exc:
        if package_ref:
            raise
        raise StmlError(
            f"{exc} (the model this index was built with; give --package to point at it)"
        ) from None
    index.check_model(package.weights_sha256, ref)
    embedder = Embedder(
        package, backend, precision or index.meta["model"].get("precision", "fp32"), batch_size
    )
    try:
        _refuse_other_variant(index, embedder)
    except StmlError:
        embedder.close()
        raise
    return embedder


def add_to_index(
    index_path: str,
    images: list[str],
    package_ref: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    strict: bool = False,
    batch_size: int = 32,
) -> tuple[GalleryIndex, int]:
    index = GalleryIndex.load(index_path)
    paths = expand_image_args(images)
    with _embedder_for(index, package_ref, backend, precision, batch_size) as embedder:
        result = embedder.embed_paths(paths, strict=strict, description="embedding new images")
    if not result.items:
        raise StmlError(f"none of the images could be read; {index_path} is unchanged")
    # new images in a folder named like one of the index's classes get that label
    labels = [query_label(index, p) for p in result.items] if index.class_names else None
    added = index.extend(result.vectors, [str(Path(p).resolve()) for p in result.items], labels)
    if added:
        index.save(index_path)
    return index, added


def _refuse_other_variant(index: GalleryIndex, embedder: Embedder) -> None:
    """Vectors of one index come from one exported variant: fp32 and int8 embeddings (or two
    int8 calibrations) differ by more than the neighbours they are meant to separate."""
    model = index.meta["model"]
    precision, sha = model.get("precision"), model.get("onnx_sha256")
    if precision and embedder.backend.precision != precision:
        raise StmlError(
            f"the index holds {precision} embeddings; {embedder.backend.precision} ones "
            f"would mix two variants (use --precision {precision})"
        )
    if sha and _variant_sha(embedder) not in (None, sha):
        raise StmlError(
            f"{onnx_name(precision)} changed since the index was built (re-exported?); its "
            "embeddings no longer match the index: rebuild it with stml index build"
        )


def query_label(index: GalleryIndex, path: str) -> int | None:
    """A query's label: its parent folder's name, when that is one of the index's classes."""
    names = index.class_names or []
    parent = Path(path).parent.name
    return names.index(parent) if parent in names else None


@dataclass
class QueryHits:
    query: str
    label: str | None
    hits: list[dict[str, Any]]


def search(
    index_path: str,
    queries: list[str],
    k: int = 5,
    package_ref: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    engine: str = "auto",
    strict: bool = False,
) -> tuple[GalleryIndex, list[QueryHits]]:
    index = GalleryIndex.load(index_path)
    # checked here too, before the queries are embedded
    if index.count == 0:
        raise StmlError(f"{index_path}: the index is empty; add images with stml index add")
    if k < 1:
        raise StmlError("-k must be at least 1")
    check_engine(engine)
    if k > index.count:
        from stml_deploy.console import warn

        warn(
            f"-k {k} is larger than the gallery ({index.count} images): returning all {index.count}"
        )
    paths = expand_image_args(queries)
    with _embedder_for(index, package_ref, backend, precision, 32) as embedder:
        result = embedder.embed_paths(
            paths, strict=strict, show_progress=len(paths) > 32, description="embedding queries"
        )
    if not result.items:
        raise StmlError("none of the query images could be read")
    found = index.search(result.vectors, k, engine)
    out = [
        QueryHits(query, index.label_name(query_label(index, query)), index.hits(found, q))
        for q, query in enumerate(result.items)
    ]
    return index, out


def save_grid(results: list[QueryHits], out: Path) -> None:
    rows = []
    for result in results:
        row = [Tile(result.query, f"query: {result.label}" if result.label else "query", QUERY)]
        for hit in result.hits:
            if result.label is None or hit["label"] is None:
                colour = UNKNOWN
            else:
                colour = MATCH if hit["label"] == result.label else MISMATCH
            row.append(Tile(hit["path"], f"{hit['rank']}: {hit['score']:.3f}", colour))
        rows.append(row)
    draw_grid(rows, out)
