"""Atomic writes: everything goes to a temporary sibling and is renamed into place, so an
interrupted write never leaves a half file (or half directory) where a good one was."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stml_deploy.errors import StmlError


def sibling_path(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name beside `path` (same folder, so a rename is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def abandoned_siblings(folder: Path, pattern: str = "*") -> Iterator[Path]:
    """Temporaries that sibling_path made for names matching `pattern` in `folder`, whose
    creating process no longer exists (killed, power cut): safe to delete."""
    for tmp in folder.glob(f".{pattern}.*-*-*"):
        try:
            pid = int(tmp.name.rsplit(".", 1)[1].split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            yield tmp
        except (ValueError, IndexError, PermissionError):  # not ours, or another user's process
            continue


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask is process-wide and not thread-safe


def _finish_file(path: Path) -> None:
    """Flush to disk and give the usual permissions (some writers create files 0600)."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(path, 0o666 & ~_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    For libraries that write files themselves (safetensors, onnx, faiss)."""
    path = Path(path)
    if path.is_dir():
        raise StmlError(f"{path} is a folder; give a file name")
    tmp = sibling_path(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _finish_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # permissions, disk full: name the file the user knows
        raise StmlError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it takes `path`'s place.

    The old directory is moved aside first and deleted only after the new one is in place,
    so at every moment either the complete old or the complete new directory exists
    (under its own name or the `.old-` sibling)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_path(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = sibling_path(path, "old")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:  # put the previous version back
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
