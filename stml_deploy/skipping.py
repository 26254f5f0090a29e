"""What a batch job does with an image it cannot read, the same for the edge embedder,
training's embedding of a source and the export's golden set: skip it with one warning line
naming the file and record it, or, under strict, stop with its ImageLoadError."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stml_deploy.console import warn
from stml_deploy.errors import ImageLoadError

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


@dataclass
class SkipPolicy:
    strict: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)

    def skip(self, error: ImageLoadError) -> None:
        if self.strict:
            raise error
        warn(f"skipped {error.path}: {error.reason}")
        self.skipped.append((str(error.path), error.reason))

    def readable(
        self,
        items: Iterable[Item],
        load: Callable[[Item], Loaded],
        map_items: Callable[..., Iterable[Any]] = map,
    ) -> Iterator[tuple[int, Loaded]]:
        """(position, what `load` returned) for each item it could read, in order; the others
        are skipped. `map_items` may be a thread pool's map (one failure does not stop it)."""

        def attempt(item: Item) -> Loaded | ImageLoadError:
            try:
                return load(item)
            except ImageLoadError as exc:
                return exc

        for position, outcome in enumerate(map_items(attempt, items)):
            if isinstance(outcome, ImageLoadError):
                self.skip(outcome)
            else:
                yield position, outcome
