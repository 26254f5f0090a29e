"""Reading images the same way everywhere (training, export calibration, the edge runtime):
EXIF orientation applied, every mode turned into 8-bit RGB, damaged files reported by name."""

from __future__ import annotations

import errno
import os
import stat
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stml_deploy.console import warn
from stml_deploy.errors import ImageLoadError, StmlError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def is_image_name(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _kind(mode: int) -> str | None:
    """What a file that is neither a regular file nor a folder is (None for those two)."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a file or folder"


def _stat_problem(path: Path, exc: OSError) -> str:
    """Why `path` cannot be looked at, in words (a loop is not "no such file")."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
        return "no such file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def list_images(root: str | os.PathLike[str]) -> list[Path]:
    """All image files under `root` (recursive, sorted, hidden folders skipped); a file path
    is returned as itself. Raises StmlError when the path cannot be read, is not a regular
    file or folder, or holds no images."""
    root = Path(root)
    try:
        mode = root.stat().st_mode
    except OSError as exc:
        problem = _stat_problem(root, exc)
        if problem == "no such file":
            problem = "no such file or folder"
        raise StmlError(f"{root}: {problem}") from None
    kind = _kind(mode)
    if kind is not None:
        raise StmlError(f"{root}: not a regular file or folder ({kind}); give images or a folder")
    if stat.S_ISREG(mode):
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if is_image_name(f) and f[0] != "."]
    if not found:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise StmlError(f"{root}: no images found (searched recursively for {exts})")
    return sorted(found)


def folder_labels(root: Path, paths: list[Path]) -> tuple[list[int] | None, list[str] | None]:
    """Labels from first-level sub-folder names, when every image sits in one (else None)."""
    if not root.is_dir():
        return None, None
    parts = [p.relative_to(root).parts for p in paths]
    if not parts or not all(len(p) > 1 for p in parts):
        return None, None
    names = sorted({p[0] for p in parts})
    lookup = {name: i for i, name in enumerate(names)}
    return [lookup[p[0]] for p in parts], names


def expand_image_args(args: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Command-line image arguments: files as given, folders expanded recursively."""
    paths: list[Path] = []
    for arg in args:
        paths += list_images(arg)
    return paths


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16-bit grey is scaled (Pillow's own convert clips it),
    transparency is composited on white (how product photos on transparent ground look)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode one image fully, upright (EXIF orientation), as 8-bit RGB.

    Raises ImageLoadError naming the file for: missing, a symbolic link loop, not a regular
    file (a FIFO is never opened for a blocking read), empty, not an image, truncated, or larger
    than Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS). Pillow's own warnings
    (bad EXIF data, ...) become one warning line naming the file."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        reason = "a folder, not an image" if exc.errno == errno.EISDIR else None
        raise ImageLoadError(path, reason or _stat_problem(path, exc)) from None
    with open(fd, "rb") as fh:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind is not None:
            raise ImageLoadError(path, f"not a regular file ({kind})")
        if info.st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _decode(path, fh)
    said = list(dict.fromkeys(str(w.message).strip() for w in caught))
    if said:
        warn(f"{path}: {'; '.join(said)}")
    return image


def _decode(path: Path, fh: BinaryIO) -> Image.Image:
    try:
        with Image.open(fh) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(path, f"too large, refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated file ({reason})"
        raise ImageLoadError(path, reason) from None
