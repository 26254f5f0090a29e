"""Nearest-neighbour batch construction (docs/design.md §7): each batch is `batch_size // neighbours`
query images, each with its `neighbours` nearest images (itself included) in the student's g
space, mined over the whole train set once per epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from stml_deploy.errors import StmlError
from stml_deploy.neighbours import nearest
from training.semi_supervised import LabelledGroups


def nearest_neighbour_table(
    embeddings: np.ndarray, neighbours: int, engine: str = "auto"
) -> np.ndarray:
    """[M, neighbours] indices: row i is i, then its nearest others by exact L2 on the raw
    embeddings. Ties go to the lower index, so the table is the same run after run (what
    --resume relies on); faiss and numpy differ at most where rounding splits near-ties."""
    m = len(embeddings)
    others = nearest(
        embeddings, embeddings, min(neighbours, m) - 1, "l2", exclude_self=True, engine=engine
    )
    return np.concatenate([np.arange(m, dtype=np.int64)[:, None], others.indices], axis=1)


class NeighbourBatchSampler:
    """Yields batches of (dataset index, augmentation seed) pairs for one epoch at a time.

    Queries of an epoch are drawn without replacement (the reference draws every batch
    independently, so some images are never queries); the epoch has M // batch_size steps,
    as in the reference. Everything random derives from (seed, epoch): an epoch can be
    replayed exactly, which is what makes --resume bit-identical."""

    def __init__(self, table: np.ndarray, batch_size: int, seed: int) -> None:
        if batch_size < table.shape[1]:
            raise StmlError(
                f"--batch-size {batch_size} is smaller than --neighbours {table.shape[1]}"
            )
        self.table = table
        self.queries_per_batch = batch_size // table.shape[1]
        self.steps = max(1, table.shape[0] // batch_size)
        self.seed = seed
        self.epoch = 0
        self.labelled: LabelledGroups | None = None  # semi-supervised: labelled query groups

    def set_epoch(
        self, epoch: int, table: np.ndarray | None = None, labelled: LabelledGroups | None = None
    ) -> None:
        self.epoch = epoch
        if table is not None:
            self.table = table
        self.labelled = labelled

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        m = self.table.shape[0]
        per_batch = self.queries_per_batch - (self.labelled.groups if self.labelled else 0)
        needed = self.steps * per_batch
        order = np.concatenate([rng.permutation(m) for _ in range(max(1, -(-needed // m)))])[
            :needed
        ]
        for step in range(self.steps):
            queries = order[step * per_batch : (step + 1) * per_batch]
            indices = self.table[queries]
            if self.labelled is not None:  # the batch's last groups are labelled groups
                indices = np.concatenate([indices, self.labelled.draw(rng)])
            indices = indices.reshape(-1)
            seeds = rng.integers(0, 2**62, size=indices.shape[0])
            yield [(int(i), int(s)) for i, s in zip(indices, seeds, strict=True)]


class RankSlice:
    """Rank `rank`'s part of each global batch of `plan`: every rank walks the same seeded plan
    and keeps its contiguous 1/world of the batch (augmentation seeds included), so the ranks
    together load exactly the batch one process would."""

    def __init__(self, plan: NeighbourBatchSampler, rank: int, world: int) -> None:
        size = plan.queries_per_batch * plan.table.shape[1]
        self.check_splits(size, world)
        self.plan = plan
        self.rank = rank
        self.per_rank = size // world

    @staticmethod
    def check_splits(size: int, world: int) -> None:
        """Refuse a global batch of `size` images that `world` ranks cannot share equally."""
        if size % world:
            raise StmlError(
                f"the global batch of {size} images does not split evenly over {world} "
                f"processes; choose a --batch-size whose multiple of --neighbours divides by {world}"
            )

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.rank * self.per_rank
        for batch in self.plan:
            yield batch[start : start + self.per_rank]
