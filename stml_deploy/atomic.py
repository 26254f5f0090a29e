"""Atomic writes: everything goes to a temporary sibling and is renamed into place, so an
interrupted write never leaves a half file (or half directory) where a good one was."""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from stml_deploy.errors import PackageError, StmlError

# Written into a directory swap's temporary folder once the caller has filled it: a `.tmp-`
# sibling holding it is complete, one without it was cut off while being written.
COMPLETE_MARKER = ".stml-complete"


def sibling_path(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name beside `path` (same folder, so a rename is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _sibling_tag(sibling: Path, name: str) -> str:
    """ "tmp", "old", ... for a sibling_path of `name`."""
    return sibling.name[len(name) + 2 :].split("-", 1)[0]


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


# What torch.save's C++ writer (PytorchStreamWriter, inline_container.cc) says when a write
# fails: it raises a plain RuntimeError with no errno, so its text is all there is to go by.
_TORCH_WRITE_FAILURES = ("No space left", "file write failed", "unexpected pos", "inline_container")


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed, when `exc` is a failed write (else None)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":  # safetensors' one error type, any I/O failure
        return os.strerror(errno.ENOSPC) if "No space left" in text else f"write failed ({text})"
    if isinstance(exc, RuntimeError) and any(s in text for s in _TORCH_WRITE_FAILURES):
        return os.strerror(errno.ENOSPC) if "No space left" in text else f"write failed ({text})"
    return None


@contextmanager
def disk_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failed write inside the block (disk full, no permission; OSError, safetensors'
    SafetensorError, torch.save's RuntimeError) into one PackageError naming `path`, the
    file the user knows, instead of a traceback or a temporary name."""
    try:
        yield
    except Exception as exc:
        reason = _write_failure(exc)
        if reason is None:
            raise
        raise PackageError(f"cannot write {path}: {reason}", path) from None


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of `paths`; on success all of them replace their
    targets together: files that belong together (vectors and their items) are never left
    half new, half old. When a rename fails, the ones already made are undone.

    For libraries that write files themselves (safetensors, onnx, faiss, numpy)."""
    targets = [Path(p) for p in paths]
    for target in targets:
        if target.is_dir():
            raise StmlError(f"{target} is a folder; give a file name")
    tmps = [sibling_path(t, "tmp") for t in targets]
    backups: list[Path | None] = []
    try:
        try:
            for target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
            yield tmps
            for tmp in tmps:
                _finish_file(tmp)
            # each old version keeps a second name (a hard link: no copy, no space) so that a
            # failed rename further on can put the earlier ones back
            backups = [_backup(t) for t in targets]
        except Exception as exc:
            reason = _write_failure(exc)
            if reason is None:
                raise
            failed = _failed_target(exc, tmps, targets)
            raise PackageError(f"cannot write {failed}: {reason}", failed) from None
        _replace_all(tmps, targets, backups)
    finally:
        for leftover in tmps + [b for b in backups if b is not None]:
            leftover.unlink(missing_ok=True)


def _failed_target(exc: Exception, tmps: list[Path], targets: list[Path]) -> Path:
    """The target whose write failed: the one named by the error, else the last one begun
    (callers write them in order)."""
    named = getattr(exc, "filename", None)
    for tmp, target in zip(tmps, targets, strict=True):
        if named is not None and Path(named) in (tmp, target):
            return target
    begun = [t for tmp, t in zip(tmps, targets, strict=True) if tmp.exists()]
    return begun[-1] if begun else targets[0]


def _backup(target: Path) -> Path | None:
    if not target.exists():
        return None
    backup = sibling_path(target, "bak")
    try:
        os.link(target, backup)
    except OSError:  # no hard links on this file system (FAT, some network shares)
        shutil.copy2(target, backup)
    return backup


def _replace_all(tmps: list[Path], targets: list[Path], backups: list[Path | None]) -> None:
    done = 0
    try:
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
            done += 1
    except BaseException as exc:
        for target, backup in zip(targets[:done], backups[:done], strict=True):
            if backup is None:
                target.unlink(missing_ok=True)
            else:  # os.replace, not link: the backup name disappears with it
                os.replace(backup, target)
        if isinstance(exc, OSError):
            failed = targets[done]
            raise PackageError(
                f"cannot write {failed}: {exc.strerror or exc} (nothing was replaced)", failed
            ) from None
        raise


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


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

    Steps: fill `.NAME.tmp-*`, mark it complete, move the old directory aside to
    `.NAME.old-*`, rename the new one into place, then move the old one to `.NAME.del-*` and
    delete it. A kill at any step leaves either `path` itself or a complete sibling that
    recover_directory restores (a `.del-` one is never restored: it may be half deleted)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_path(path, "tmp")
    tmp.mkdir()
    try:
        try:
            yield tmp
        except Exception as exc:  # a failed write names the folder the user knows, not tmp
            final = _named_in_place(exc, tmp, path)
            if final is None:
                raise
            raise final from None
        with open(tmp / COMPLETE_MARKER, "wb") as fh:
            os.fsync(fh.fileno())
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
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
        if old is not None:
            doomed = sibling_path(path, "del")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        _remove_abandoned(path)  # what earlier killed writes left
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _named_in_place(exc: Exception, tmp: Path, path: Path) -> PackageError | None:
    """`exc`, a failed write inside the temporary folder `tmp`, as a PackageError that names
    the file where it will be once `tmp` becomes `path` (None for errors of other kinds)."""
    if type(exc) is PackageError:  # subclasses carry more than a message: left as they are
        where = Path(exc.path) if isinstance(exc.path, str | os.PathLike) else None
        message = str(exc).replace(str(tmp), str(path))
    else:
        reason = _write_failure(exc)
        if reason is None:
            return None
        named = getattr(exc, "filename", None)
        where = Path(named) if isinstance(named, str | os.PathLike) else tmp
        if not where.is_relative_to(tmp):  # about a file elsewhere (a source being read)
            return None
        message = f"cannot write {where}: {reason}".replace(str(tmp), str(path))
    if where is not None and where.is_relative_to(tmp):
        where = path / where.relative_to(tmp)
    return PackageError(message, where)


def _remove_abandoned(path: Path) -> None:
    for sibling in abandoned_siblings(path.parent, glob.escape(path.name)):
        shutil.rmtree(sibling, ignore_errors=True)


def _restorable(path: Path) -> list[Path]:
    """Complete copies of `path` that killed directory swaps left, newest first: a `.tmp-`
    folder holding the completion marker (its swap had begun), then `.old-` folders (the
    previous version, moved aside whole)."""

    def rank(sibling: Path) -> tuple[int, int]:
        if _sibling_tag(sibling, path.name) == "tmp":
            return 1, (sibling / COMPLETE_MARKER).stat().st_mtime_ns
        return 0, sibling.stat().st_mtime_ns

    found = []
    for sibling in abandoned_siblings(path.parent, glob.escape(path.name)):
        tag = _sibling_tag(sibling, path.name)
        if not sibling.is_dir():
            continue
        if tag == "old" or (tag == "tmp" and (sibling / COMPLETE_MARKER).is_file()):
            found.append(sibling)
    return sorted(found, key=rank, reverse=True)


def recover_directory(path: str | os.PathLike[str]) -> Path | None:
    """Call before reading a folder that atomic_directory writes (training state, index).

    When `path` is missing because a swap was killed half-way, the newest complete sibling
    takes its place again; returns that sibling's old name (None when nothing was restored).
    Leftovers of killed writes are deleted. Raises PackageError naming the sibling when it
    cannot be moved back."""
    path = Path(path).resolve()
    if not path.parent.is_dir():
        return None
    restored = None
    if not path.exists():
        candidates = _restorable(path)
        if candidates:
            restored = candidates[0]
            try:
                os.replace(restored, path)
            except OSError as exc:
                raise PackageError(
                    f"{path} is missing, but an interrupted write left a complete copy in "
                    f"{restored} that cannot be moved back ({exc.strerror or exc}): rename it "
                    f"to {path.name}",
                    restored,
                ) from None
    with suppress(OSError):  # a swap killed just after its rename leaves the marker inside
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
    _remove_abandoned(path)
    return restored
