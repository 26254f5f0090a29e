"""Image reading: every mode becomes upright 8-bit RGB; damaged files are named and skipped
(or stop the run under strict)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stml_deploy.errors import ImageLoadError, StmlError
from stml_deploy.images import list_images, load_rgb
from stml_deploy.skipping import SkipPolicy


def png16_grey(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr.astype(np.uint16))


def png16_rgb_bytes(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), written by hand."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_real_photo_loads_as_rgb(real_photos: list[Path]) -> None:
    img = load_rgb(real_photos[0])
    assert img.mode == "RGB" and img.size == (640, 427)


def test_exif_orientation_is_applied(tmp_path: Path, real_photos: list[Path]) -> None:
    photo = Image.open(real_photos[1]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored pixels are sideways
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif, quality=95)
    upright = load_rgb(path)
    assert upright.size == (photo.height, photo.width)
    expected = np.asarray(Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(upright), expected)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA", "I"])
def test_modes_become_rgb(tmp_path: Path, real_photos: list[Path], mode: str) -> None:
    photo = Image.open(real_photos[0]).convert("RGB").resize((64, 48))
    converted = photo.convert(mode)
    ext = {"CMYK": "jpg", "I": "tiff", "LA": "png"}.get(mode, "png")
    path = tmp_path / f"img_{mode}.{ext}"
    converted.save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (64, 48)
    if mode in ("L", "LA"):
        grey = np.asarray(photo.convert("L"))
        assert np.abs(np.asarray(img)[..., 0].astype(int) - grey).max() <= 1
    if mode == "CMYK":  # a JPEG round trip: close, not equal
        assert np.abs(np.asarray(img).astype(int) - np.asarray(photo)).mean() < 12


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    path = tmp_path / "grey16.png"
    png16_grey(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    img = np.asarray(load_rgb(path))
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255
    assert abs(int(img[32, 0, 0]) - round(ramp[32, 0] / 257)) <= 1  # mid-grey stays mid-grey


def test_sixteen_bit_rgb(tmp_path: Path) -> None:
    arr = np.zeros((8, 8, 3), dtype=np.uint16)
    arr[..., 0], arr[..., 1] = 65535, 32896
    path = tmp_path / "rgb16.png"
    path.write_bytes(png16_rgb_bytes(arr))
    assert tuple(np.asarray(load_rgb(path))[0, 0]) == (255, 128, 0)


def test_transparency_composites_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2, :, :] = (255, 0, 0, 255)  # opaque red top, fully transparent (black) bottom
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = np.asarray(load_rgb(path))
    assert tuple(img[0, 0]) == (255, 0, 0) and tuple(img[3, 3]) == (255, 255, 255)
    palette = Image.fromarray(rgba, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((3, 3))
    path = tmp_path / "palette.png"
    palette.save(path, transparency=palette.getpixel((3, 3)))
    assert tuple(np.asarray(load_rgb(path))[3, 3]) == (255, 255, 255)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory, real_photos: list[Path]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("damaged")
    data = real_photos[0].read_bytes()
    files = {
        "truncated": (folder / "truncated.jpg", data[: len(data) // 3]),
        "empty": (folder / "empty.png", b""),
        "not an image": (folder / "notes.jpg", b"these are shopping notes, not a JPEG\n" * 20),
    }
    for path, payload in files.values():
        path.write_bytes(payload)
    bomb = folder / "bomb.png"
    Image.new("L", (12000, 8000)).save(bomb)  # 96 Mpx > Pillow's 89.5 Mpx limit
    return {**{k: v[0] for k, v in files.items()}, "decompression bomb": bomb}


@pytest.mark.parametrize("kind", ["truncated", "empty", "not an image", "decompression bomb"])
def test_damaged_image_is_reported_by_name(damaged: dict[str, Path], kind: str) -> None:
    path = damaged[kind]
    with pytest.raises(ImageLoadError) as caught:
        load_rgb(path)
    assert str(path) in str(caught.value)
    assert {"truncated": "truncated", "empty": "empty", "not an image": "not an image",
            "decompression bomb": "decompression bomb"}[kind] in str(caught.value)  # fmt: skip


def test_reading_a_list_skips_with_one_warning_each_or_stops_when_strict(
    damaged: dict[str, Path], real_photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = damaged
    paths = [real_photos[0], *bad.values(), real_photos[1]]
    got = [paths[i] for i, _ in SkipPolicy(strict=False).readable(paths, load_rgb)]
    assert got == [real_photos[0], real_photos[1]]
    err = capsys.readouterr().err
    for path in bad.values():
        assert err.count(path.name) == 1
    assert err.count("warning:") == len(bad)
    with pytest.raises(ImageLoadError, match=r"truncated\.jpg"):
        list(SkipPolicy(strict=True).readable(paths, load_rgb))


def test_list_images_recurses_and_explains_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("x.JPG", "a/y.png", "a/b/z.webp", ".hidden/h.png", "a/readme.txt"):
        (tmp_path / rel).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a/b/z.webp",
        "a/y.png",
        "x.JPG",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StmlError, match="no images found"):
        list_images(empty)
    with pytest.raises(StmlError, match="no such file or folder"):
        list_images(tmp_path / "missing")
