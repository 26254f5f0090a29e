"""Names as users have them: rich markup characters, bytes that are not UTF-8, symbolic link
loops, FIFOs, sockets and devices; Pillow's warnings as one line naming the file; and the
progress bar's rate."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
from pathlib import Path

import pytest
from PIL import Image

from stml_deploy.console import RateColumn, info, printable, warn
from stml_deploy.errors import ImageLoadError, StmlError
from stml_deploy.images import list_images, load_rgb
from tests.conftest import OLD_PACKAGE, one_line_error, run_cli

BAD_NAME = os.fsdecode(b"bad\xff.png")  # a lone surrogate in Python: not encodable as UTF-8


def jpeg_with_bad_exif() -> bytes:
    """A real JPEG whose EXIF block has a tag pointing past the end of the data (Pillow warns
    "Tag data larger than file")."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG")
    jpg = buf.getvalue()
    entry = struct.pack("<HHII", 0x010E, 2, 100, 1000)  # ImageDescription, 100 chars at 1000
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + tiff
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpg[2:]


def test_symbolic_link_loop_is_named_as_such(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(StmlError, match="symbolic link loop"):
        list_images(loop)
    with pytest.raises(ImageLoadError, match="symbolic link loop"):
        load_rgb(loop)
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="broken symbolic link"):
        load_rgb(dangling)


def test_fifo_socket_and_device_are_not_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(StmlError, match=r"not a regular file or folder \(a FIFO\)"):
        list_images(fifo)
    with pytest.raises(ImageLoadError, match=r"not a regular file \(a FIFO\)"):
        load_rgb(fifo)  # returns at once: never opened for a blocking read
    sock_path = tmp_path / "sock.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(StmlError, match=r"\(a socket\)"):
            list_images(sock_path)
        with pytest.raises(ImageLoadError, match=r"\(a socket\)|No such device"):
            load_rgb(sock_path)
    with pytest.raises(StmlError, match=r"\(a character device\)"):
        list_images("/dev/null")
    with pytest.raises(ImageLoadError, match=r"\(a character device\)"):
        load_rgb("/dev/null")
    # inside a folder, the FIFO is listed and then skipped by name
    assert fifo in list_images(tmp_path)


def test_pillow_warnings_become_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "exif.jpg"
    path.write_bytes(jpeg_with_bad_exif())
    with _no_warnings():
        assert load_rgb(path).size == (8, 8)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: "), lines


class _no_warnings:
    """Fails when a Python warning escapes the block."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)
        assert not self.caught, [str(w.message) for w in self.caught]


def test_non_utf8_file_names_list_hash_and_print(
    tmp_path: Path, real_photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from training.sources import folder_source

    shutil.copy(real_photos[0], tmp_path / BAD_NAME)
    shutil.copy(real_photos[1], tmp_path / "good.jpg")
    source = folder_source(tmp_path)
    assert [p.name for p in source.items] == [BAD_NAME, "good.jpg"]
    assert len(source.description["files_sha256"]) == 64
    assert source.load(0).size == (640, 427)
    warn(f"skipped {source.items[0]}")
    info(f"read {source.items[0]}")
    err = capsys.readouterr().err
    assert "bad\\xff.png" in err and printable(BAD_NAME) == "bad\\xff.png"


def test_markup_and_undecodable_names_through_stml_embed(
    tmp_path: Path, real_photos: list[Path]
) -> None:
    """`stml embed` on a folder with `[bold]x.png`, a damaged `broken[/x].jpg` and a name that
    is not UTF-8: the damaged one is skipped with its real name, the others embedded."""
    from stml_deploy.embeddings_file import read_embeddings

    package = tmp_path / "pkg"
    shutil.copytree(OLD_PACKAGE, package)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    shutil.copy(real_photos[0], gallery / "[bold]x.png")
    (gallery / "broken[").mkdir()
    (gallery / "broken[" / "x].jpg").write_bytes(real_photos[1].read_bytes()[:2000])
    shutil.copy(real_photos[1], gallery / BAD_NAME)
    out = tmp_path / "emb.npy"
    result = run_cli("embed", str(package), str(gallery), "--out", str(out), "--backend", "onnx")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "MarkupError" not in result.err
    [skipped] = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert f"skipped {gallery / 'broken[/x].jpg'}: truncated" in skipped
    embedded = read_embeddings(out)
    assert sorted(Path(p).name for p in embedded.paths) == sorted(["[bold]x.png", BAD_NAME])


def test_damaged_file_named_like_markup_fails_strict_with_one_line(
    tmp_path: Path, real_photos: list[Path]
) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(OLD_PACKAGE, package)
    broken = tmp_path / "[red]broken[" / "x].jpg"
    broken.parent.mkdir()
    broken.write_bytes(real_photos[1].read_bytes()[:2000])
    result = run_cli(
        "embed", str(package), str(broken), "--out", str(tmp_path / "e.npy"), "--strict"
    )
    assert str(broken) in one_line_error(result)


def test_progress_shows_rate() -> None:
    from rich.progress import Progress, ProgressSample

    column = RateColumn("images")
    with Progress(column, disable=True) as bar:
        task = bar.add_task("embedding", total=100)
        assert column.render(bar.tasks[0]).plain == "- images/s"
        for step in range(1, 5):  # rich's own speed samples: 25 images every half second
            bar.tasks[0]._progress.append(ProgressSample(step * 0.5, 25))
        assert column.render(bar.tasks[0]).plain == "50 images/s"
        bar.update(task, completed=100)
