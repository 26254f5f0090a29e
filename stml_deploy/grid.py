"""A picture of search results: one row per query, the query then its top-k hits, each hit
with its score and a border coloured by whether its label matches the query's (green / red;
grey when a label is unknown). Pillow only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from stml_deploy.atomic import atomic_path
from stml_deploy.errors import ImageLoadError
from stml_deploy.images import load_rgb

MATCH, MISMATCH, UNKNOWN, QUERY = (46, 160, 67), (214, 39, 40), (150, 150, 150), (31, 119, 180)


@dataclass
class Tile:
    path: str
    caption: str
    colour: tuple[int, int, int]


def _thumb(path: str, size: int) -> Image.Image:
    try:
        img = load_rgb(path)
    except ImageLoadError:
        return Image.new("RGB", (size, size), (235, 235, 235))
    return ImageOps.pad(img, (size, size), color=(255, 255, 255))


def draw_grid(rows: list[list[Tile]], out: Path, thumb: int = 128, border: int = 5) -> None:
    """Write the grid as PNG (atomically)."""
    caption_h = 16
    cell_w, cell_h = thumb + 2 * border, thumb + 2 * border + caption_h
    columns = max(len(r) for r in rows)
    canvas = Image.new(
        "RGB", (columns * (cell_w + 6) + 6, len(rows) * (cell_h + 6) + 6), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            x, y = 6 + c * (cell_w + 6), 6 + r * (cell_h + 6)
            draw.rectangle([x, y, x + cell_w - 1, y + thumb + 2 * border - 1], fill=tile.colour)
            canvas.paste(_thumb(tile.path, thumb), (x + border, y + border))
            draw.text(
                (x + 2, y + thumb + 2 * border + 2), tile.caption[: cell_w // 6], fill=(0, 0, 0)
            )
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
