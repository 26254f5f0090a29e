"""The one skip/strict policy for unreadable images, on real files: readable ones kept in
order (also through a thread pool's map), each bad one warned about once and recorded, or the
first one raised under strict; the golden set built from a folder with a damaged file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from stml_deploy.errors import ImageLoadError
from stml_deploy.images import load_rgb
from stml_deploy.preprocess import PreprocessSpec
from stml_deploy.skipping import SkipPolicy


def files(tmp_path: Path, real_photos: list[Path]) -> list[Path]:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    half = tmp_path / "half.jpg"
    half.write_bytes(real_photos[0].read_bytes()[:5000])
    return [real_photos[0], tmp_path / "zero.jpg", tmp_path / "notes.png", half, real_photos[1]]


@pytest.mark.parametrize("threads", [False, True])
def test_readable_keeps_order_and_records_each_bad_file_once(
    tmp_path: Path, real_photos: list[Path], capsys: pytest.CaptureFixture[str], threads: bool
) -> None:
    paths = files(tmp_path, real_photos)
    policy = SkipPolicy()
    with ThreadPoolExecutor(3) as pool:
        kept = list(policy.readable(paths, load_rgb, pool.map if threads else map))
    assert [position for position, _ in kept] == [0, 4]
    assert [img.size for _, img in kept] == [load_rgb(p).size for p in real_photos]
    assert [Path(item).name for item, _ in policy.skipped] == ["zero.jpg", "notes.png", "half.jpg"]
    assert all(reason for _, reason in policy.skipped)
    err = capsys.readouterr().err
    for name in ("zero.jpg", "notes.png", "half.jpg"):
        assert err.count(name) == 1
    assert err.count("warning:") == 3


def test_strict_stops_at_the_first_bad_file(tmp_path: Path, real_photos: list[Path]) -> None:
    policy = SkipPolicy(strict=True)
    seen = []
    with pytest.raises(ImageLoadError, match=r"zero\.jpg"):
        for position, _ in policy.readable(files(tmp_path, real_photos), load_rgb):
            seen.append(position)
    assert seen == [0] and policy.skipped == []


def test_golden_set_skips_a_damaged_file(tmp_path: Path, real_photos: list[Path]) -> None:
    from export.golden import preprocess_source
    from training.sources import ImageSource

    paths = files(tmp_path, real_photos)
    source = ImageSource(name="photos", root=str(tmp_path), items=paths, labels=np.arange(5))
    spec = PreprocessSpec(image_size=32, resize=36)
    got = preprocess_source(source, spec, size=10)
    assert got.items == [str(real_photos[0]), str(real_photos[1])]
    assert list(got.labels) == [0, 4] and got.pixels.shape == (2, 3, 32, 32)
